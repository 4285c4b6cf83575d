"""A model-zoo bundle's own preprocessing and inferer, run as its ``inference.json`` runs them.

With ``utility_bundle`` set, the configs' ``preprocessing`` (``configs/common.json``) runs :class:`BundleImaged`
in place of our orientation, window and resizing: the bundle's own ``preprocessing`` Compose (``Orientationd``,
``Spacingd``, ``ScaleIntensityRanged`` or ``NormalizeIntensityd``, ``CropForegroundd``...), after our loader
(which also reads DICOM series) and the body mask (from HU, before any intensity change). The label and the body
mask follow the image onto the bundle's grid. The noise model then trains and runs in the bundle's space, and
explain's ``Invertd`` brings the maps back to the input grid through the same transform objects, as the bundle's
own postprocessing does. :func:`bundle_inferer` gives explain the bundle's ``inferer``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.config import KeysCollection
from monai.inferers import Inferer, SliceInferer, SlidingWindowInferer
from monai.transforms import Compose, InvertibleTransform, MapTransform, ResampleToMatch, Transform

from pipeline.errors import ConfigError, DataError, failure_reason

CONFIG_NAMES = ("inference.json", "inference.yaml", "inference.yml")


def find_bundle_file(root: Path, names: Sequence[str], what: str) -> Path:
    """The first of ``names`` in the bundle's ``configs/`` folder.

    Raises:
        ConfigError: none is there (the message names the folder and the bundle layout).
    """
    for name in names:
        if (root / "configs" / name).is_file():
            return root / "configs" / name
    raise ConfigError(f"{root / 'configs'}: no {what} ({', '.join(names)}); a model-zoo bundle holds configs/metadata.json, "
                      "configs/inference.json and models/model.pt.")


def bundle_config_file(bundle_dir: str | os.PathLike) -> Path:
    """The bundle's ``configs/inference.json`` (or ``.yaml``): the file its ``network_def``, preprocessing and inferer
    are read from, and messages name."""
    return find_bundle_file(Path(bundle_dir).expanduser().resolve(), CONFIG_NAMES, "configs/inference.json or .yaml")


def bundle_parser(bundle_dir: str | os.PathLike, device: torch.device | str = "cpu") -> Any:
    """The bundle's ``configs/inference.json`` (or ``.yaml``) as a MONAI ``ConfigParser``, with ``bundle_root`` set and
    a hard-coded ``device`` / ``run_device`` (bundles often write ``torch.device('cuda')``) replaced by ``device``;
    the bundle folder goes on ``sys.path`` so that its ``scripts`` import as MONAI imports them."""
    from monai.bundle import ConfigParser

    root = Path(bundle_dir).expanduser().resolve()
    config_file = bundle_config_file(root)
    parser = ConfigParser()
    parser.read_config(str(config_file))
    parser["bundle_root"] = str(root)
    for key in ("device", "run_device"):
        if key in parser.get():
            parser[key] = torch.device(device)
    if str(root) not in sys.path:
        sys.path.insert(1, str(root))  # the bundle's scripts/ are imported as `scripts.<module>` (as MONAI does)
    return parser


# Our loader (LoadVolumed: NIfTI, DICOM series, channel first) does what these do; a file writer has no place here.
LOADING = ("LoadImage", "LoadImaged", "EnsureChannelFirst", "EnsureChannelFirstd", "AddChannel", "AddChanneld",
           "SaveImage", "SaveImaged")


def _image_key(transforms: Sequence[Any]) -> str:
    """The key the bundle's chain reads the image from: its loader's first key (model-zoo bundles: ``image``)."""
    for transform in transforms:
        if type(transform).__name__ in ("LoadImaged", "EnsureChannelFirstd") and getattr(transform, "keys", None):
            return str(transform.keys[0])
    return "image"


def bundle_chain(bundle: str | os.PathLike) -> tuple[Compose, str]:
    """The bundle's ``preprocessing`` without its loading and saving steps, on the CPU, and the key it reads.

    Raises:
        ConfigError: the bundle's config has no ``preprocessing`` or it cannot be built (the message names the file).
    """
    parser = bundle_parser(bundle, "cpu")
    source = bundle_config_file(bundle)
    if "preprocessing" not in parser.get():
        raise ConfigError(f"{source}: has no preprocessing; a bundle's inference.json names its transforms there.")
    try:
        chain = parser.get_parsed_content("preprocessing")
    except Exception as err:  # a bundle's own transforms may raise anything while building
        raise ConfigError(f"{source}: preprocessing cannot be built ({failure_reason(err)}).") from err
    transforms = chain.flatten().transforms if isinstance(chain, Compose) else [chain]
    key = _image_key(transforms)
    return Compose([t for t in transforms if type(t).__name__ not in LOADING]), key


def _transform_failure(err: BaseException) -> str:
    """``<Transform> raised <Error>: <message>`` from MONAI's "applying transform <...>" wrappers around the cause."""
    import re

    named = re.search(r"applying transform <(?:[\w]+\.)*(\w+) object", str(err))
    cause = err
    while cause.__cause__ is not None:
        cause = cause.__cause__
        named = named or re.search(r"applying transform <(?:[\w]+\.)*(\w+) object", str(cause))
    return f"{named.group(1) + ' raised ' if named else ''}{failure_reason(cause)}"


