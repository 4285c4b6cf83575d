"""The slices an evaluation reads: the pancreas slices of the evaluated cases, as stacked tensors."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from pipeline.data import build_slice_dataset
from pipeline.errors import ConfigError


def top_slices_per_case(pancreas_pixels: Sequence[float], cases: Sequence[str], limit: int | None) -> list[int]:
    """Indices of every slice, or of the ``limit`` slices with the most pancreas in each case, in order."""
    by_case: dict[str, list[tuple[float, int]]] = {}
    for index, (pixels, case) in enumerate(zip(pancreas_pixels, cases)):
        by_case.setdefault(case, []).append((float(pixels), index))
    chosen: list[int] = []
    for case in sorted(by_case):
        ranked = sorted(by_case[case], key=lambda item: (-item[0], item[1]))
        chosen += [index for _, index in (ranked if limit is None else ranked[:limit])]
    return sorted(chosen)


def _stack_padded(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack (C, X, Y) slices; slices of different sizes (a bundle's own resampling gives each case its own grid) are
    padded with zeros at the far side to the largest, outside the body mask, as a sliding-window inferer pads."""
    size = [max(int(m.shape[axis]) for m in maps) for axis in (1, 2)]
    return torch.stack([torch.nn.functional.pad(m, [0, size[1] - m.shape[2], 0, size[0] - m.shape[1]]) for m in maps])


def load_evaluation_slices(entries: Sequence[dict[str, Any]], utility_meta: dict[str, Any], pancreas_labels: Sequence[int],
                           limit: int | None, device: torch.device, extra_images: Sequence[str] = (),
                           extra_masks: Sequence[str] = (), volume_transform: Callable | None = None) -> dict[str, Any]:
    """The pancreas slices of ``entries`` as stacked tensors: image, label, body, spacing, cases, and extras.

    ``volume_transform`` is the bundle's ``preprocessing`` (``configs/common.json``); None builds the same
    chain in Python from the utility's window and size.
    """
    slices = build_slice_dataset(entries, window=utility_meta.get("window", "pancreas"),
                                 spatial_size=utility_meta.get("spatial_size"), pancreas_labels=pancreas_labels,
                                 policy="pancreas", progress=False, extra_images=extra_images, extra_masks=extra_masks,
                                 use_labels=True, volume_transform=volume_transform)
    items = [slices[i] for i in range(len(slices))]
    if not items:
        raise ConfigError("the evaluated cases hold no slice with pancreas; check the split and pancreas_labels.")
    chosen = [items[i] for i in top_slices_per_case([float(it["label"].sum()) for it in items], [it["case"] for it in items], limit)]
    data: dict[str, Any] = {key: _stack_padded([item[key] for item in chosen]).to(device)
                            for key in ("image", "label", "body", *extra_images, *extra_masks)}
    data["spacing"] = torch.stack([item["spacing"] for item in chosen])
    data["cases"] = [item["case"] for item in chosen]
    data["slice_index"] = [int(item["slice"]) for item in chosen]
    return data


__all__ = ["load_evaluation_slices", "top_slices_per_case"]
