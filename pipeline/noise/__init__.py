"""The U-Noise method in pure torch, the part that is ours.

Modules: ``model`` (tolerance, noise scale, perturbation, the training network ``UNoiseModel`` and the
one-pass ``UNoiseExplainer``), ``loss`` (``UNoiseLoss`` and its terms), ``infill`` (what hidden pixels
become, shared with the evaluation), ``regions`` (where importance lies relative to the pancreas). The
bundle configs name the classes as ``pipeline.noise.<Name>``.
"""

from __future__ import annotations

from pipeline.noise.loss import UNoiseLoss
from pipeline.noise.model import UNoiseExplainer, UNoiseModel, apply_tolerance, freeze, importance_from_tolerance

__all__ = ["UNoiseExplainer", "UNoiseLoss", "UNoiseModel", "apply_tolerance", "freeze", "importance_from_tolerance"]
