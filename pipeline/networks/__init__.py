"""Networks and how they are stored and loaded: every model the project runs, ours or the user's.

Modules: ``denoiser`` (a residual MONAI UNet that removes CT noise), ``presets`` (the UNet presets and the network
records a checkpoint may name), ``probabilistic`` (a
Probabilistic U-Net sampling several plausible segmentations, and its ELBO loss), ``checkpoints``
(atomic saves, safe loads, the checks a checkpoint must pass), ``utility`` (the explained class's logit
of any segmentation network), ``zoo`` (a utility from our checkpoint, a MONAI model-zoo bundle or a
TorchScript file), ``zoo_chain`` (a bundle's own preprocessing and inferer). Checkpoint records name
the builders as ``pipeline.networks.<name>``.
"""

from __future__ import annotations

from pipeline.networks.denoiser import ResidualDenoiser
from pipeline.networks.presets import (NETWORK_PRESETS, TRUSTED_TARGETS, UNET_TARGET, LevelUNet, NetworkPreset, build_network,
                                       build_unet, count_parameters, get_preset, network_name, preset_config)
from pipeline.networks.probabilistic import ProbabilisticUNet, ProbabilisticUNetLoss, UncertaintyView, as_sampler, utility_view

__all__ = [
    "NETWORK_PRESETS",
    "TRUSTED_TARGETS",
    "UNET_TARGET",
    "LevelUNet",
    "NetworkPreset",
    "ProbabilisticUNet",
    "ResidualDenoiser",
    "ProbabilisticUNetLoss",
    "UncertaintyView",
    "as_sampler",
    "utility_view",
    "build_network",
    "build_unet",
    "count_parameters",
    "get_preset",
    "network_name",
    "preset_config",
]
