"""Synthetic pancreas CT phantoms: the built-in data of the demo, the tests and the shortcut benchmark.

Modules: ``generator`` (one seeded case: anatomy, HU, label, geometry), ``cue`` (the shortcut benchmark's
planted cue and twin gland), ``dataset`` (a set written in the MSD Task07 layout). Their DICOM copies are
written by :mod:`pipeline.dicom.ct_series`.
"""

from __future__ import annotations

from pipeline.phantom.dataset import write_phantom_dataset
from pipeline.phantom.generator import HU_RANGE, ORIENTATIONS, PANCREAS_LABEL, TUMOUR_LABEL, PhantomCase, generate_case

__all__ = ["HU_RANGE", "ORIENTATIONS", "PANCREAS_LABEL", "TUMOUR_LABEL", "PhantomCase", "generate_case", "write_phantom_dataset"]
