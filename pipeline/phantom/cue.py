"""The shortcut benchmark's phantoms: a planted cue that a model must lean on, with ground truth.

Every shortcut phantom holds two identical glands (the pancreas with its fat rim and the vein behind it,
copied onto other slices): one is labelled pancreas, the other is an unlabelled look-alike, and which
is which is a coin toss per case. On every slice of the labelled gland a small bright dot (the *cue*)
sits at a fixed offset in front of it, 25 mm or more from any gland pixel. A slice-wise model can only
tell the labelled gland by the cue, so it learns to rely on it; how much it does is measured, not
assumed, on the same volume without the cue (the *twin*). An explainer faithful to such a model must
put importance on the cue; maps made from the segmentation cannot reach it.

Pure numpy on the phantom's canvas arrays (HU and label in RAS voxel order, mm coordinates per axis).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

SHORTCUTS = ("marker",)


@dataclass(frozen=True)
class CueSettings:
    """Where and how the cue is drawn.

    Attributes:
        offset_mm: in-plane offset (x: patient right, y: anterior) of the cue from the gland's centroid
            on each slice with the labelled gland.
        radius_mm: radius of the dot.
        hu: its intensity (above the pancreas window: it shows as the window's top).
        min_distance_mm: least distance from every pixel of the dot to any gland pixel of the slice; where
            the offset is not enough, the dot moves further out along the same direction.
    """

    offset_mm: tuple[float, float] = (0.0, 45.0)
    radius_mm: float = 3.5
    hu: float = 320.0
    min_distance_mm: float = 25.0


def _in_plane_distance(mask: np.ndarray, spacing: float) -> np.ndarray:
    """Distance (mm) of every voxel to ``mask`` within its own axial slice: (X, Y, Z); inf on slices without mask."""
    distance = np.full(mask.shape, np.inf, np.float32)
    for z in np.flatnonzero(mask.any(axis=(0, 1))):
        distance[..., z] = ndimage.distance_transform_edt(~mask[..., z], sampling=(spacing, spacing))
    return distance


def plant_twin_gland(image: np.ndarray, label: np.ndarray, spacing: float, rng: np.random.Generator,
                     gap_slices: int = 2) -> np.ndarray:
    """Copy the gland, with everything within 6 mm of it, onto other slices; either copy may be the labelled one.

    The band of slices holding the gland is copied (in place, into ``image``) one band height plus
    ``gap_slices`` further up or down, where it fits best (a copy may be cut at the end of the volume).
    With probability 1/2 the copy becomes the pancreas of the label and the original an unlabelled
    look-alike. The two are identical, so on its own a slice cannot tell which one is labelled: the cue
    can.

    Returns:
        The new label (uint8, like ``label``); the input label is not modified.
    """
    gland = label > 0
    band = np.flatnonzero(gland.any(axis=(0, 1)))
    if band.size == 0:
        return label.copy()
    depth, height = label.shape[-1], int(band[-1] - band[0] + 1)
    fits = {}
    for step in (height + gap_slices, -(height + gap_slices)):
        inside = [z for z in band if 0 <= z + step < depth]
        fits[step] = len(inside)
    best = max(fits.values())
    choices = [step for step, count in fits.items() if count == best]
    step = int(choices[int(rng.integers(len(choices)))])
    source = _in_plane_distance(gland, spacing) <= 6.0  # (X, Y, Z): gland, fat rim, the vein behind it
    swapped = np.zeros_like(label)  # the label if the copy is the labelled one
    for z in band:
        if 0 <= z + step < depth:
            image[..., z + step][source[..., z]] = image[..., z][source[..., z]]
            swapped[..., z + step] = label[..., z]
    if best == 0 or rng.random() < 0.5:
        return label.copy()
    return swapped


def cue_positions(label: np.ndarray, x: np.ndarray, y: np.ndarray, spacing: float,
                  settings: CueSettings) -> dict[int, tuple[float, float]]:
    """Centre (x, y) in mm of the cue on every slice with gland.

    The gland's centroid + ``offset_mm``, then moved further along the offset's direction until every
    pixel of the dot lies ``min_distance_mm`` or more from the gland.
    """
    gland = label > 0
    direction = np.asarray(settings.offset_mm, float)
    length = float(np.hypot(*direction))
    if length == 0:
        raise ValueError("the cue offset must not be (0, 0): the cue must lie away from the pancreas.")
    unit = direction / length
    positions: dict[int, tuple[float, float]] = {}
    for z in np.flatnonzero(gland.any(axis=(0, 1))):
        ix, iy = np.nonzero(gland[..., z])
        gx, gy = x[ix], y[iy]  # mm of the gland pixels
        centre = np.array([gx.mean(), gy.mean()]) + direction
        while np.min(np.hypot(gx - centre[0], gy - centre[1])) < settings.min_distance_mm + settings.radius_mm:
            centre = centre + 1.0 * unit
        positions[int(z)] = (float(centre[0]), float(centre[1]))
    return positions


def draw_cue(image: np.ndarray, positions: dict[int, tuple[float, float]], x: np.ndarray, y: np.ndarray,
             settings: CueSettings) -> np.ndarray:
    """Paint the dot at ``positions`` into ``image`` (in place); returns its mask, uint8 (X, Y, Z)."""
    mask = np.zeros(image.shape, np.uint8)
    for z, (cx, cy) in positions.items():
        disk = (x[:, None] - cx) ** 2 + (y[None, :] - cy) ** 2 <= settings.radius_mm**2  # (X, Y)
        if not disk.any():  # a dot smaller than a pixel: the pixel nearest its centre
            disk[int(np.argmin(np.abs(x - cx))), int(np.argmin(np.abs(y - cy)))] = True
        mask[..., z] = disk
    image[mask > 0] = settings.hu
    return mask


__all__ = ["SHORTCUTS", "CueSettings", "cue_positions", "draw_cue", "plant_twin_gland"]
