"""UNets (2D, or 3D with ``spatial_dims`` 3) for the utility (segmentation) and the noise (explainer) models, by
named preset.

Every preset is the authors' UNet: per level two 3x3 conv + BatchNorm + ReLU, max-pool down, nearest
up-sampling + conv up, skip concatenation, 1x1 conv to logits. :class:`LevelUNet` builds it from MONAI's
``BasicUNet`` blocks (``TwoConv``, ``Down``, ``UpCat``) with any number of levels; at 4 down-samplings
it has exactly ``BasicUNet``'s layers. (MONAI's ``UNet``, with strided convolutions and residual units,
collapsed to a constant output within 40 Adam steps on pancreas slices here; this layout learned.)

==========  ======================  ==============  =============================================
preset      channels per level      downsamplings   use
==========  ======================  ==============  =============================================
``paper``   64, 128, 256, 512, 1024  4              the authors' utility (34.5M params in their code)
``demo``    16, 32, 64, 128, 256     4              utility for the CPU demo (the shape of ``large``)
``small``   16, 32, 64               2              noise model shapes; a utility of the same
``medium``  16, 32, 64, 128          3              shape can initialise a noise model
``large``   16, 32, 64, 128, 256     4              ("pretrained" variant)
==========  ======================  ==============  =============================================

Inputs must have H and W divisible by 2 ** downsamplings (16 for 4 down-samplings);
``count_parameters(build_unet(p))`` gives the real sizes (docs/training.md lists them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from monai.networks.layers.factories import Conv
from monai.networks.nets.basic_unet import Down, TwoConv, UpCat

from pipeline.errors import ConfigError


class LevelUNet(torch.nn.Module):
    """UNet with ``len(channels) - 1`` down-samplings, from MONAI ``BasicUNet`` blocks.

    Args:
        spatial_dims: 2 for slices (3 works too).
        in_channels: input channels.
        out_channels: output logit channels.
        channels: feature channels per level, top first, e.g. (16, 32, 64) for two down-samplings.
        act: activation (MONAI name or (name, args)).
        norm: normalisation (MONAI name or (name, args)).
        dropout: dropout probability in every two-conv block.
        upsample: ``nontrainable`` (interpolation + conv, the authors'), ``deconv`` or ``pixelshuffle``.
        interp_mode: interpolation of ``nontrainable`` up-sampling (``nearest`` as the authors).

    Shapes: (B, in_channels, H, W) -> (B, out_channels, H, W), H and W divisible by
    ``2 ** (len(channels) - 1)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        channels: tuple[int, ...],
        act: str | tuple = ("relu", {"inplace": True}),
        norm: str | tuple = ("batch", {"affine": True}),
        dropout: float = 0.0,
        upsample: str = "nontrainable",
        interp_mode: str = "nearest",
    ) -> None:
        super().__init__()
        if len(channels) < 2 or any(c < 1 for c in channels):
            raise ConfigError(f"channels needs >= 2 positive entries (top level first), got {tuple(channels)}.")
        up_options = {"upsample": upsample, "interp_mode": interp_mode, "align_corners": None if interp_mode == "nearest" else True}
        self.downsamplings = len(channels) - 1
        self.encoder_in = TwoConv(spatial_dims, in_channels, channels[0], act, norm, True, dropout)
        self.downs = torch.nn.ModuleList(
            Down(spatial_dims, channels[i - 1], channels[i], act, norm, True, dropout) for i in range(1, len(channels))
        )
        self.ups = torch.nn.ModuleList(
            UpCat(spatial_dims, channels[i], channels[i - 1], channels[i - 1], act, norm, True, dropout,
                  halves=i > 1, **up_options)
            for i in range(len(channels) - 1, 0, -1)
        )
        self.final_conv = Conv["conv", spatial_dims](channels[0], out_channels, kernel_size=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = [self.encoder_in(image)]  # (B, c0, H, W)
        for down in self.downs:
            features.append(down(features[-1]))  # (B, c_i, H / 2**i, W / 2**i)
        decoded = features.pop()
        for up in self.ups:
            decoded = up(decoded, features.pop())  # up-sample x2, concat the skip, two convs
        return self.final_conv(decoded)  # (B, out_channels, H, W) logits


@dataclass(frozen=True)
class NetworkPreset:
    """Shape of a preset: feature channels per level, top level first."""

    channels: tuple[int, ...]

    @property
    def downsamplings(self) -> int:
        return len(self.channels) - 1


NETWORK_PRESETS: dict[str, NetworkPreset] = {
    "paper": NetworkPreset((64, 128, 256, 512, 1024)),
    "demo": NetworkPreset((16, 32, 64, 128, 256)),
    "small": NetworkPreset((16, 32, 64)),
    "medium": NetworkPreset((16, 32, 64, 128)),
    "large": NetworkPreset((16, 32, 64, 128, 256)),
}


def get_preset(preset: str) -> NetworkPreset:
    """The :class:`NetworkPreset` called ``preset``; ValueError naming the known ones otherwise."""
    if preset not in NETWORK_PRESETS:
        from pipeline.errors import ConfigError

        raise ConfigError(f"unknown network preset {preset!r}; choose one of {sorted(NETWORK_PRESETS)}.")
    return NETWORK_PRESETS[preset]


def build_unet(
    preset: str = "demo",
    in_channels: int = 1,
    out_channels: int = 1,
    spatial_dims: int = 2,
    dropout: float = 0.0,
) -> torch.nn.Module:
    """Build the UNet of a named preset.

    Args:
        preset: one of ``NETWORK_PRESETS`` (see the module table).
        in_channels: input channels: 1 for a CT slice; 3 for e.g. stacked MRI sequences (FLAIR/T1/T2).
        out_channels: output logit channels (1: pancreas vs background, read through a sigmoid).
        spatial_dims: 2 (slices); 3 builds the same shape in 3D.
        dropout: dropout probability inside each level.

    Returns:
        A network mapping (B, in_channels, H, W) to logits (B, out_channels, H, W), H and W divisible
        by ``2 ** get_preset(preset).downsamplings``.

    Raises:
        ValueError: unknown preset or non-positive channel counts.
    """
    shape = get_preset(preset)
    if in_channels < 1 or out_channels < 1:
        raise ConfigError(f"in_channels and out_channels must be >= 1, got {in_channels} and {out_channels}.")
    if spatial_dims not in (2, 3):
        raise ConfigError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout}.")
    return LevelUNet(spatial_dims, in_channels, out_channels, shape.channels, dropout=dropout)


