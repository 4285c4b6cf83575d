"""Ignite handlers and metrics of the runs, by role.

- :mod:`~pipeline.handlers.metrics`: per-patient 3D dice, running means, the importance's region share;
- :mod:`~pipeline.handlers.checkpoint`: ``last.pt`` / ``best.pt`` and ``metrics.json``;
- :mod:`~pipeline.handlers.training_log`: the loss's terms and TensorBoard images;
- :mod:`~pipeline.handlers.export`: each case's outputs written as the evaluator finishes it
  (:mod:`pipeline.outputs`, :mod:`pipeline.dicom.write`).

The bundle configs name them as ``pipeline.handlers.<Name>``.
"""

from __future__ import annotations

from pipeline.handlers.checkpoint import CheckpointHandler, MetricsRecorder
from pipeline.handlers.export import ImportanceExporter
from pipeline.handlers.metrics import OutputMean, RegionShare, VolumeDice
from pipeline.handlers.training_log import EpochSummary, LossTermsHandler, SampleImages, SliceImagesHandler

__all__ = ["CheckpointHandler", "EpochSummary", "ImportanceExporter", "LossTermsHandler", "MetricsRecorder", "OutputMean",
           "RegionShare", "SampleImages", "SliceImagesHandler", "VolumeDice"]
