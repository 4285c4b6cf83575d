"""Benchmarks of the training steps, the explainers and the data path: ``unoise benchmark``.

:func:`run_benchmark` measures (see :mod:`pipeline.benchmark.run`); :func:`format_table` turns its
record into the table of docs/benchmarks.md.
"""

from pipeline.benchmark.run import run_benchmark
from pipeline.benchmark.table import format_table

__all__ = ["format_table", "run_benchmark"]
