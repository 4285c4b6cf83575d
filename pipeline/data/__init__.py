"""The data path: datalists, validation, MONAI transforms, and 3D volumes cut into cached 2D slices.

Typical use::

    datalist = load_datalist("data/phantom")            # MSD folder, datalist JSON or image folder
    validate_datalist(datalist, pancreas_labels=[1, 2], require_labels=True)
    splits = split_datalist(datalist, val_fraction=0.2, test_fraction=0.0, seed=0)
    slices = build_slice_dataset(splits["training"], window="pancreas", spatial_size=128, policy="mixed")
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pipeline.data.datalist import (
    all_labelled,
    case_name,
    collect_inputs,
    image_paths,
    label_paths,
    is_dicom_series,
    load_datalist,
    resolve_labels,
    split_datalist,
    with_series,
    without_labels,
    write_datalist,
)
from pipeline.data.denoise import DENOISE_MODES, Denoised, NoisyPairsd, water_cylinder
from pipeline.data.dose import (
    NOISE_MODELS,
    ImageDomainNoise,
    ProjectionDomainNoise,
    SimulateDosed,
    build_noise_model,
    check_dose,
    insert_noise,
    inserted_variance,
)
from pipeline.data.files import check_ct_intensity, check_nifti_header
from pipeline.data.patches import build_patch_dataset, check_roi_size
from pipeline.data.slices import SLICE_POLICIES, SliceDataset, build_volume_dataset, select_slices
from pipeline.data.transforms import (
    BODY_HU,
    WINDOW_PRESETS,
    BodyMaskd,
    LoadVolumed,
    RaterLabeld,
    build_slice_augmentation,
    build_volume_transforms,
    compute_body_mask,
    resize_shape,
    resolve_window,
)
from pipeline.data.validate import (
    DatasetSummary,
    check_batch_count,
    check_channels,
    check_training_split,
    load_volume,
    validate_datalist,
)

__all__ = [
    "BODY_HU",
    "DENOISE_MODES",
    "Denoised",
    "ImageDomainNoise",
    "NOISE_MODELS",
    "NoisyPairsd",
    "ProjectionDomainNoise",
    "SimulateDosed",
    "build_noise_model",
    "check_dose",
    "insert_noise",
    "inserted_variance",
    "water_cylinder",
    "all_labelled",
    "SLICE_POLICIES",
    "BodyMaskd",
    "LoadVolumed",
    "RaterLabeld",
    "WINDOW_PRESETS",
    "DatasetSummary",
    "SliceDataset",
    "build_patch_dataset",
    "build_slice_augmentation",
    "check_batch_count",
    "check_channels",
    "check_ct_intensity",
    "check_roi_size",
    "check_nifti_header",
    "check_training_split",
    "build_slice_dataset",
    "build_volume_dataset",
    "build_volume_transforms",
    "case_name",
    "collect_inputs",
    "compute_body_mask",
    "image_paths",
    "label_paths",
    "is_dicom_series",
    "load_datalist",
    "load_volume",
    "resize_shape",
    "resolve_labels",
    "resolve_window",
    "select_slices",
    "split_datalist",
    "validate_datalist",
    "with_series",
    "without_labels",
    "write_datalist",
]


def build_slice_dataset(
    datalist: Sequence[dict[str, Any]],
    window: str | Sequence[float] = "pancreas",
    spatial_size: int | None = None,
    pancreas_labels: Sequence[int] = (1, 2),
    policy: str = "all",
    other_fraction: float = 0.0,
    cache: str = "memory",
    cache_dir: str | Path | None = None,
    seed: int = 0,
    transform: Callable | None = None,
    num_workers: int = 0,
    progress: bool | None = None,
    extra_images: Sequence[str] = (),
    extra_masks: Sequence[str] = (),
    use_labels: bool | None = None,
    reference: Callable | None = None,
    volume_transform: Callable | None = None,
) -> SliceDataset:
    """Volumes -> transforms -> cache -> 2D slices, in one call (the bundle configs use this).

    Args are those of :func:`build_volume_transforms`, :func:`build_volume_dataset` and
    :class:`SliceDataset`. ``use_labels`` None reads labels when every entry has one; False ignores them
    (label-free training: the slice policy then reads ``reference``, e.g. the utility's own prediction).
    Every slice carries its body mask (``body``), computed from HU before the window.
    ``volume_transform`` replaces the chain built here (the bundle configs pass their JSON
    ``preprocessing``, which must give the same keys: image, label if used, body).
    """
    with_label, datalist = resolve_labels(datalist, use_labels)
    if volume_transform is None:
        volume_transform = build_volume_transforms(window, spatial_size, pancreas_labels, extra_images=extra_images, extra_masks=extra_masks)
    volumes = build_volume_dataset(datalist, volume_transform, cache, cache_dir, num_workers, progress)
    return SliceDataset(volumes, policy=policy, other_fraction=other_fraction, seed=seed, transform=transform,
                        reference=None if with_label else reference)

