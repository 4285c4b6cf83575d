"""The volumes a 3D evaluation reads: per case one volume of interest of the utility's patch size,
centred on its pancreas, as stacked tensors (the 3D counterpart of :mod:`pipeline.evaluation.slices`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import Compose, SpatialCropd, SpatialPadd

from pipeline.data import build_volume_transforms, check_roi_size
from pipeline.errors import ConfigError

logger = logging.getLogger(__name__)

def check_volume_settings(baselines: Sequence[str], sanity: bool, shortcut: bool, infills: Sequence[str], source: str) -> None:
    """Refuse, in one line, what the 3D evaluation does not run yet (``baselines`` all run: occlusion with a cube
    window, Grad-CAM at the deepest 3D feature map)."""
    missing = ["the sanity check"] if sanity else []
    missing += ["the shortcut benchmark"] if shortcut else []
    missing += ["the road infill"] if "road" in infills else []
    if missing:
        raise ConfigError(f"{source}: a 3D utility; the 3D evaluation does not run {', '.join(missing)} yet: pass "
                          "--sanity false (and no --shortcut, no road in --infills).")


def evaluation_transform(utility_meta: dict[str, Any], pancreas_labels: Sequence[int]) -> Callable:
    """The Python form of the bundle's preprocessing for a 3D evaluation (image, label and body; no resizing)."""
    return build_volume_transforms(utility_meta.get("window", "pancreas"), None, pancreas_labels, with_label=True, with_body=True)


def load_evaluation_volumes(entries: Sequence[dict[str, Any]], utility_meta: dict[str, Any], pancreas_labels: Sequence[int],
                            device: torch.device, volume_transform: Callable | None = None) -> dict[str, Any]:
    """Per case, the ``roi_size`` patch centred on the pancreas' centroid (padded at the volume's edge).

    Returns:
        ``image`` (N, C, X, Y, Z), ``label`` and ``body`` (N, 1, X, Y, Z) on ``device``, ``spacing`` (N, 3) mm,
        ``cases`` and ``slice_index`` (the patch's middle axial slice in the volume, for the report).
    """
    roi = check_roi_size(utility_meta.get("roi_size") or [64, 64, 32])
    transform = volume_transform or evaluation_transform(utility_meta, pancreas_labels)
    keys = ["image", "label", "body"]
    chosen: list[dict[str, Any]] = []
    for entry in entries:
        volume = transform(dict(entry))
        voxels = torch.nonzero(volume["label"][0] > 0.5)
        if len(voxels) == 0:
            logger.info("%s: no pancreas, left out of the 3D evaluation", entry.get("case"))
            continue
        centre = [int(v) for v in voxels.float().mean(0).round().long().tolist()]
        patch = Compose([SpatialCropd(keys, roi_center=centre, roi_size=roi), SpatialPadd(keys, spatial_size=roi)])(volume)
        affine = np.asarray(volume["image"].affine, dtype=np.float64)
        patch["spacing"] = torch.as_tensor(np.linalg.norm(affine[:3, :3], axis=0), dtype=torch.float32)
        patch["slice_index"], patch["case"] = centre[2], str(entry.get("case"))
        chosen.append(patch)
    if not chosen:
        raise ConfigError("the evaluated cases hold no pancreas; check the split and pancreas_labels.")
    data: dict[str, Any] = {key: torch.stack([torch.as_tensor(p[key].as_tensor() if hasattr(p[key], "as_tensor") else p[key])
                                              for p in chosen]).float().to(device) for key in keys}
    data["spacing"] = torch.stack([p["spacing"] for p in chosen])
    data["cases"] = [p["case"] for p in chosen]
    data["slice_index"] = [p["slice_index"] for p in chosen]
    return data


def middle_slices(data: dict[str, Any], maps: dict[str, torch.Tensor]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The axial slice through each volume of interest's centre, of the data and the maps (the report draws slices)."""
    z = data["image"].shape[-1] // 2
    flat = {key: data[key][..., z] for key in ("image", "label", "body")}
    return {**data, **flat}, {name: m[..., z] for name, m in maps.items()}


def orthogonal_planes(data: dict[str, Any], maps: dict[str, torch.Tensor], cases: int = 2) -> dict[str, Any]:
    """Axial (x, y), coronal (x, z) and sagittal (y, z) planes through the centre of the first ``cases`` volumes of
    interest (each is centred on its pancreas), of the CT, the label and every map: the report's 3D figure."""
    centre = [size // 2 for size in data["image"].shape[2:]]

    def planes(volume: torch.Tensor) -> list[torch.Tensor]:  # (X, Y, Z)
        return [volume[:, :, centre[2]].cpu(), volume[:, centre[1], :].cpu(), volume[centre[0], :, :].cpu()]

    count = min(cases, data["image"].shape[0])
    return {"cases": data["cases"][:count], "spacing": data["spacing"][:count].cpu(), "planes": ["axial", "coronal", "sagittal"],
            "image": [planes(data["image"][i, 0]) for i in range(count)],
            "label": [planes(data["label"][i, 0]) for i in range(count)],
            "maps": {name: [planes(m[i, 0]) for i in range(count)] for name, m in maps.items()}}


__all__ = ["check_volume_settings", "orthogonal_planes", "evaluation_transform", "load_evaluation_volumes", "middle_slices"]
