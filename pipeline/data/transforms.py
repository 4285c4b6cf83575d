"""MONAI transforms from a CT file to a windowed, RAS-oriented volume with a binary pancreas label.

The volume chain is deterministic, so its output can be cached (memory or disk) and the second epoch
does not decode files again; random augmentation acts on 2D slices after the cache.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    AsDiscreted,
    Compose,
    EnsureTyped,
    LabelFilterd,
    LoadImage,
    MapTransform,
    Orientationd,
    Rand2DElasticd,
    RandAffined,
    RandFlipd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    Resized,
    ScaleIntensityRanged,
)

from pipeline.dicom.read import choose_dicom_series, read_dicom_series
from pipeline.errors import ConfigError, user_error

# Named HU windows (lower, upper). "pancreas" is the window of MONAI's pancreas CT bundle, "spleen" that
# of its spleen bundle; "abdomen" is the usual soft-tissue reading window (level 40, width 400).
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "pancreas": (-87.0, 199.0),
    "spleen": (-57.0, 164.0),
    "abdomen": (-160.0, 240.0),
}


BODY_HU = -500.0  # above: tissue; below: air, the table's foam, the lungs (filled back in as holes)


def compute_body_mask(hu_slice: np.ndarray, threshold_hu: float = BODY_HU) -> np.ndarray:
    """The patient's body on one axial slice: HU above ``threshold_hu``, largest component, holes filled.

    Args:
        hu_slice: CT in HU, shape (X, Y).
        threshold_hu: tissue threshold; -500 HU separates tissue from air and lung.

    Returns:
        bool (X, Y): the largest connected component above the threshold (drops the table and
        clothing), with enclosed air (bowel gas, lungs) filled in. All False on a slice without tissue.
    """
    from scipy import ndimage

    tissue = np.asarray(hu_slice) > threshold_hu
    components, count = ndimage.label(tissue)
    if count == 0:
        return tissue
    sizes = np.bincount(components.ravel())[1:]  # (count,)
    return ndimage.binary_fill_holes(components == int(np.argmax(sizes)) + 1)


RATER_MODES = ("vote", "all")


class RaterLabeld(MapTransform):
    """Reduce a multi-rater label, one channel per rater (R, *spatial), to what the run uses.

    ``vote`` (the deterministic utility's training and evaluation): the majority of the raters, a voxel
    marked by at least half of them (a tie counts as pancreas), one channel; ``all``: every rater kept (the
    Probabilistic U-Net draws one per step and the ambiguity metrics read them all). A one-rater label passes
    unchanged either way. Expects binary masks (after ``LabelFilterd`` + ``AsDiscreted``).

    Args:
        keys: label keys.
        mode: ``vote`` or ``all``.
    """

    def __init__(self, keys: KeysCollection, mode: str = "vote", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if mode not in RATER_MODES:
            raise ConfigError(f"rater_mode must be one of {RATER_MODES}, got {mode!r}.")
        self.mode = mode

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            if self.mode == "vote" and label.shape[0] > 1:
                d[key] = (label.float().mean(dim=0, keepdim=True) >= 0.5).to(label.dtype)  # (1, *spatial)
        return d


class BodyMaskd(MapTransform):
    """Add the body mask of a CT volume in HU, slice by slice (:func:`compute_body_mask`).

    Must run before the HU window (which clips everything below the window to its floor). The mask is a
    float32 (1, X, Y, Z) MetaTensor in {0, 1} with the image's affine, stored under ``body_key``.

    Args:
        keys: the image key (one).
        body_key: where the mask goes.
        threshold_hu: tissue threshold in HU.
    """

    def __init__(self, keys: KeysCollection = "image", body_key: str = "body", threshold_hu: float = BODY_HU) -> None:
        super().__init__(keys)
        if len(self.keys) != 1:
            raise ValueError(f"BodyMaskd takes the one image key, got {self.keys}.")
        self.body_key, self.threshold_hu = body_key, float(threshold_hu)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image = d[self.keys[0]]  # (C, X, Y, Z) HU
        hu = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image, dtype=np.float32)[0]
        body = np.stack([compute_body_mask(hu[..., z], self.threshold_hu) for z in range(hu.shape[-1])], axis=-1)
        mask = torch.as_tensor(body[None].astype(np.float32))  # (1, X, Y, Z)
        if isinstance(image, MetaTensor):
            meta = {k: v for k, v in image.meta.items() if k != "affine"}
            mask = MetaTensor(mask, affine=image.affine.clone(), meta=meta)
        d[self.body_key] = mask
        return d


class LoadVolumed(MapTransform):
    """``LoadImaged(image_only=True, ensure_channel_first=True)`` that honours a chosen DICOM series.

    A DICOM folder is read by :func:`pipeline.dicom.read.read_dicom_series`: its only series, or the one the
    entry's ``series_key`` names, with slices sorted along the slice normal (SimpleITK's grid; an uneven series is
    resampled onto an even grid when the entry says ``resample_uneven``); every other
    entry is read exactly as ``LoadImaged`` reads it. Files are checked by :func:`pipeline.data.validate_datalist` beforehand.

    Args:
        keys: keys holding file or folder paths.
        series_key: entry key with the series UID (absent or None: the folder's only series).
    """

    def __init__(self, keys: KeysCollection, series_key: str = "series", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.series_key = series_key
        self.loader = LoadImage(image_only=True, ensure_channel_first=True)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        series = d.get(self.series_key)
        for key in self.key_iterator(d):
            if isinstance(d[key], (str, os.PathLike)) and Path(d[key]).is_dir():  # a DICOM series: sorted by position
                d[key] = read_dicom_series(choose_dicom_series(d[key], series).files, d[key],
                                           resample_uneven=bool(d.get("resample_uneven", False)))[None]
            else:  # (a list: a multi-channel case's files)
                d[key] = self.loader(d[key])
        return d


def resolve_window(window: str | Sequence[float]) -> tuple[float, float]:
    """HU bounds of a named preset (see ``WINDOW_PRESETS``) or of an explicit ``[lower, upper]`` pair.

    Raises:
        ValueError: unknown preset name, or bounds that are not two increasing numbers.
    """
    if isinstance(window, str):
        if window not in WINDOW_PRESETS:
            raise ConfigError(f"unknown HU window {window!r}; use one of {sorted(WINDOW_PRESETS)} or [lower, upper] in HU.")
        return WINDOW_PRESETS[window]
    bounds = tuple(float(v) for v in window)
    if len(bounds) != 2 or not bounds[0] < bounds[1]:
        raise ConfigError(f"an explicit HU window is [lower, upper] with lower < upper, got {list(window)}.")
    return bounds  # type: ignore[return-value]


def resize_shape(spatial_size: int | None) -> list[int]:
    """``Resized``'s spatial size for an in-plane size S: ``[S, S, -1]`` (Z kept), or ``[-1, -1, -1]`` for None."""
    if spatial_size is None:
        return [-1, -1, -1]
    if isinstance(spatial_size, bool) or not isinstance(spatial_size, numbers.Integral) or int(spatial_size) < 8:
        raise ConfigError(f"spatial_size is the in-plane size in pixels (>= 8) or null, got {spatial_size!r}.")
    return [int(spatial_size), int(spatial_size), -1]


def build_volume_transforms(
    window: str | Sequence[float] = "pancreas",
    spatial_size: int | None = None,
    pancreas_labels: Sequence[int] = (1, 2),
    extra_images: Sequence[str] = (),
    extra_masks: Sequence[str] = (),
    config_file: str | os.PathLike | None = None,
    rater_mode: str = "vote",
    settings: Mapping[str, Any] | None = None,
) -> Compose:
    """The bundle's ``preprocessing`` chain (``configs/common.json``), parsed with these values: load -> RAS -> body
    mask -> window to [0, 1] -> binary label -> size.

    The JSON is the chain's one definition: a step a user adds there (``Spacingd``, another window) reaches the
    training runs, ``explain``, the evaluation and this function alike. A data dict without ``label`` (label-free
    runs, :func:`pipeline.data.without_labels`) is read as the image alone: the label steps skip a missing key.

    Args:
        window: HU window preset name or ``[lower, upper]``; HU outside are clipped, then scaled to [0, 1].
        spatial_size: in-plane size S (the volume becomes S x S x Z, Z unchanged); None keeps the size.
        pancreas_labels: label values merged into the pancreas class (MSD: 1 pancreas, 2 tumour).
        extra_images: more CT keys on the image's grid, windowed like it (e.g. ``image_nocue``, the
            shortcut benchmark's twin without the cue).
        extra_masks: more mask keys on the image's grid, binarised (> 0) like a label (e.g. ``shortcut``,
            the cue's mask).
        config_file: the ``common.json`` to read (default: the shipped bundle's, or ``$UNOISE_BUNDLE``'s).
        rater_mode: a label listing several raters' files becomes their majority (``vote``) or keeps one channel
            per rater (``all``), see :class:`RaterLabeld`.
        settings: more of ``common.json``'s settings, e.g. ``dose`` and ``dose_noise_model`` (a lower-dose scan,
            :class:`pipeline.data.SimulateDosed`), ``denoiser_checkpoint`` (:class:`pipeline.data.Denoised`) or
            ``window_clip``; a name the file does not define is refused.

    Returns:
        A Compose mapping ``{"image": path, "label": path, ...}`` to ``image`` float32 (1, S, S, Z) in
        [0, 1], ``label`` and ``body`` (the body mask from HU, :class:`BodyMaskd`) float32 (1, S, S, Z) in
        {0, 1}, MetaTensors with a RAS affine.
    """
    import pipeline
    from monai.bundle import ConfigParser

    from pipeline.locations import COMMON_CONFIG, default_bundle_root

    if not pancreas_labels:
        raise ConfigError("pancreas_labels must name at least one label value, e.g. [1, 2] for MSD Task07.")
    resolve_window(window)  # refused here with the setting's name
    parser = ConfigParser(globals={"pipeline": pipeline})
    parser.read_config(str(config_file or default_bundle_root() / "configs" / COMMON_CONFIG))
    parser.update({"data_window": window, "data_spatial_size": spatial_size,
                   "pancreas_labels": [int(v) for v in pancreas_labels], "image_keys": ["image", *extra_images],
                   "mask_keys": ["label", *extra_masks], "rater_mode": rater_mode})
    unknown = sorted(set(settings or {}) - set(parser.get()))
    if unknown:
        raise ConfigError(f"{COMMON_CONFIG} defines no setting {', '.join(unknown)}; the chain's settings: "
                          f"{', '.join(k for k in parser.get() if not k.startswith('_') and k != 'imports')}.")
    parser.update(dict(settings or {}))
    try:
        return parser.get_parsed_content("preprocessing")
    except Exception as err:  # our refusal (a bad dose, a checkpoint of another kind) inside MONAI's wrapper: raise it as it is
        ours = user_error(err)
        if ours is None:
            raise
        raise ours from None


def build_slice_augmentation(
    prob: float = 0.5,
    flip_prob: float = 0.0,
    rotate_deg: float = 10.0,
    zoom: float = 0.1,
    elastic_prob: float = 0.0,
    intensity: float = 0.05,
    keys: Sequence[str] = ("image", "label"),
) -> Compose | None:
    """Random 2D augmentation of a slice dict; every amount is a config value, 0 turns a part off.

    Args:
        prob: probability of the affine (rotation + zoom) and of each intensity change.
        flip_prob: probability of a left-right flip. Off by default: it swaps the liver and spleen sides,
            which a model of real CT may rely on.
        rotate_deg: largest in-plane rotation, degrees.
        zoom: largest relative zoom in or out (0.1 = 0.9x..1.1x).
        elastic_prob: probability of a smooth elastic deformation.
        intensity: largest relative scale and absolute shift of the windowed [0, 1] intensities.
        keys: image key first, then label key(s); labels are resampled with nearest neighbour.

    Returns:
        A Compose of MONAI random dict transforms, or None when every part is off.
    """
    for name, value in {"prob": prob, "flip_prob": flip_prob, "elastic_prob": elastic_prob}.items():
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{name} is a probability in [0, 1], got {value}.")
    if rotate_deg < 0 or zoom < 0 or intensity < 0:
        raise ConfigError(f"rotate_deg, zoom and intensity must be >= 0, got {rotate_deg}, {zoom}, {intensity}.")
    keys = list(keys)
    modes = ["bilinear"] + ["nearest"] * (len(keys) - 1)
    chain = []
    if flip_prob > 0:
        chain.append(RandFlipd(keys, prob=flip_prob, spatial_axis=0))
    if prob > 0 and (rotate_deg > 0 or zoom > 0):
        chain.append(RandAffined(keys, prob=prob, rotate_range=math.radians(rotate_deg), scale_range=(zoom, zoom),
                                 mode=modes, padding_mode="zeros"))
    if elastic_prob > 0:
        chain.append(Rand2DElasticd(keys, spacing=(16, 16), magnitude_range=(1.0, 2.0), prob=elastic_prob,
                                    mode=modes, padding_mode="zeros"))
    if prob > 0 and intensity > 0:
        chain += [RandScaleIntensityd(keys[0], factors=intensity, prob=prob),
                  RandShiftIntensityd(keys[0], offsets=intensity, prob=prob)]
    return Compose(chain) if chain else None
