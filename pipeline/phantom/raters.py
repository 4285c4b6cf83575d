"""Multi-rater phantoms: several seeded annotations per case whose disagreement is known, and a planted cause of it.

Experts disagree on the pancreas: its boundary by millimetres, a tumour in for one reader and out for
another, a lobule missed. :func:`draw_raters` draws N annotations of one phantom from that known
distribution (:class:`RaterSettings`), each rater independently:

- **boundary**: the gland (pancreas and tumour) grown or shrunk in-plane by ``delta ~ U(-s, +s)`` mm,
  ``s = boundary_shift_mm``;
- **tumour**: included with probability ``tumour_in`` (cases with a tumour only);
- **lobule**: the gland within ``lobule_radius_mm`` of its tail tip (the gland voxel furthest to the
  patient's left) left out with probability ``lobule_missed``;
- **lesion**: a borderline nodule abutting the gland's front (:func:`plant_ambiguity`), included by every
  rater when the case shows the *remote sign*, by each with probability ``lesion_in_without_sign`` when
  it does not.

The remote sign is the planted, known image cause of part of the ambiguity: a bright dot at a fixed
in-plane offset (``sign_offset_mm``, 40 mm in front) from the lesion, on the lesion's slices, in a share
``sign_share`` of the cases. A model that learned the raters' habits is sure about the lesion when the sign
is shown and split when it is not; hiding the sign makes it unsure. The uncertainty itself sits on the
lesion, 40 mm away from the sign, so a map of the uncertainty cannot point at its cause.

Pure numpy on a phantom's arrays (any voxel order: world positions come from the diagonal affine).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from pipeline.errors import ConfigError


@dataclass(frozen=True)
class RaterSettings:
    """The known distribution of the raters' disagreement and of the planted cause (see the module docstring).

    Attributes:
        boundary_shift_mm: each rater's boundary offset is uniform in [-s, +s] mm (in-plane).
        tumour_in: probability that a rater includes the tumour.
        lobule_missed: probability that a rater leaves out the tail's lobule.
        lobule_radius_mm: radius of that lobule around the tail tip.
        lesion_radius_mm: radius of the borderline lesion (in-plane and craniocaudal).
        lesion_hu: its intensity before noise (gland-like: it reads as a bump of the gland).
        sign_share: share of cases that show the remote sign.
        sign_offset_mm: in-plane offset (x: patient right, y: anterior) of the sign from the lesion's centre.
        sign_radius_mm: radius of the sign's dot.
        sign_hu: added to the CT under the dot (a bright speck).
        lesion_in_without_sign: probability that a rater includes the lesion on a case without the sign.
    """

    boundary_shift_mm: float = 6.0
    tumour_in: float = 0.5
    lobule_missed: float = 0.25
    lobule_radius_mm: float = 12.0
    lesion_radius_mm: float = 8.0
    lesion_hu: float = 100.0
    sign_share: float = 0.5
    sign_offset_mm: tuple[float, float] = (0.0, 40.0)
    sign_radius_mm: float = 5.0
    sign_hu: float = 250.0
    lesion_in_without_sign: float = 0.5


@dataclass(frozen=True)
class AmbiguityCause:
    """What :func:`plant_ambiguity` drew into a case: uint8 masks on the case's grid, whether the sign shows, and the CT
    without the sign (the twin: the same image where the sign is not drawn; equal to the image when it shows none)."""

    lesion: np.ndarray
    sign: np.ndarray
    has_sign: bool
    image_nosign: np.ndarray


def _world_axes(affine: np.ndarray, shape: tuple[int, ...]) -> list[np.ndarray]:
    """World position (mm, RAS) of every voxel index along each axis of a diagonal affine: [(X,), (Y,), (Z,)]."""
    return [np.arange(n) * float(affine[a, a]) + float(affine[a, 3]) for a, n in enumerate(shape)]


def _in_plane_edt(mask: np.ndarray, spacing: tuple[float, float]) -> np.ndarray:
    """Distance (mm) of every voxel outside ``mask`` to it within its own slice; inf on slices without mask."""
    distance = np.full(mask.shape, np.inf, np.float32)
    for z in range(mask.shape[2]):
        if mask[..., z].any():
            distance[..., z] = ndimage.distance_transform_edt(~mask[..., z], sampling=spacing)
    return distance


def plant_ambiguity(image: np.ndarray, label: np.ndarray, affine: np.ndarray, rng: np.random.Generator,
                    settings: RaterSettings = RaterSettings()) -> AmbiguityCause:
    """Draw the borderline lesion in front of the gland and, on a share of cases, the remote sign (in place).

    The lesion is a ball of ``lesion_radius_mm`` centred one radius in front of the gland's most anterior
    voxel on the gland's middle slice, minus the gland; its voxels get ``lesion_hu`` plus noise of the
    phantom's level. The sign is a dot of ``sign_radius_mm`` at ``sign_offset_mm`` from the lesion's centre
    on every slice of the lesion, ``sign_hu`` added.

    Args:
        image: CT in HU, int16, (X, Y, Z); modified in place.
        label: the phantom's label (0 background, > 0 gland), same shape.
        affine: the case's diagonal voxel -> RAS affine.
        rng: the case's generator for this step.
        settings: the distribution.

    Returns:
        The lesion and sign masks (uint8, (X, Y, Z)), whether the sign shows and the CT without it; empty masks
        on a case without gland.
    """
    gland = label > 0
    lesion, sign = np.zeros(label.shape, np.uint8), np.zeros(label.shape, np.uint8)
    has_sign = bool(rng.random() < settings.sign_share)
    noise = rng.standard_normal(label.shape).astype(np.float32) * 12.0  # (X, Y, Z) HU, the phantom's noise level
    if not gland.any():
        return AmbiguityCause(lesion, sign, False, image.copy())
    x, y, z = _world_axes(affine, label.shape)
    band = np.flatnonzero(gland.any(axis=(0, 1)))
    middle = int(band[len(band) // 2])
    ix, iy = np.nonzero(gland[..., middle])
    front = int(np.argmax(y[iy]))  # the most anterior gland voxel of the middle slice
    r = settings.lesion_radius_mm
    centre = (x[ix[front]], y[iy[front]] + r, z[middle])  # mm: one radius in front of the gland
    ball = ((x[:, None, None] - centre[0]) ** 2 + (y[None, :, None] - centre[1]) ** 2
            + (z[None, None, :] - centre[2]) ** 2) <= r**2  # (X, Y, Z)
    if not ball.any():  # a grid coarser than the ball: the voxel nearest its centre
        ball[int(np.argmin(np.abs(x - centre[0]))), int(np.argmin(np.abs(y - centre[1]))), middle] = True
    ball &= ~gland
    lesion[ball] = 1
    image[ball] = np.clip(np.rint(settings.lesion_hu + noise[ball]), -1024, 3071).astype(image.dtype)
    twin = image.copy()
    if has_sign:
        sx, sy = centre[0] + settings.sign_offset_mm[0], centre[1] + settings.sign_offset_mm[1]
        disk = (x[:, None] - sx) ** 2 + (y[None, :] - sy) ** 2 <= settings.sign_radius_mm**2  # (X, Y)
        if not disk.any():
            disk[int(np.argmin(np.abs(x - sx))), int(np.argmin(np.abs(y - sy)))] = True
        for k in np.flatnonzero(lesion.any(axis=(0, 1))):
            sign[..., k] = disk
        image[sign > 0] = np.clip(image[sign > 0].astype(np.float32) + settings.sign_hu, -1024, 3071).astype(image.dtype)
    return AmbiguityCause(lesion, sign, has_sign, twin)


def draw_raters(label: np.ndarray, cause: AmbiguityCause, affine: np.ndarray, count: int, rng: np.random.Generator,
                tumour_label: int = 2, settings: RaterSettings = RaterSettings()) -> tuple[list[np.ndarray], list[dict[str, Any]]]:
    """``count`` annotations of one case, each drawn from :class:`RaterSettings`' distribution.

    Args:
        label: the phantom's label (0 background, 1 pancreas, ``tumour_label`` tumour), (X, Y, Z).
        cause: the lesion and sign of :func:`plant_ambiguity`.
        affine: the case's diagonal voxel -> RAS affine.
        count: number of raters, >= 1.
        rng: the case's generator for this step.
        tumour_label: the label value of the tumour.
        settings: the distribution.

    Returns:
        The masks (uint8 {0, 1}, (X, Y, Z), 1 = pancreas as that rater drew it) and one record per rater:
        ``{"boundary_shift_mm", "tumour", "lobule_missed", "lesion"}`` (what that rater did).

    Raises:
        ConfigError: ``count`` below 1.
    """
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise ConfigError(f"raters must be an integer >= 1; received {count!r}.")
    gland = label > 0
    spacing = (abs(float(affine[0, 0])), abs(float(affine[1, 1])))
    outside = _in_plane_edt(gland, spacing)  # (X, Y, Z) mm from the gland, 0 inside
    inside = _in_plane_edt(~gland, spacing)  # (X, Y, Z) mm from the background, 0 outside
    x, y, z = _world_axes(affine, label.shape)
    lobule = np.zeros(label.shape, bool)
    if gland.any():
        ix, iy, iz = np.nonzero(gland)
        tip = int(np.argmin(x[ix]))  # the tail tip: furthest to the patient's left
        lobule = gland & (((x[:, None, None] - x[ix[tip]]) ** 2 + (y[None, :, None] - y[iy[tip]]) ** 2
                           + (z[None, None, :] - z[iz[tip]]) ** 2) <= settings.lobule_radius_mm**2)
    tumour = label == tumour_label
    masks, records = [], []
    for _ in range(int(count)):
        shift = float(rng.uniform(-settings.boundary_shift_mm, settings.boundary_shift_mm))
        with_tumour = bool(rng.random() < settings.tumour_in)
        missed = bool(rng.random() < settings.lobule_missed)
        with_lesion = cause.has_sign or bool(rng.random() < settings.lesion_in_without_sign)
        mask = (outside <= shift) if shift >= 0 else (gland & (inside > -shift))
        if tumour.any() and not with_tumour:
            mask &= ~tumour
        if missed:
            mask &= ~lobule
        if with_lesion:
            mask |= cause.lesion > 0
        masks.append(mask.astype(np.uint8))
        records.append({"boundary_shift_mm": round(shift, 3), "tumour": with_tumour if tumour.any() else None,
                        "lobule_missed": missed, "lesion": with_lesion})
    return masks, records


def settings_record(settings: RaterSettings = RaterSettings()) -> dict[str, Any]:
    """The distribution as plain data, for ``dataset.json``."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()}


__all__ = ["AmbiguityCause", "RaterSettings", "draw_raters", "plant_ambiguity", "settings_record"]
