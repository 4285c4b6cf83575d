"""Explainers: U-Noise and the maps it is compared with, all with one call signature.

``explainer(image, label=None, spacing=None) -> importance``: ``image`` is a batch of CT slices windowed
to [0, 1], (B, C, H, W); ``label`` (B, 1, H, W) is read by the oracle only; ``spacing`` (B, 2) is the
in-plane pixel size in mm, read by the distance-based null maps. The result is (B, 1, H, W) in [0, 1],
1 = most important.

- :mod:`~pipeline.explain.unoise`: U-Noise, one forward pass of the noise model.
- :mod:`~pipeline.explain.occlusion`: occlusion sensitivity with true dice.
- :mod:`~pipeline.explain.gradient`: Grad-CAM, saliency and SmoothGrad (MONAI ``visualize``).
- :mod:`~pipeline.explain.null`: maps that know nothing about how the model decides: random, the
  utility's own segmentation and |logit|, and the label (oracle).
"""

from __future__ import annotations

from pipeline.explain.gradient import GradCAMMap, PancreasScore, SaliencyMap, SmoothGradMap
from pipeline.explain.null import OracleMap, PredictionLogitsMap, RandomMap, SegmentationMap, distance_decay_map
from pipeline.explain.occlusion import OcclusionMap
from pipeline.explain.unoise import UNoiseMap

__all__ = [
    "GradCAMMap",
    "OcclusionMap",
    "OracleMap",
    "PancreasScore",
    "PredictionLogitsMap",
    "RandomMap",
    "SaliencyMap",
    "SegmentationMap",
    "SmoothGradMap",
    "UNoiseMap",
    "distance_decay_map",
]