class BundleImaged(MapTransform, InvertibleTransform):
    """Run a model-zoo bundle's own preprocessing on the loaded image; bring ``carry`` (label, body mask) onto its grid.

    Args:
        bundle: the bundle folder (its ``configs/inference.json``'s ``preprocessing``, loading steps left out).
        keys: the image key (one).
        carry: keys on the image's input grid (masks) that follow it, by nearest-neighbour resampling onto the grid
            the bundle's chain gives (any spatial transform: orientation, spacing, crops), absent keys skipped.

    The image goes through the bundle's transform objects, which record what they did, so ``Invertd`` with the
    preprocessing that holds this step maps a prediction back to the input grid (:meth:`inverse`).
    """

    def __init__(self, bundle: str | os.PathLike, keys: KeysCollection = "image", carry: Sequence[str] = ("label", "body")) -> None:
        super().__init__(keys)
        if len(self.keys) != 1:
            raise ValueError(f"BundleImaged takes the one image key, got {self.keys}.")
        self.bundle = str(bundle)
        self.chain, self.bundle_key = bundle_chain(bundle)
        self.carry = [str(key) for key in carry]
        self.resample = ResampleToMatch(mode="nearest", padding_mode="zeros")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        key = self.keys[0]
        try:
            image = self.chain({self.bundle_key: d[key]})[self.bundle_key]
        except Exception as err:  # the bundle's chain on this image: name the bundle, the file, the transform, the cause
            source = getattr(d[key], "meta", {}).get("filename_or_obj", key)
            raise DataError(f"{self.bundle}: its preprocessing failed on {source}: {_transform_failure(err)}.") from err
        d[key] = image.float() if isinstance(image, torch.Tensor) else image
        for name in self.carry:
            if name in d and d[name] is not None:
                d[name] = self.resample(d[name], img_dst=image).float()
        return d

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        key = self.keys[0]
        if key in d and any(isinstance(t, InvertibleTransform) for t in self.chain.transforms):
            d[key] = self.chain.inverse({self.bundle_key: d[key]})[self.bundle_key]
        return d


def _parsed_inferer(parser: Any, source: Any) -> Any:
    """The bundle's ``inferer`` built (on the CPU), None when its config has none.

    Raises:
        ConfigError: it cannot be built (the message names ``source``).
    """
    if "inferer" not in parser.get():
        return None
    try:
        return parser.get_parsed_content("inferer")
    except Exception as err:
        raise ConfigError(f"{source}: its inferer cannot be built ({failure_reason(err)}).") from err


def bundle_inferer(bundle: str | os.PathLike | None, own: Inferer, spatial_dims: int) -> Inferer:
    """Explain's inferer: ``own`` for our utilities, the bundle's ``inferer`` for a bundle (on the CPU device it was
    given). A 2D network explains a volume slice by slice: a ``SliceInferer`` is kept as it is, a 2D
    ``SlidingWindowInferer`` becomes a ``SliceInferer`` with its window, anything else (``SimpleInferer``) ``own``."""
    if not bundle:
        return own
    parser = bundle_parser(bundle, "cpu")
    inferer = _parsed_inferer(parser, bundle_config_file(bundle))
    if inferer is None:
        return own
    if int(spatial_dims) == 3 or isinstance(inferer, SliceInferer):
        return inferer
    if isinstance(inferer, SlidingWindowInferer):
        return SliceInferer(roi_size=inferer.roi_size, sw_batch_size=inferer.sw_batch_size, overlap=inferer.overlap,
                            mode=inferer.mode, spatial_dim=2, progress=False)
    return own


