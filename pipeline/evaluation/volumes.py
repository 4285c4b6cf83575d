"""The volumes a 3D evaluation reads, as stacked tensors (the 3D counterpart of :mod:`pipeline.evaluation.slices`).

Two protocols (``volume_protocol`` in ``evaluate.json``):

- ``whole`` (default): every whole volume of the split, padded to the largest one's shape (the pad is outside the
  body, so it is never hidden or counted); the utility and the noise models run over it by MONAI's
  ``SlidingWindowInferer`` with the utility's ``roi_size`` windows, as ``unoise explain`` runs them
  (:class:`WholeVolume`). Voxels are hidden over the whole body volume.
- ``roi``: per case one volume of interest of the utility's ``roi_size``, centred on its pancreas, through which
  the networks run in one forward pass: cheap, and every explainer runs on it (Grad-CAM too).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from monai.inferers import SlidingWindowInferer
from monai.transforms import Compose, SpatialCropd, SpatialPadd

from pipeline.data import build_volume_transforms, check_roi_size
from pipeline.errors import ConfigError

logger = logging.getLogger(__name__)
VOLUME_PROTOCOLS = ("whole", "roi")
# explainers that need one network forward per map (a layer's activations, a gradient through one window): the
# whole-volume protocol leaves them to the roi protocol
ROI_ONLY = ("gradcam", "saliency", "smoothgrad")


class WholeVolume(torch.nn.Module):
    """A network run over whole volumes by MONAI's ``SlidingWindowInferer`` (Gaussian blending), as explain runs it.

    Args:
        network: maps (B, C, *roi_size) windows to (B, 1, *roi_size) logits.
        roi_size, sw_batch_size, overlap: the sliding window (the utility's ``roi_size``; explain's overlap).
    """

    def __init__(self, network: torch.nn.Module, roi_size: Sequence[int], sw_batch_size: int = 4, overlap: float = 0.25) -> None:
        super().__init__()
        self.network = network
        self.inferer = SlidingWindowInferer(roi_size=list(roi_size), sw_batch_size=sw_batch_size, overlap=overlap,
                                            mode="gaussian")

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.inferer(image, self.network)


def volume_settings(shortcut: bool, infills: Sequence[str], held_out_infills: Sequence[str],
                    source: str) -> tuple[bool, list[str], list[str]]:
    """What a 3D evaluation runs of the settings: the shortcut benchmark and the road infill are 2D-only, so they
    are skipped with a one-line note each, never refused; a judged list left empty is refused.

    Returns ``(shortcut, infills, held_out_infills)``."""
    judged = [spec for spec in infills if spec != "road"]
    held_out = [spec for spec in held_out_infills if spec != "road"]
    if shortcut:
        logger.warning("%s: a 3D utility; the shortcut benchmark is 2D-only and is skipped", source)
    if len(judged) < len(infills):
        logger.warning("the road infill is 2D-only: this 3D evaluation judges %s", ", ".join(judged) or "nothing")
    if len(held_out) < len(held_out_infills):
        logger.warning("the road infill is 2D-only: this 3D evaluation holds out %s only", ", ".join(held_out) or "nothing")
    if not judged:
        raise ConfigError(f"{source}: a 3D utility, and road, the only judged infill, is 2D-only: give --infills another "
                          "(e.g. \"['blur', 'mean']\").")
    return False, judged, held_out


def whole_volume_baselines(baselines: Sequence[str]) -> list[str]:
    """The baselines the whole-volume protocol runs (the rest are scored by ``--volume-protocol roi``), said once."""
    kept = [name for name in baselines if name not in ROI_ONLY]
    dropped = [name for name in baselines if name in ROI_ONLY]
    if dropped:
        logger.warning("whole-volume protocol: %s run per window and are left to --volume-protocol roi", ", ".join(dropped))
    return kept


def evaluation_transform(utility_meta: dict[str, Any], pancreas_labels: Sequence[int]) -> Callable:
    """The Python form of the bundle's preprocessing for a 3D evaluation (image, label and body; no resizing)."""
    return build_volume_transforms(utility_meta.get("window", "pancreas"), None, pancreas_labels)


KEYS = ("image", "label", "body")


def _plain(value: Any) -> torch.Tensor:
    """A tensor without MONAI's metadata (what is saved with ``weights_only`` loading must be plain)."""
    return torch.as_tensor(value.as_tensor() if hasattr(value, "as_tensor") else value)


