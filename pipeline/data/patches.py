"""3D patches of cached volumes, for volumetric networks (``spatial_dims: 3``).

The volumes go through the deterministic chain (the bundle's ``preprocessing``) once and are cached;
each item then draws ``samples_per_volume`` random patches of ``roi_size``: centred on the label's
foreground or background in proportion ``pos : neg`` (MONAI ``RandCropByPosNegLabeld``) when labels are
used, anywhere in the volume otherwise (``RandSpatialCropSamplesd``, label-free training). Volumes
smaller than the patch are padded first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from monai.data import Dataset
from monai.transforms import Compose, RandCropByPosNegLabeld, RandSpatialCropSamplesd, SpatialPadd

from pipeline.data.datalist import resolve_labels
from pipeline.data.slices import build_volume_dataset
from pipeline.errors import ConfigError


def check_roi_size(roi_size: Sequence[int]) -> list[int]:
    """A 3D patch size: three positive integers."""
    if isinstance(roi_size, (str, bytes)) or len(roi_size) != 3 or any(int(v) < 1 or int(v) != v for v in roi_size):
        raise ConfigError(f"roi_size is a 3D patch size [X, Y, Z] of positive integers, got {roi_size!r}.")
    return [int(v) for v in roi_size]


def build_patch_transforms(roi_size: Sequence[int], samples_per_volume: int = 4, pos: float = 1.0, neg: float = 1.0,
                           use_labels: bool = True, keys: Sequence[str] = ("image", "label", "body")) -> Compose:
    """The random part: pad to the patch, then draw the patches (a list of dicts per volume)."""
    roi = check_roi_size(roi_size)
    if int(samples_per_volume) < 1:
        raise ConfigError(f"samples_per_volume must be >= 1, got {samples_per_volume}.")
    keys = [k for k in keys if use_labels or k != "label"]
    crop = (RandCropByPosNegLabeld(keys, label_key="label", spatial_size=roi, pos=pos, neg=neg,
                                   num_samples=int(samples_per_volume), allow_smaller=False)
            if use_labels else
            RandSpatialCropSamplesd(keys, roi_size=roi, num_samples=int(samples_per_volume), random_size=False))
    return Compose([SpatialPadd(keys, spatial_size=roi, mode="constant"), crop])


def build_patch_dataset(
    datalist: Sequence[dict[str, Any]],
    volume_transform: Callable,
    roi_size: Sequence[int],
    samples_per_volume: int = 4,
    pos: float = 1.0,
    neg: float = 1.0,
    use_labels: bool | None = None,
    cache: str = "memory",
    cache_dir: str | Path | None = None,
    num_workers: int = 0,
    progress: bool | None = None,
) -> Dataset:
    """Volumes -> ``volume_transform`` (cached) -> random patches, in one call (the 3D configs use this).

    Item ``i`` is a list of ``samples_per_volume`` patch dicts of volume ``i`` (``image`` (C, X, Y, Z),
    ``label`` and ``body`` (1, X, Y, Z) when present, ``case``); MONAI's ``DataLoader`` stacks the lists into
    one batch of ``batch_size * samples_per_volume`` patches. ``use_labels`` None reads labels when every
    entry has one; False draws patches anywhere (label-free).
    """
    with_label, datalist = resolve_labels(datalist, use_labels)
    volumes = build_volume_dataset(datalist, volume_transform, cache, cache_dir, num_workers, progress)
    return Dataset(volumes, transform=build_patch_transforms(roi_size, samples_per_volume, pos, neg, with_label))


__all__ = ["build_patch_dataset", "build_patch_transforms", "check_roi_size"]
