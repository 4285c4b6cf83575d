"""A CT denoiser: MONAI's ``UNet`` predicting the noise of its input, which is then taken away (residual learning).

It takes and gives (B, 1, X, Y) in HU / ``hu_scale`` (the training config's, recorded in the checkpoint's meta), so
its input is not clipped to a window: Noise2Noise needs targets whose noise has zero mean, which clipping breaks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import UNet


class ResidualDenoiser(torch.nn.Module):
    """``x - gain(UNet(x))``: the UNet (MONAI's, residual units) learns the noise; ``gain``, a 1x1 convolution that
    starts at zero, makes the untrained network the identity (a denoiser that removes nothing, not random noise).

    Args:
        spatial_dims: 2 (slices) or 3 (patches).
        channels: feature maps per level (each level after the first halves the size).
        num_res_units: residual units per block.
    """

    def __init__(self, spatial_dims: int = 2, channels: Sequence[int] = (16, 32, 64, 128), num_res_units: int = 2) -> None:
        super().__init__()
        channels = [int(c) for c in channels]
        self.noise = UNet(spatial_dims=int(spatial_dims), in_channels=1, out_channels=1, channels=channels,
                          strides=[2] * (len(channels) - 1), num_res_units=int(num_res_units))
        conv = torch.nn.Conv3d if int(spatial_dims) == 3 else torch.nn.Conv2d
        self.gain = conv(1, 1, kernel_size=1)
        torch.nn.init.zeros_(self.gain.weight)
        torch.nn.init.zeros_(self.gain.bias)

    @property
    def divisor(self) -> int:
        """What the input's size must be a multiple of."""
        return 2 ** (len(self.noise.channels) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.gain(self.noise(x))


__all__ = ["ResidualDenoiser"]
