"""Occlusion sensitivity with true dice: hide a window, measure how much the utility's segmentation changes.

A window slides over the slice (15 x 15, stride 2, as the U-Noise paper); its pixels take the ``fill``
(by default the blurred slice, the evaluation's own infill, so occlusion is judged with the perturbation
it was computed with). A pixel's importance is the mean dice drop of the utility's binary prediction
against its unoccluded prediction over the windows covering it (the authors scored raw logits). Windows
go through the utility in batches.
"""

from __future__ import annotations

import torch

from pipeline.errors import ConfigError
from pipeline.infill import DEFAULT_BLUR_SIGMA, apply_blur
from pipeline.metrics import compute_dice
from pipeline.noise import freeze


class OcclusionMap:
    """Occlusion sensitivity: mean dice drop of the utility over the windows covering each pixel.

    Args:
        utility: the segmentation network (frozen here).
        window: window side in pixels (paper: 15).
        stride: window step in pixels (paper: 2).
        fill: ``"blur"`` (the slice blurred with ``blur_sigma`` pixels) or a constant (0 = the window floor).
        batch_size: occluded copies per utility forward (16: larger batches ran 2x slower on 2 CPU cores).
        blur_sigma: Gaussian sigma of the ``blur`` fill, pixels.
    """

    def __init__(self, utility: torch.nn.Module, window: int = 15, stride: int = 2, fill: float | str = "blur",
                 batch_size: int = 16, blur_sigma: float = DEFAULT_BLUR_SIGMA) -> None:
        if window < 1 or stride < 1 or batch_size < 1:
            raise ConfigError(f"window, stride and batch_size must be >= 1, got {window}, {stride}, {batch_size}.")
        if isinstance(fill, str) and fill != "blur":
            raise ConfigError(f"occlusion fill must be 'blur' or a number, got {fill!r}.")
        self.utility = freeze(utility)
        self.window, self.stride, self.fill, self.batch_size = window, stride, fill, batch_size
        self.blur_sigma = blur_sigma
        self.forwards = 0  # utility forward passes (items), for the cost table

    def positions(self, height: int, width: int) -> list[tuple[int, int]]:
        """Top-left corners of the windows (the last window touches the border)."""
        rows = sorted({*range(0, max(1, height - self.window + 1), self.stride), max(0, height - self.window)})
        cols = sorted({*range(0, max(1, width - self.window + 1), self.stride), max(0, width - self.window)})
        return [(r, c) for r in rows for c in cols]

    @torch.inference_mode()
    def __call__(self, image: torch.Tensor, label: torch.Tensor | None = None,
                 spacing: torch.Tensor | None = None) -> torch.Tensor:
        maps = []
        for slice_ in image:  # (C, H, W)
            height, width = slice_.shape[-2:]
            clean = (self.utility(slice_[None]) > 0).float()  # (1, 1, H, W)
            fill = apply_blur(slice_[None], self.blur_sigma)[0] if self.fill == "blur" else torch.full_like(slice_, float(self.fill))
            drop_sum = torch.zeros(height, width)
            count = torch.zeros(height, width)
            corners = self.positions(height, width)
            for start in range(0, len(corners), self.batch_size):
                chunk = corners[start : start + self.batch_size]
                occluded = slice_[None].repeat(len(chunk), 1, 1, 1)  # (N, C, H, W)
                for i, (r, c) in enumerate(chunk):
                    occluded[i, :, r : r + self.window, c : c + self.window] = fill[:, r : r + self.window, c : c + self.window]
                pred = (self.utility(occluded) > 0).float()  # (N, 1, H, W)
                drops = 1.0 - torch.nan_to_num(compute_dice(pred, clean.expand_as(pred)), nan=1.0)  # (N,); both empty: no drop
                self.forwards += len(chunk)
                for drop, (r, c) in zip(drops.tolist(), chunk):
                    drop_sum[r : r + self.window, c : c + self.window] += drop
                    count[r : r + self.window, c : c + self.window] += 1
            importance = drop_sum / count.clamp_min(1)
            peak = float(importance.max())
            maps.append((importance / peak if peak > 0 else importance)[None])
        return torch.stack(maps)  # (B, 1, H, W)
