"""Whole-volume figures of a 3D evaluation: the utility's dice on each whole test volume and what each explainer
costs per volume, every method run the way ``unoise explain`` runs the noise model: MONAI's
``SlidingWindowInferer`` over the utility's ``roi_size`` windows (Gaussian blending).

- ``utility_pass``: one sliding-window pass of the utility (the segmentation alone).
- U-Noise: one sliding-window pass of the noise model (the importance map alone).
- Grad-CAM: per window, the utility forward and backward to its feature layer; maps blended like the others.
- Occlusion: per window, one occluded copy of the window per cube position (plus its clean forward). That is
  thousands of utility forwards per volume, so it is timed on one batch of occluded copies of the volume's
  centre window and extrapolated per forward; the record says so (``occlusion['extrapolated']``).

Peak memory per method is measured on the first case (:func:`pipeline.benchmark.measure.peak_memory`: CPU peak
resident memory, or CUDA allocated memory); with windows it is bounded by the window, not the volume.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from monai.inferers import SlidingWindowInferer
from monai.transforms import CenterSpatialCrop, Compose, SpatialPad

from pipeline.benchmark.measure import peak_memory, synchronize
from pipeline.explain import GradCAMMap, OcclusionMap, UNoiseMap
from pipeline.noise.regions import compute_dice

logger = logging.getLogger(__name__)


def count_windows(inferer: SlidingWindowInferer, shape: Sequence[int]) -> int:
    """Windows the inferer cuts from a volume of spatial ``shape`` (counted by running it on a stand-in network)."""
    seen: list[int] = []

    def stand_in(batch: torch.Tensor) -> torch.Tensor:
        seen.append(batch.shape[0])
        return torch.zeros((batch.shape[0], 1, *batch.shape[2:]))

    inferer(torch.zeros((1, 1, *shape)), stand_in)
    return int(sum(seen))


def _plain(value: Any) -> torch.Tensor:
    """A float tensor without MONAI's metadata (timings should not include meta tracking)."""
    return torch.as_tensor(value.as_tensor() if hasattr(value, "as_tensor") else value).float()


