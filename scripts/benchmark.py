"""Benchmark the training steps, explainers and data path; writes benchmark.json (same as ``unoise benchmark``).

    python scripts/benchmark.py --output benchmark.json
    python scripts/benchmark.py --utility runs/demo-*/utility/checkpoints/best.pt --dataset data/phantom \\
        --val_fraction 0.15 --test_fraction 0.15 --overwrite        # with the fp32 / fast-path dice check
    python scripts/benchmark.py --spatial-size 32 --batch-size 2 --utility-preset small --repeats 1 --warmup 0
                                                                    # toy size (the tests run this)

Options are those of ``unoise benchmark --help``.
"""

from __future__ import annotations

import sys

from pipeline.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["benchmark", *sys.argv[1:]]))