def _cases_with_pancreas(entries: Sequence[dict[str, Any]], transform: Callable) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Each case's preprocessed volume with its ``case``, ``spacing`` (mm) and pancreas ``centre`` (centroid voxel);
    cases without pancreas are left out (said in the log)."""
    chosen = []
    for entry in entries:
        volume = transform(dict(entry))
        voxels = torch.nonzero(volume["label"][0] > 0.5)
        if len(voxels) == 0:
            logger.info("%s: no pancreas, left out of the 3D evaluation", entry.get("case"))
            continue
        affine = np.asarray(volume["image"].affine, dtype=np.float64)
        chosen.append((volume, {"case": str(entry.get("case")),
                                "spacing": torch.as_tensor(np.linalg.norm(affine[:3, :3], axis=0), dtype=torch.float32),
                                "centre": [int(v) for v in voxels.float().mean(0).round().long().tolist()]}))
    if not chosen:
        raise ConfigError("the evaluated cases hold no pancreas; check the split and pancreas_labels.")
    return chosen


def _stacked(volumes: Sequence[dict[str, Any]], about: Sequence[dict[str, Any]], device: torch.device) -> dict[str, Any]:
    data: dict[str, Any] = {key: torch.stack([_plain(v[key]) for v in volumes]).float().to(device) for key in KEYS}
    data["spacing"] = torch.stack([a["spacing"] for a in about])
    data["cases"] = [a["case"] for a in about]
    return data


def load_evaluation_volumes(entries: Sequence[dict[str, Any]], utility_meta: dict[str, Any], pancreas_labels: Sequence[int],
                            device: torch.device, volume_transform: Callable | None = None) -> dict[str, Any]:
    """Per case, the ``roi_size`` patch centred on the pancreas' centroid (padded at the volume's edge).

    Returns:
        ``image`` (N, C, X, Y, Z), ``label`` and ``body`` (N, 1, X, Y, Z) on ``device``, ``spacing`` (N, 3) mm,
        ``cases`` and ``slice_index`` (the patch's middle axial slice in the volume, for the report).
    """
    roi = check_roi_size(utility_meta.get("roi_size") or [64, 64, 32])
    chosen = _cases_with_pancreas(entries, volume_transform or evaluation_transform(utility_meta, pancreas_labels))
    patches = [Compose([SpatialCropd(KEYS, roi_center=a["centre"], roi_size=roi), SpatialPadd(KEYS, spatial_size=roi)])(v)
               for v, a in chosen]
    data = _stacked(patches, [a for _, a in chosen], device)
    data["slice_index"] = [a["centre"][2] for _, a in chosen]
    return data


def load_whole_volumes(entries: Sequence[dict[str, Any]], pancreas_labels: Sequence[int], device: torch.device,
                       volume_transform: Callable) -> dict[str, Any]:
    """Every whole volume of ``entries`` with pancreas, zero-padded at the far end to the largest one's shape.

    Returns:
        ``image`` (N, C, X, Y, Z), ``label`` and ``body`` (N, 1, X, Y, Z) on ``device``, ``spacing`` (N, 3) mm,
        ``cases``, ``centre`` (the pancreas centroid voxel per case) and ``slice_index`` (its axial slice).
    """
    chosen = _cases_with_pancreas(entries, volume_transform)
    shape = [max(int(v["image"].shape[1 + axis]) for v, _ in chosen) for axis in range(3)]
    pad = SpatialPadd(KEYS, spatial_size=shape, method="end")
    data = _stacked([pad({key: _plain(v[key]).float() for key in KEYS}) for v, _ in chosen], [a for _, a in chosen], device)
    data["centre"] = [a["centre"] for _, a in chosen]
    data["slice_index"] = [a["centre"][2] for _, a in chosen]
    return data


def _centres(data: dict[str, Any]) -> list[list[int]]:
    """Per volume the voxel the figures cut through: the pancreas centroid (whole volumes) or the centre (roi)."""
    return data.get("centre") or [[size // 2 for size in data["image"].shape[2:]] for _ in range(data["image"].shape[0])]


def middle_slices(data: dict[str, Any], maps: dict[str, torch.Tensor]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The axial slice through each volume's pancreas (the centre of a volume of interest), of the data and the maps
    (the report draws slices)."""
    z = [centre[2] for centre in _centres(data)]

    def axial(volume: torch.Tensor) -> torch.Tensor:  # (N, C, X, Y, Z) -> (N, C, X, Y)
        return torch.stack([volume[i, ..., z[i]] for i in range(volume.shape[0])])

    flat = {key: axial(data[key]) for key in ("image", "label", "body")}
    return {**data, **flat}, {name: axial(m) for name, m in maps.items()}


def orthogonal_planes(data: dict[str, Any], maps: dict[str, torch.Tensor], cases: int = 2) -> dict[str, Any]:
    """Axial (x, y), coronal (x, z) and sagittal (y, z) planes through the pancreas of the first ``cases`` volumes (the
    centre of a volume of interest), of the CT, the label and every map: the report's 3D figure."""
    centres = _centres(data)

    def planes(volume: torch.Tensor, centre: Sequence[int]) -> list[torch.Tensor]:  # (X, Y, Z)
        return [volume[:, :, centre[2]].cpu(), volume[:, centre[1], :].cpu(), volume[centre[0], :, :].cpu()]

    count = min(cases, data["image"].shape[0])
    return {"cases": data["cases"][:count], "spacing": data["spacing"][:count].cpu(), "planes": ["axial", "coronal", "sagittal"],
            "image": [planes(data["image"][i, 0], centres[i]) for i in range(count)],
            "label": [planes(data["label"][i, 0], centres[i]) for i in range(count)],
            "maps": {name: [planes(m[i, 0], centres[i]) for i in range(count)] for name, m in maps.items()}}


__all__ = ["ROI_ONLY", "VOLUME_PROTOCOLS", "WholeVolume", "volume_settings", "evaluation_transform",
           "load_evaluation_volumes", "load_whole_volumes", "middle_slices", "orthogonal_planes", "whole_volume_baselines"]
