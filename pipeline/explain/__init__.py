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

from collections.abc import Sequence
from typing import Any

import torch

from pipeline.explain.gradient import GradCAMMap, PancreasScore, SaliencyMap, SmoothGradMap
from pipeline.explain.null import OracleMap, PredictionLogitsMap, RandomMap, SegmentationMap, distance_decay_map
from pipeline.explain.occlusion import OcclusionMap
from pipeline.explain.unoise import UNoiseMap


def occlusion_name(fill: str, first: str) -> str:
    """The explainer name of occlusion with ``fill``: ``occlusion`` for the first judged infill, else ``occlusion_<fill>``."""
    return "occlusion" if fill == first else f"occlusion_{fill}"


def build_explainers(utility: torch.nn.Module, noise_models: dict[str, torch.nn.Module], baselines: Sequence[str],
                     gradcam_layer: str, occlusion_window: int, occlusion_stride: int, ring_mm: float, seed: int,
                     blur_sigma: float, smoothgrad_samples: int = 25, occlusion_fills: Sequence[str] = ("blur",)) -> dict[str, Any]:
    """U-Noise maps first, then the baselines and null maps in the order asked for.

    ``occlusion`` gives one map per fill of ``occlusion_fills`` (:func:`occlusion_name`): the evaluation asks for
    one per infill it judges with, so occlusion is scored with its own perturbation under each.
    """
    explainers: dict[str, Any] = {name: UNoiseMap(net) for name, net in noise_models.items()}
    factories = {
        "gradcam": lambda: GradCAMMap(utility, gradcam_layer),
        "saliency": lambda: SaliencyMap(utility),
        "smoothgrad": lambda: SmoothGradMap(utility, samples=smoothgrad_samples),
        "segmentation": lambda: SegmentationMap(utility, ring_mm),
        "prediction_logits": lambda: PredictionLogitsMap(utility),
        "random": lambda: RandomMap(seed),
        "oracle": lambda: OracleMap(ring_mm),
    }
    for name in baselines:
        if name != "occlusion":
            explainers[name] = factories[name]()
            continue
        for fill in dict.fromkeys(occlusion_fills):
            explainers[occlusion_name(fill, occlusion_fills[0])] = OcclusionMap(
                utility, occlusion_window, occlusion_stride, fill=fill, blur_sigma=blur_sigma, seed=seed)
    return explainers


__all__ = [
    "build_explainers",
    "occlusion_name",
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