def count_parameters(network: torch.nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in network.parameters() if p.requires_grad)


UNET_TARGET = "pipeline.networks.build_unet"
TRUSTED_TARGETS = ("pipeline.networks.", "monai.networks.nets.")  # a checkpoint's record may only name these


def preset_config(preset: str, in_channels: int = 1, out_channels: int = 1) -> dict:
    """The network record of a preset UNet: ``{"target": "pipeline.networks.build_unet", "args": {...}}``."""
    get_preset(preset)
    return {"target": UNET_TARGET, "args": {"preset": preset, "in_channels": int(in_channels), "out_channels": int(out_channels)}}


def build_network(config: dict) -> torch.nn.Module:
    """Build any network from its record ``{"target": "<importable callable>", "args": {...}}``.

    The record is plain data (JSON in the bundle configs, ``meta["network_config"]`` in checkpoints),
    so a checkpoint says which network its weights belong to and every later step rebuilds it: our
    preset UNets (``pipeline.networks.build_unet``) or any MONAI network, e.g.
    ``{"target": "monai.networks.nets.SegResNet", "args": {"spatial_dims": 2, "in_channels": 1,
    "out_channels": 1, "init_filters": 8}}``. (Model-zoo bundles write ``network_def`` with
    ``_target_``; ConfigParser instantiates such a dict wherever it appears, so it could not travel as
    data inside a checkpoint's meta. The configs build ``network_def`` from this record instead.)

    Raises:
        ConfigError: not a record, an unimportable target, or arguments the target refuses.
    """
    from pydoc import locate

    from pipeline.errors import ConfigError

    if not isinstance(config, dict) or not isinstance(config.get("target"), str) or not isinstance(config.get("args", {}), dict):
        raise ConfigError(f"a network config is {{'target': 'module.Class', 'args': {{...}}}}, got {config!r}.")
    if not str(config["target"]).startswith(TRUSTED_TARGETS):
        raise ConfigError(f"network target {config['target']!r} is not a network of pipeline.networks or "
                          "monai.networks.nets; other code is never called from a config or a checkpoint record.")
    target = locate(config["target"])
    is_network = isinstance(target, type) and issubclass(target, torch.nn.Module)
    if target is None or not (is_network or target is build_unet):
        raise ConfigError(f"network target {config['target']!r} cannot be imported; use e.g. 'monai.networks.nets.SegResNet' "
                          "or 'pipeline.networks.build_unet'.")
    try:
        network = target(**config.get("args", {}))
    except ConfigError:
        raise
    except (TypeError, ValueError, AssertionError) as err:
        raise ConfigError(f"network {config['target']} refused its args {config.get('args')}: {err}") from err
    return network


def network_name(config: dict) -> str:
    """Short name of a network record: the preset of a preset UNet, else the class name (``SegResNet``)."""
    if config.get("target") == UNET_TARGET:
        preset = str(config.get("args", {}).get("preset", "demo"))
        get_preset(preset)  # refused here, before any run folder exists
        return preset
    return str(config.get("target", "network")).rsplit(".", 1)[-1]
