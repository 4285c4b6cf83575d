"""Occlusion sensitivity with true dice: hide a window, measure how much the utility's segmentation changes.

A window slides over the slice (15 x 15, stride 2, as the U-Noise paper); its pixels take the ``fill``:
an infill of :mod:`pipeline.noise.infill` (``blur`` by default, ``blur:8``, ``mean``, ``noise``, ``floor``) or a
constant. The evaluation computes one occlusion map per infill it judges with, so occlusion is scored
with its own perturbation wherever every other map is. A pixel's importance is the mean dice drop of the utility's binary prediction
against its unoccluded prediction over the windows covering it (the authors scored raw logits). Windows
go through the utility in batches.
"""

from __future__ import annotations

import itertools

import torch

from pipeline.errors import ConfigError
from pipeline.noise.infill import DEFAULT_BLUR_SIGMA, fill_values
from pipeline.noise.regions import compute_dice
from pipeline.noise import freeze


class OcclusionMap:
    """Occlusion sensitivity: mean dice drop of the utility over the windows covering each pixel.

    Args:
        utility: the segmentation network (frozen here).
        window: window side in pixels (paper: 15).
        stride: window step in pixels (paper: 2).
        fill: an infill spec other than ``road`` (``blur`` = the slice blurred with ``blur_sigma`` pixels;
            ``mean`` / ``noise`` use the body statistics when the caller passes ``body``) or a constant (0 = the
            window floor).
        batch_size: occluded copies per utility forward (16: larger batches ran 2x slower on 2 CPU cores).
        blur_sigma: Gaussian sigma of the ``blur`` fill, pixels.
    """

    uses_body = True  # the evaluation passes each slice's body mask (the mean / noise fills' statistics)

    def __init__(self, utility: torch.nn.Module, window: int = 15, stride: int = 2, fill: float | str = "blur",
                 batch_size: int = 16, blur_sigma: float = DEFAULT_BLUR_SIGMA, seed: int = 0) -> None:
        if window < 1 or stride < 1 or batch_size < 1:
            raise ConfigError(f"window, stride and batch_size must be >= 1, got {window}, {stride}, {batch_size}.")
        if isinstance(fill, str):
            fill_values(torch.zeros(1, 1, 4, 4), fill, blur_sigma=blur_sigma)  # refuses an unknown fill or road
        self.utility = freeze(utility)
        self.window, self.stride, self.fill, self.batch_size = window, stride, fill, batch_size
        self.blur_sigma, self.seed = blur_sigma, seed
        self.forwards = 0  # utility forward passes (items), for the cost table

    def positions(self, *sizes: int) -> list[tuple[int, ...]]:
        """Corners of the windows (the last window touches the border), over every spatial axis: (H, W) or (X, Y, Z)."""
        starts = [sorted({*range(0, max(1, size - self.window + 1), self.stride), max(0, size - self.window)})
                  for size in sizes]
        return list(itertools.product(*starts))

    def _box(self, corner: tuple[int, ...]) -> tuple[slice, ...]:
        return tuple(slice(start, start + self.window) for start in corner)

    @torch.inference_mode()
    def __call__(self, image: torch.Tensor, label: torch.Tensor | None = None,
                 spacing: torch.Tensor | None = None, body: torch.Tensor | None = None) -> torch.Tensor:
        maps = []
        for index, slice_ in enumerate(image):  # (C, H, W), or a volume (C, X, Y, Z): the window is a square or a cube
            sizes = tuple(slice_.shape[1:])
            clean = (self.utility(slice_[None]) > 0).float()  # (1, 1, ...)
            if isinstance(self.fill, str):
                region = None if body is None else body[index : index + 1]
                fill = fill_values(slice_[None], self.fill, region, torch.Generator().manual_seed(self.seed),
                                   self.blur_sigma)[0]
            else:
                fill = torch.full_like(slice_, float(self.fill))
            drop_sum = torch.zeros(sizes)
            count = torch.zeros(sizes)
            corners = self.positions(*sizes)
            for start in range(0, len(corners), self.batch_size):
                chunk = corners[start : start + self.batch_size]
                occluded = slice_[None].repeat(len(chunk), *([1] * slice_.ndim))  # (N, C, ...)
                for i, corner in enumerate(chunk):
                    box = self._box(corner)
                    occluded[(i, slice(None), *box)] = fill[(slice(None), *box)]
                pred = (self.utility(occluded) > 0).float()  # (N, 1, ...)
                drops = 1.0 - torch.nan_to_num(compute_dice(pred, clean.expand_as(pred)), nan=1.0)  # (N,); both empty: no drop
                self.forwards += len(chunk)
                for drop, corner in zip(drops.tolist(), chunk):
                    box = self._box(corner)
                    drop_sum[box] += drop
                    count[box] += 1
            importance = drop_sum / count.clamp_min(1)
            peak = float(importance.max())
            maps.append((importance / peak if peak > 0 else importance)[None])
        return torch.stack(maps)  # (B, 1, H, W) or (B, 1, X, Y, Z)
