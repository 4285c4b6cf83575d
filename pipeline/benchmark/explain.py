"""Explanation cost per slice: U-Noise (small/medium/large), Grad-CAM and occlusion on the same utility.

Every method runs in fp32 and channels-last (what ``unoise explain`` uses on the CPU), one slice at a
time, through the explainers of :mod:`pipeline.explain`. Occlusion at the paper's settings (15 x 15
window, stride 2) needs about 15,000 utility forwards per 256 x 256 slice, so it is timed on a coarse
stride that gives about one full batch of windows, with the same window and batch size, and extrapolated
per window; the JSON says so.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from pipeline.explain import GradCAMMap, OcclusionMap, UNoiseMap
from pipeline.benchmark.measure import median, peak_memory, time_runs
from pipeline.networks import build_unet


def time_explainers(
    utility: torch.nn.Module,
    image: torch.Tensor,
    noise_presets: tuple[str, ...],
    repeats: int,
    warmup: int,
    gradcam_layer: str | None = None,
    occlusion_window: int = 15,
    occlusion_stride: int = 2,
    occlusion_timed_stride: int | None = None,
) -> dict[str, Any]:
    """Milliseconds per slice of each explainer and the ratios to U-Noise.

    Args:
        utility: the segmentation network; it is put in eval mode, channels-last, and frozen (no
            gradient on its weights) by the explainers; weights are not changed.
        image: one slice (1, C, H, W) windowed to [0, 1], on the device.
        noise_presets: U-Noise sizes to time (``small``, ``medium``, ``large``).
        repeats, warmup: timed and untimed calls per method.
        gradcam_layer: the utility layer Grad-CAM reads (default: its deepest feature map, found from the module tree).
        occlusion_window, occlusion_stride: the occlusion settings the cost is reported for.
        occlusion_timed_stride: stride actually timed (default: about 16 windows, one batch, per slice).

    Returns:
        ``unoise_<preset>_ms``, ``gradcam_ms``, ``occlusion_ms``, ``gradcam_over_unoise_<preset>``,
        ``occlusion_over_unoise_<preset>``, how occlusion was timed, and peak memory per method.
    """
    device = image.device
    fmt = torch.channels_last
    utility = utility.eval().to(memory_format=fmt)
    image = image.contiguous(memory_format=fmt)
    result: dict[str, Any] = {"precision": "fp32", "memory_format": "channels_last", "peak_memory_mb": {},
                              "memory_increase_mb": {}}

    def timed(name: str, explainer: Any, runs: int, warm: int) -> float:
        with peak_memory(device) as memory:
            seconds = median(time_runs(lambda: explainer(image), runs, warm, device))
        result["peak_memory_mb"][name] = memory["peak_mb"]
        result["memory_increase_mb"][name] = memory["increase_mb"]
        return seconds * 1000.0

    for preset in noise_presets:
        torch.manual_seed(0)
        noise_net = build_unet(preset, in_channels=image.shape[1]).to(device).to(memory_format=fmt)
        result[f"unoise_{preset}_ms"] = round(timed(f"unoise_{preset}", UNoiseMap(noise_net), max(repeats, 10), max(warmup, 2)), 3)
    if gradcam_layer is None:
        from pipeline.explain.layers import find_feature_layer

        gradcam_layer = find_feature_layer(utility, image.shape[1])
    result["gradcam_ms"] = round(timed("gradcam", GradCAMMap(utility, gradcam_layer), repeats, warmup), 2)
    result["gradcam_layer"] = gradcam_layer

    height, width = image.shape[-2:]
    reported = OcclusionMap(utility, window=occlusion_window, stride=occlusion_stride)
    windows = len(reported.positions(height, width))
    timed_stride = occlusion_timed_stride or max(occlusion_stride, math.ceil((max(height, width) - occlusion_window) / 3))
    probe = OcclusionMap(utility, window=occlusion_window, stride=timed_stride)
    probe_windows = len(probe.positions(height, width))
    with torch.inference_mode():
        clean_ms = median(time_runs(lambda: utility(image), repeats, warmup, device)) * 1000.0
    probe_ms = timed("occlusion", probe, repeats, min(warmup, 1))
    per_window_ms = max(probe_ms - clean_ms, 0.0) / probe_windows
    result["occlusion_ms"] = round(clean_ms + per_window_ms * windows, 1)
    result["occlusion"] = {
        "window": occlusion_window, "stride": occlusion_stride, "windows": windows, "batch_size": reported.batch_size,
        "extrapolated": probe_windows != windows, "timed_stride": timed_stride, "timed_windows": probe_windows,
        "timed_ms": round(probe_ms, 1), "utility_forward_ms": round(clean_ms, 2), "per_window_ms": round(per_window_ms, 3),
        "how": "timed at timed_stride (timed_windows windows, same window and batch size), then "
               "utility_forward_ms + per_window_ms * windows",
    }
    result["utility_forward_ms"] = round(clean_ms, 2)
    for preset in noise_presets:
        unoise_ms = result[f"unoise_{preset}_ms"]
        result[f"gradcam_over_unoise_{preset}"] = round(result["gradcam_ms"] / unoise_ms, 1)
        result[f"occlusion_over_unoise_{preset}"] = round(result["occlusion_ms"] / unoise_ms, 0)
    return result
