"""Pure metrics of importance maps (no engines): where the importance mass lies relative to the pancreas."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage


def compute_region(label: np.ndarray | torch.Tensor, spacing_mm: Sequence[float], ring_mm: float) -> np.ndarray:
    """Pancreas plus a ring of ``ring_mm`` around it: a boolean (H, W) mask, or (X, Y, Z) for a volume.

    Args:
        label: binary pancreas mask (H, W) or (X, Y, Z).
        spacing_mm: pixel (voxel) size per axis in mm: 2 values, or 3 for a volume (the ring is in mm
            along every axis, so anisotropic voxels are measured right).
        ring_mm: ring width in mm; 0 gives the pancreas itself.
    """
    mask = np.asarray(torch.as_tensor(label).detach().cpu()) > 0.5
    if ring_mm <= 0 or not mask.any():
        return mask
    distance = ndimage.distance_transform_edt(~mask, sampling=[float(s) for s in spacing_mm])  # mm to the pancreas
    return distance <= ring_mm


def compute_region_share(
    importance: np.ndarray | torch.Tensor,
    label: np.ndarray | torch.Tensor,
    spacing_mm: Sequence[float],
    ring_mm: float,
    within: np.ndarray | torch.Tensor | None = None,
) -> tuple[float, float, float, float]:
    """Importance mass inside the pancreas + ring, the region's area, the total importance and area.

    Args:
        importance: map (H, W), >= 0.
        label: binary mask of the region's core (H, W): the pancreas, or a planted cue.
        spacing_mm: pixel size (row, column) in mm.
        ring_mm: ring width in mm.
        within: binary (H, W) mask of the pixels that count (the body); None: the whole slice.

    Returns:
        ``(importance inside the region, pixels in the region, total importance, pixels counted)``, all
        over the ``within`` pixels; pool these over slices, then share = inside / total and chance =
        region pixels / pixels counted.
    """
    weights = np.asarray(torch.as_tensor(importance).detach().float().cpu(), dtype=np.float64)
    region = compute_region(label, spacing_mm, ring_mm)
    if weights.shape != region.shape:
        raise ValueError(f"importance {weights.shape} and label {region.shape} must have the same (H, W) shape.")
    counted = np.ones_like(region) if within is None else np.asarray(torch.as_tensor(within).detach().cpu()) > 0.5
    region = region & counted
    return float(weights[region].sum()), float(region.sum()), float(weights[counted].sum()), float(counted.sum())


def compute_dice(pred: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Dice per slice of binary (B, 1, H, W) masks; NaN where both are empty (excluded from means).

    ``monai.metrics.compute_dice``'s formula, vectorised over the batch (MONAI's loops over it in Python, about 3x
    slower on 256 slices, and occlusion scores thousands of masks per map); a test checks the two agree."""
    inter = (pred * reference).flatten(1).sum(1)
    total = pred.flatten(1).sum(1) + reference.flatten(1).sum(1)
    return torch.where(total > 0, 2 * inter / total.clamp_min(1e-8), torch.full_like(total, float("nan")))