class WindowedNetwork(torch.nn.Module):
    """A 2D network run window by window, as the bundle's inferer runs it: any slice size, the same blending.

    ``forward`` is the inferer's (a 2D ``SlidingWindowInferer``) over ``network``; it is differentiable, so the noise
    model trains against what the bundle computes, and it is a plain forward where a slice is one window.
    """

    def __init__(self, network: torch.nn.Module, inferer: SlidingWindowInferer) -> None:
        super().__init__()
        self.network, self.inferer = network, inferer

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.inferer(image, self.network)


def slice_window_inferer(parser: Any, source: Any) -> SlidingWindowInferer | None:
    """The 2D window of a bundle whose inferer runs a 2D network by windows (a ``SliceInferer`` or a 2D
    ``SlidingWindowInferer`` with a positive ``roi_size``), as a 2D ``SlidingWindowInferer``; None otherwise."""
    inferer = _parsed_inferer(parser, source)
    if not isinstance(inferer, SlidingWindowInferer):  # (a SliceInferer is one)
        return None
    roi = list(inferer.roi_size)[:2]
    if len(inferer.roi_size) != 2 or any(int(v) <= 0 for v in roi):
        return None
    return SlidingWindowInferer(roi_size=roi, sw_batch_size=inferer.sw_batch_size, overlap=inferer.overlap, mode=inferer.mode,
                                sigma_scale=inferer.sigma_scale, padding_mode=inferer.padding_mode, cval=inferer.cval)


class SliceWindowd(Transform):
    """Pad and crop every 2D map of a slice dict (image, label, body...) to one window of a windowed 2D bundle, so that
    slices of volumes of different sizes batch: a random window for training, the centre one for validation."""

    def __init__(self, roi_size: Sequence[int], random: bool = True, seed: int = 0) -> None:
        self.roi = [int(v) for v in roi_size]
        self.random, self.generator = bool(random), torch.Generator().manual_seed(int(seed))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        maps = [key for key, value in d.items() if isinstance(value, torch.Tensor) and value.ndim == 3]
        if not maps:
            return d
        size = d[maps[0]].shape[1:]
        starts = []
        for n, r in zip(size, self.roi):
            spare = max(0, int(n) - r)
            starts.append(int(torch.randint(spare + 1, (1,), generator=self.generator)) if self.random else spare // 2)
        for key in maps:
            value = d[key]
            pad = [max(0, r - int(n)) for n, r in zip(value.shape[1:], self.roi)]
            value = torch.nn.functional.pad(value, [0, pad[1], 0, pad[0]])  # zeros, as the inferer pads (cval 0)
            d[key] = value[:, starts[0]:starts[0] + self.roi[0], starts[1]:starts[1] + self.roi[1]]
        return d


def slice_windows(utility_meta: dict[str, Any], random: bool, seed: int = 0) -> SliceWindowd | None:
    """The training (``random``) or validation slice transform for a windowed 2D bundle (its meta's ``slice_roi``),
    None for every other utility."""
    roi = utility_meta.get("slice_roi")
    return SliceWindowd(roi, random, seed) if roi else None


def warn_ignored(bundle: str | os.PathLike | None, settings: dict[str, Any]) -> list[str]:
    """Say, once, which of our preprocessing ``settings`` (``window``, ``spatial_size``) a run with a bundle ignores
    because the bundle's own preprocessing decides them; the names said (none without a bundle or when unset)."""
    import logging

    ignored = [name for name, value in settings.items() if bundle and value is not None]
    if ignored:
        logging.getLogger(__name__).warning(
            "%s: %s ignored: the bundle's own preprocessing sets the grid and the intensities (they apply to our own "
            "utilities)", bundle, ", ".join(f"--{name.replace('_', '-')}" for name in ignored))
    return ignored


__all__ = ["BundleImaged", "SliceWindowd", "WindowedNetwork", "bundle_chain", "bundle_inferer",
           "bundle_config_file", "bundle_parser", "find_bundle_file", "slice_window_inferer", "slice_windows", "warn_ignored"]