def _timed(function: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    synchronize(device)
    start = time.perf_counter()
    out = function()
    synchronize(device)
    return out, (time.perf_counter() - start) * 1000.0


def centre_window(image: torch.Tensor, roi: Sequence[int]) -> torch.Tensor:
    """The ``roi`` window at the centre of ``image`` (1, C, *spatial), zero-padded where the volume is smaller."""
    window = Compose([CenterSpatialCrop(list(roi)), SpatialPad(list(roi))])(image[0])
    return torch.as_tensor(window.as_tensor() if hasattr(window, "as_tensor") else window)[None]


def occlusion_per_volume(utility: torch.nn.Module, image: torch.Tensor, roi: Sequence[int], windows: int,
                         occlusion: OcclusionMap, device: torch.device) -> dict[str, Any]:
    """Occlusion's milliseconds per volume, extrapolated from one batch of occluded copies of the centre window."""
    window = centre_window(image, roi)
    positions = len(occlusion.positions(*roi))
    with torch.inference_mode():
        utility(window)  # warm-up
        _, clean_ms = _timed(lambda: utility(window), device)
        batch = window.repeat(occlusion.batch_size, *([1] * (window.ndim - 1)))
        utility(batch)
        _, batch_ms = _timed(lambda: utility(batch), device)
    per_forward_ms = batch_ms / occlusion.batch_size
    forwards = windows * (positions + 1)
    return {
        "ms_per_volume": windows * (clean_ms + positions * per_forward_ms), "extrapolated": True,
        "window": occlusion.window, "stride": occlusion.stride, "positions_per_window": positions,
        "utility_forwards_per_volume": forwards, "per_forward_ms": per_forward_ms,
        "how": (f"one batch of {occlusion.batch_size} copies of the centre roi window timed through the utility "
                "(per_forward_ms), then windows * (clean window forward + positions_per_window * per_forward_ms); "
                "occluding and scoring the copies is not counted"),
    }


def volume_costs(
    utility: torch.nn.Module,
    noise_models: dict[str, torch.nn.Module],
    entries: Sequence[dict[str, Any]],
    transform: Callable,
    roi_size: Sequence[int],
    device: torch.device,
    overlap: float = 0.25,
    sw_batch_size: int = 4,
    gradcam_layer: str | None = None,
    in_channels: int = 1,
    occlusion_window: int = 8,
    occlusion_strides: Sequence[int] = (4, 2),
    gradcam: bool = True,
) -> dict[str, Any]:
    """Per case the utility's whole-volume dice, and per method its milliseconds per whole volume.

    Args:
        entries: datalist entries with ``image`` and ``label``; ``transform``: the preprocessing that loads one.
        roi_size, overlap, sw_batch_size: the sliding window (the utility's roi_size; explain's overlap).
        occlusion_window, occlusion_strides: the cube occlusion is costed at, one figure per stride.

    Returns:
        ``cases`` (case, shape, windows, dice), ``dice_mean``, ``methods`` (``ms_per_volume`` median over cases,
        ``peak_memory_mb``, ``memory_increase_mb``), ``ratios`` (each costlier method over each U-Noise model),
        and how it was measured.
    """
    inferer = SlidingWindowInferer(roi_size=list(roi_size), sw_batch_size=sw_batch_size, overlap=overlap, mode="gaussian")
    utility = utility.eval()
    maps: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        name: UNoiseMap(net.eval()) for name, net in noise_models.items()}
    if gradcam:
        maps["gradcam"] = GradCAMMap(utility, gradcam_layer, in_channels, spatial_dims=3)
    times: dict[str, list[float]] = {"utility_pass": [], **{name: [] for name in maps}}
    memory: dict[str, dict[str, Any]] = {}
    occlusions: dict[int, list[dict[str, Any]]] = {stride: [] for stride in occlusion_strides}
    cases = []
    for index, entry in enumerate(entries):
        volume = transform(dict(entry))
        image, label = (_plain(volume[key])[None] for key in ("image", "label"))
        image = image.to(device)
        shape = list(image.shape[2:])
        windows = count_windows(inferer, shape)
        methods: dict[str, Callable[[], Any]] = {"utility_pass": lambda: inferer(image, utility)}
        for name, explainer in maps.items():
            methods[name] = (lambda e=explainer: inferer(image, e))
        prediction = None
        for name, run in methods.items():
            with torch.inference_mode(name != "gradcam"):  # Grad-CAM needs autograd; the rest run as explain runs them
                if index == 0:  # warm-up, and the peak memory of one volume
                    with peak_memory(device) as peak:
                        run()
                    memory[name] = {"peak_mb": peak.get("peak_mb"), "increase_mb": peak.get("increase_mb")}
                out, ms = _timed(run, device)
            times[name].append(ms)
            if name == "utility_pass":
                prediction = (out.detach().cpu() > 0).float()
        for stride in occlusion_strides:
            occlusions[stride].append(occlusion_per_volume(
                utility, image, roi_size, windows, OcclusionMap(utility, occlusion_window, stride), device))
        dice = float(torch.nan_to_num(compute_dice(prediction, label), nan=1.0)[0])
        cases.append({"case": str(entry.get("case")), "shape": shape, "windows": windows, "dice": dice})
        logger.info("%s: %s voxels, %d windows, utility dice %.3f; %s", entry.get("case"), "x".join(map(str, shape)), windows,
                    dice, ", ".join(f"{name} {times[name][-1]:,.0f} ms" for name in methods))
    record: dict[str, Any] = {
        "cases": cases, "dice_mean": float(np.mean([c["dice"] for c in cases])),
        "roi_size": list(roi_size), "overlap": overlap, "sw_batch_size": sw_batch_size, "device": str(device),
        "memory_kind": "CUDA allocated" if device.type == "cuda" else "CPU peak resident (whole process)",
        "methods": {name: {"ms_per_volume": float(np.median(values)), **memory.get(name, {})} for name, values in times.items()},
    }
    for stride, rows in occlusions.items():
        first = rows[0]
        record["methods"][f"occlusion_stride{stride}"] = {
            **{k: v for k, v in first.items() if k not in ("ms_per_volume", "utility_forwards_per_volume", "per_forward_ms")},
            "ms_per_volume": float(np.median([r["ms_per_volume"] for r in rows])),
            "utility_forwards_per_volume": int(np.median([r["utility_forwards_per_volume"] for r in rows])),
            "per_forward_ms": float(np.median([r["per_forward_ms"] for r in rows]))}
    record["ratios"] = {
        f"{other}_over_{name}": record["methods"][other]["ms_per_volume"] / max(record["methods"][name]["ms_per_volume"], 1e-9)
        for name in noise_models for other in record["methods"] if other not in noise_models}
    record["how"] = ("median over the cases of one timed run per case and method (after a warm-up run on the first "
                     "case); U-Noise and Grad-CAM timed on every window, occlusion extrapolated (see each record)")
    return record


__all__ = ["centre_window", "count_windows", "occlusion_per_volume", "volume_costs"]
