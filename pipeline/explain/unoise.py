"""U-Noise as an explainer: importance = 1 - sigmoid(noise model), one forward pass per slice."""

from __future__ import annotations

import torch

from pipeline.noise import apply_tolerance, freeze, importance_from_tolerance


class UNoiseMap:
    """U-Noise importance: 1 - sigmoid(noise_net(image)), (B, 1, H, W) in [0, 1]."""

    def __init__(self, noise_net: torch.nn.Module) -> None:
        self.noise_net = freeze(noise_net)

    def __call__(self, image: torch.Tensor, label: torch.Tensor | None = None,
                 spacing: torch.Tensor | None = None) -> torch.Tensor:
        with torch.inference_mode():
            return importance_from_tolerance(apply_tolerance(self.noise_net(image)))  # (B, 1, H, W)
