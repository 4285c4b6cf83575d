"""Null maps: what a map scores that knows nothing about how the model decides.

An explainer is worth running only where it beats these under the same protocol.

- :class:`RandomMap`: uniform noise, seeded.
- :class:`SegmentationMap`: the utility's own clean segmentation, 1 inside and ``exp(-d / decay_mm)``
  outside (d: distance in mm to the predicted mask). It needs the model's output, not its reasoning: a
  user has it already.
- :class:`PredictionLogitsMap`: the utility's |logit|, scaled per slice to [0, 1] (how sure it is).
- :class:`OracleMap`: the same decay from the label: the answer, not the model (the ceiling for
  localisation, not an explanation of the model).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

from pipeline.errors import ConfigError
from pipeline.noise import freeze


def distance_decay_map(mask: np.ndarray, spacing_mm: Sequence[float], decay_mm: float) -> torch.Tensor:
    """1 inside ``mask`` (H, W), ``exp(-distance_mm / decay_mm)`` outside; 0.5 everywhere for an empty mask.

    Args:
        mask: bool (H, W).
        spacing_mm: pixel size (row, column) in mm.
        decay_mm: distance at which the map falls to 1/e.

    Returns:
        float32 (H, W) in (0, 1].
    """
    if decay_mm <= 0:
        raise ConfigError(f"the decay distance must be > 0 mm, got {decay_mm}.")
    if not mask.any():
        return torch.full(mask.shape, 0.5)
    distance = ndimage.distance_transform_edt(~mask, sampling=[float(s) for s in spacing_mm])
    return torch.exp(-torch.as_tensor(distance, dtype=torch.float32) / decay_mm)


def _spacings(spacing: torch.Tensor | None, batch: int, dims: int = 2) -> list[list[float]]:
    """Pixel (voxel) size per item and axis, mm; ones (pixels) when none is given."""
    if spacing is None:
        return [[1.0] * dims] * batch  # in pixels
    return torch.as_tensor(spacing, dtype=torch.float64).reshape(batch, -1).tolist()


class RandomMap:
    """Uniform random importance, seeded: the floor any explanation must beat (slices or volumes)."""

    def __init__(self, seed: int = 0) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, image: torch.Tensor, label: torch.Tensor | None = None,
                 spacing: torch.Tensor | None = None) -> torch.Tensor:
        return torch.rand((image.shape[0], 1, *image.shape[2:]), generator=self.generator)  # slices or volumes


class OracleMap:
    """The label as an explanation: 1 on the pancreas, decaying with distance outside.

    Args:
        decay_mm: distance (mm; pixels when no spacing is given) at which importance falls to 1/e.
    """

    def __init__(self, decay_mm: float = 10.0) -> None:
        if decay_mm <= 0:
            raise ConfigError(f"decay_mm must be > 0, got {decay_mm}.")
        self.decay = decay_mm

    def __call__(self, image: torch.Tensor, label: torch.Tensor | None = None,
                 spacing: torch.Tensor | None = None) -> torch.Tensor:
        if label is None:
            raise ValueError("the oracle map needs the label: call it as explainer(image, label).")
        masks = label[:, 0].detach().cpu().numpy() > 0.5  # (B, H, W)
        return torch.stack([distance_decay_map(m, s, self.decay)
                            for m, s in zip(masks, _spacings(spacing, len(masks), masks.ndim - 1))])[:, None]


class SegmentationMap:
    """The utility's clean segmentation as a map: 1 inside, ``exp(-d / decay_mm)`` outside.

    Args:
        utility: the segmentation network (frozen here).
        decay_mm: distance (mm; pixels when no spacing is given) at which the map falls to 1/e; the
            evaluation uses its ``ring_mm``.
    """

    def __init__(self, utility: torch.nn.Module, decay_mm: float = 10.0) -> None:
        if decay_mm <= 0:
            raise ConfigError(f"decay_mm must be > 0, got {decay_mm}.")
        self.utility, self.decay = freeze(utility), decay_mm

    def __call__(self, image: torch.Tensor, label: torch.Tensor | None = None,
                 spacing: torch.Tensor | None = None) -> torch.Tensor:
        with torch.inference_mode():
            masks = (self.utility(image)[:, 0] > 0).cpu().numpy()  # (B, H, W)
        return torch.stack([distance_decay_map(m, s, self.decay)
                            for m, s in zip(masks, _spacings(spacing, len(masks), masks.ndim - 1))])[:, None]


class PredictionLogitsMap:
    """The utility's |logit| per pixel, divided by its largest value on the slice: [0, 1]."""

    def __init__(self, utility: torch.nn.Module) -> None:
        self.utility = freeze(utility)

    def __call__(self, image: torch.Tensor, label: torch.Tensor | None = None,
                 spacing: torch.Tensor | None = None) -> torch.Tensor:
        with torch.inference_mode():
            magnitude = self.utility(image).abs().float().cpu()  # (B, 1, H, W)
        return magnitude / magnitude.flatten(1).amax(1).clamp_min(1e-12).view(-1, *([1] * (magnitude.ndim - 1)))
