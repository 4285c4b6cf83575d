"""Explainers to compare U-Noise with, all with one call: ``explainer(image, label=None) -> importance``.

``image`` is a batch of CT slices windowed to [0, 1], shape (B, C, H, W); the result is (B, 1, H, W) in
[0, 1], 1 = most important. ``label`` (B, 1, H, W) is used by the oracle only.

- :class:`UNoiseMap`: 1 - sigmoid(noise model), one forward pass.
- :class:`GradCAMMap`: MONAI ``GradCAM`` on the utility; the target is the mean pancreas logit over the
  utility's own predicted region (the authors back-propagated one ground-truth pixel's logit).
- :class:`OcclusionMap`: a window slides over the slice (15 x 15, stride 2, as the paper); a pixel's
  importance is the mean drop of the utility's true dice against its unoccluded prediction over the
  windows covering it (the authors scored raw logits). Windows go through the utility in batches.
- :class:`RandomMap` and :class:`OracleMap`: the floor and the ceiling.
"""

from __future__ import annotations

import torch
from monai.visualize import GradCAM

from pipeline.metrics import compute_dice
from pipeline.noise import apply_tolerance, freeze, importance_from_tolerance


class UNoiseMap:
    """U-Noise importance: 1 - sigmoid(noise_net(image))."""

    def __init__(self, noise_net: torch.nn.Module) -> None:
        self.noise_net = freeze(noise_net)

    def __call__(self, image: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        with torch.inference_mode():
            return importance_from_tolerance(apply_tolerance(self.noise_net(image)))  # (B, 1, H, W)


class PancreasScore(torch.nn.Module):
    """The utility as a one-score "classifier" for CAM methods: mean pancreas logit over its predicted region.

    Slices where the utility predicts no pancreas score the mean logit of the whole slice. Always in eval
    mode: MONAI's CAM restores the wrapper's previous mode after its forward, and a wrapper left in train
    mode would switch the shared utility's BatchNorm to batch statistics for everything run after it.
    """

    def __init__(self, utility: torch.nn.Module) -> None:
        super().__init__()
        self.utility = utility
        self.eval()

    def train(self, mode: bool = True) -> PancreasScore:
        return super().train(False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits = self.utility(image)  # (B, 1, H, W)
        region = (logits > 0).float().detach()
        empty = region.flatten(1).sum(1) == 0  # (B,)
        region[empty] = 1.0
        return ((logits * region).flatten(1).sum(1) / region.flatten(1).sum(1))[:, None]  # (B, 1)


class GradCAMMap:
    """Grad-CAM (MONAI) of the pancreas score at ``target_layer`` of the utility.

    Args:
        utility: the segmentation network (not modified; its parameters are not updated).
        target_layer: module name inside the utility; default ``downs.3``, the bottleneck of 4-level
            presets (``downs.1`` for ``small``, ``downs.2`` for ``medium``).
    """

    def __init__(self, utility: torch.nn.Module, target_layer: str = "downs.3") -> None:
        names = {name for name, _ in utility.named_modules()}
        if target_layer not in names:
            options = sorted(n for n in names if n.startswith("downs.") and n.count(".") == 1)
            raise ValueError(f"target layer {target_layer!r} is not in the utility; choose one of {options}.")
        utility.eval()
        self.cam = GradCAM(nn_module=PancreasScore(utility), target_layers=f"utility.{target_layer}")

    def __call__(self, image: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        with torch.enable_grad():  # gradients w.r.t. activations only: works with frozen weights too
            maps = self.cam(image.detach().clone().requires_grad_(True), class_idx=0)  # (B, 1, H, W) in [0, 1]
        return maps.detach().clamp(0.0, 1.0)


class OcclusionMap:
    """Occlusion sensitivity: mean dice drop of the utility over the windows covering each pixel.

    Args:
        utility: the segmentation network.
        window: window side in pixels (paper: 15).
        stride: window step in pixels (paper: 2).
        fill: value of occluded pixels (0 = the window floor).
        batch_size: occluded copies per utility forward (16: larger batches ran 2x slower on 2 CPU cores).
    """

    def __init__(self, utility: torch.nn.Module, window: int = 15, stride: int = 2, fill: float = 0.0,
                 batch_size: int = 16) -> None:
        if window < 1 or stride < 1 or batch_size < 1:
            raise ValueError(f"window, stride and batch_size must be >= 1, got {window}, {stride}, {batch_size}.")
        self.utility = freeze(utility)
        self.window, self.stride, self.fill, self.batch_size = window, stride, fill, batch_size
        self.forwards = 0  # utility forward passes (items), for the cost table

    def positions(self, height: int, width: int) -> list[tuple[int, int]]:
        """Top-left corners of the windows (the last window touches the border)."""
        rows = sorted({*range(0, max(1, height - self.window + 1), self.stride), max(0, height - self.window)})
        cols = sorted({*range(0, max(1, width - self.window + 1), self.stride), max(0, width - self.window)})
        return [(r, c) for r in rows for c in cols]

    @torch.inference_mode()
    def __call__(self, image: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        maps = []
        for slice_ in image:  # (C, H, W)
            height, width = slice_.shape[-2:]
            clean = (self.utility(slice_[None]) > 0).float()  # (1, 1, H, W)
            drop_sum = torch.zeros(height, width)
            count = torch.zeros(height, width)
            corners = self.positions(height, width)
            for start in range(0, len(corners), self.batch_size):
                chunk = corners[start : start + self.batch_size]
                occluded = slice_[None].repeat(len(chunk), 1, 1, 1)  # (N, C, H, W)
                for i, (r, c) in enumerate(chunk):
                    occluded[i, :, r : r + self.window, c : c + self.window] = self.fill
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


class RandomMap:
    """Uniform random importance, seeded: the floor any explanation must beat."""

    def __init__(self, seed: int = 0) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, image: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        return torch.rand((image.shape[0], 1, *image.shape[-2:]), generator=self.generator)


class OracleMap:
    """The label as an explanation: 1 on the pancreas, decaying with distance outside (the ceiling).

    Args:
        decay_pixels: distance (pixels) at which importance outside the pancreas falls to 1/e.
    """

    def __init__(self, decay_pixels: float = 4.0) -> None:
        if decay_pixels <= 0:
            raise ValueError(f"decay_pixels must be > 0, got {decay_pixels}.")
        self.decay = decay_pixels

    def __call__(self, image: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        if label is None:
            raise ValueError("the oracle map needs the label: call it as explainer(image, label).")
        from scipy import ndimage

        maps = []
        for mask in label[:, 0].detach().cpu().numpy() > 0.5:  # (H, W)
            if not mask.any():
                maps.append(torch.full(mask.shape, 0.5))
                continue
            distance = ndimage.distance_transform_edt(~mask)
            maps.append(torch.exp(-torch.as_tensor(distance, dtype=torch.float32) / self.decay))
        return torch.stack(maps)[:, None]  # (B, 1, H, W)
