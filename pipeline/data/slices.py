"""From cached 3D volumes to 2D axial slices, with a slice policy.

Volumes go through the deterministic chain of :mod:`pipeline.data.transforms` once and are cached
(``memory``: MONAI ``CacheDataset``; ``disk``: ``PersistentDataset`` in ``cache_dir``; ``none``). A
:class:`SliceDataset` indexes (volume, z) pairs over that cache and hands out 2D slices, optionally
through random 2D transforms.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset, Dataset, MetaTensor, PersistentDataset
from monai.data.utils import json_hashing
from monai.transforms import Compose

from pipeline.errors import ConfigError

logger = logging.getLogger(__name__)

SLICE_POLICIES = ("all", "pancreas", "mixed")
CACHE_MODES = ("memory", "disk", "none")


def build_volume_dataset(
    datalist: Sequence[dict[str, Any]],
    transform: Callable,
    cache: str = "memory",
    cache_dir: str | Path | None = None,
    num_workers: int = 0,
    progress: bool | None = None,
) -> Dataset:
    """Dataset of preprocessed volumes, cached so files are decoded once.

    Args:
        datalist: entries ``{"image", "label"?, "case"}``.
        transform: the deterministic volume chain (it is cached, so it must hold no random transform).
        cache: ``memory`` (all volumes in RAM), ``disk`` (``cache_dir``, reused across runs; the hash
            covers the entry and the transform, so changing the window or size makes a new entry) or ``none``.
        cache_dir: folder of the disk cache.
        num_workers: threads that fill the memory cache.
        progress: progress bar while caching; None (default): only on a terminal (a log file gets no bar).
    """
    if progress is None:
        import sys

        progress = sys.stderr.isatty()
    if cache not in CACHE_MODES:
        raise ConfigError(f"cache must be one of {CACHE_MODES}, got {cache!r}.")
    # MONAI caches up to the first Randomizable transform, and a nested Compose counts as one: flatten.
    transform = Compose(transform).flatten()
    if cache == "memory":
        return CacheDataset(
            datalist, transform, cache_rate=1.0, num_workers=max(1, num_workers), progress=progress, copy_cache=False
        )
    if cache == "disk":
        if cache_dir is None:
            raise ConfigError("cache='disk' needs a cache_dir (e.g. RUN_DIR/cache).")
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        return PersistentDataset(datalist, transform, cache_dir=cache_dir, hash_transform=json_hashing)
    return Dataset(datalist, transform)


def select_slices(label: torch.Tensor | None, n_slices: int, policy: str, other_fraction: float, rng: np.random.Generator) -> list[int]:
    """Axial slice indices of one volume kept under a policy.

    Args:
        label: binary pancreas label (C, X, Y, Z), or None for an unlabelled volume.
        n_slices: Z.
        policy: ``all``; ``pancreas`` (slices holding pancreas); ``mixed`` (pancreas slices plus
            ``other_fraction`` of the others, drawn with ``rng``).
        other_fraction: share in [0, 1] of the non-pancreas slices kept by ``mixed``.
        rng: random generator for ``mixed``.

    Returns:
        Sorted slice indices.
    """
    if policy not in SLICE_POLICIES:
        raise ConfigError(f"slice policy must be one of {SLICE_POLICIES}, got {policy!r}.")
    if policy == "all":
        return list(range(n_slices))
    if label is None:
        raise ConfigError(f"slice policy {policy!r} needs labels (or a reference mask); use 'all' for unlabelled volumes.")
    has_pancreas = (torch.as_tensor(label) > 0).flatten(0, -2).any(dim=0).cpu().numpy()  # (Z,)
    chosen = np.flatnonzero(has_pancreas)
    if policy == "mixed":
        others = np.flatnonzero(~has_pancreas)
        n_other = int(round(other_fraction * len(others)))
        chosen = np.concatenate([chosen, rng.choice(others, size=n_other, replace=False)])
    return sorted(int(z) for z in chosen)


class SliceDataset(torch.utils.data.Dataset):
    """2D axial slices of 3D volumes.

    Each item is ``{"image": (C, X, Y) float32, "label": (1, X, Y) float32 (if labelled), "body": (1, X, Y)
    float32 body mask (if the volume chain made one), "case": str,
    "slice": int, "volume": int, "spacing": (2,) float32 in-plane pixel size in mm}``: plain tensors, the
    rest of the 3D geometry stays with the volume.

    Args:
        volumes: a dataset of preprocessed volumes (see :func:`build_volume_dataset`), items with
            ``image`` (C, X, Y, Z) and optional ``label`` (1, X, Y, Z).
        policy: which slices to keep, see :func:`select_slices`.
        other_fraction: for ``mixed``, the share of non-pancreas slices kept.
        seed: seeds the ``mixed`` draw.
        transform: applied to each slice dict (e.g. random 2D augmentation).
        reference: for unlabelled volumes, a callable ``image (C, X, Y, Z) -> mask (1, X, Y, Z)`` (e.g. the
            utility's own prediction, :class:`pipeline.networks.utility.PredictedMask`) that the ``pancreas`` and
            ``mixed`` policies read instead of the label.
        recent_volumes: decoded volumes kept at hand when the source is not a memory cache.
    """

    def __init__(
        self,
        volumes: Sequence[dict[str, Any]],
        policy: str = "all",
        other_fraction: float = 0.0,
        seed: int = 0,
        transform: Callable | None = None,
        recent_volumes: int = 2,
        reference: Callable | None = None,
    ) -> None:
        if not 0.0 <= other_fraction <= 1.0:
            raise ConfigError(f"other_fraction must be in [0, 1], got {other_fraction}.")
        self.volumes = volumes
        self.transform = transform
        self._in_memory = isinstance(volumes, CacheDataset)
        self._recent: OrderedDict[int, dict[str, Any]] = OrderedDict()
        self._recent_size = max(1, recent_volumes)
        rng = np.random.default_rng(seed)
        self.index: list[tuple[int, int]] = []
        self.cases: list[str] = []
        self.spacings: list[torch.Tensor] = []
        for v in range(len(volumes)):
            item = self._volume(v)
            affine = getattr(item["image"], "affine", None)
            spacing = torch.linalg.norm(torch.as_tensor(affine)[:3, :2].double(), dim=0) if affine is not None else torch.ones(2)
            self.spacings.append(spacing.float())
            n_slices = int(item["image"].shape[-1])
            mask = item.get("label")
            if mask is None and reference is not None and policy != "all":
                mask = reference(item["image"])
            kept = select_slices(mask, n_slices, policy, other_fraction, rng)
            self.index.extend((v, z) for z in kept)
            self.cases.append(str(item.get("case", v)))
        logger.info("%d slices from %d volumes (policy %s)", len(self.index), len(volumes), policy)

    def _volume(self, v: int) -> dict[str, Any]:
        if self._in_memory:
            return self.volumes[v]
        if v in self._recent:
            self._recent.move_to_end(v)
            return self._recent[v]
        item = self.volumes[v]
        self._recent[v] = item
        if len(self._recent) > self._recent_size:
            self._recent.popitem(last=False)
        return item

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        v, z = self.index[i]
        volume = self._volume(v)
        item: dict[str, Any] = {"case": self.cases[v], "slice": z, "volume": v, "spacing": self.spacings[v].clone()}
        depth = volume["image"].shape[-1]
        for key, data in volume.items():  # image, label, body, and any extra image or mask on the grid
            if isinstance(data, torch.Tensor) and data.ndim == 4 and data.shape[-1] == depth:
                data = data.as_tensor() if isinstance(data, MetaTensor) else data
                item[key] = data[..., z].clone()  # (C, X, Y, Z) -> (C, X, Y)
        return self.transform(item) if self.transform is not None else item
