"""Grad-CAM's layer and the sanity check's decoder come from the module tree, for any 2D network."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import AttentionUnet, BasicUNet, SegResNet

from pipeline.errors import ConfigError
from pipeline.explain.gradient import GradCAMMap
from pipeline.explain.layers import find_decoder_prefixes, find_feature_layer
from pipeline.networks import build_unet


@pytest.mark.parametrize("preset, levels", [("small", 2), ("medium", 3), ("demo", 4)])
def test_level_unets_give_their_bottleneck_and_every_up_block(preset: str, levels: int) -> None:
    network = build_unet(preset)
    assert find_feature_layer(network) == f"downs.{levels - 1}"
    assert find_decoder_prefixes(network) == (*(f"ups.{i}" for i in range(levels)), "final_conv")


MONAI_NETWORKS = {
    "BasicUNet": (lambda: BasicUNet(spatial_dims=2, in_channels=1, out_channels=1, features=(8, 8, 16, 32, 64, 8)), "down_4", "upcat_"),
    "SegResNet": (lambda: SegResNet(spatial_dims=2, in_channels=1, out_channels=1, init_filters=8), "down_layers.3", "up_"),
    "AttentionUnet": (lambda: AttentionUnet(spatial_dims=2, in_channels=1, out_channels=1, channels=(8, 16, 32), strides=(2, 2)),
                      "model.1.submodule.1.submodule", "model."),
}


@pytest.mark.parametrize("name", sorted(MONAI_NETWORKS))
def test_monai_networks_get_a_bottleneck_a_decoder_and_a_grad_cam(name: str) -> None:
    build, layer, decoder_start = MONAI_NETWORKS[name]
    network = build()
    assert find_feature_layer(network) == layer
    decoder = find_decoder_prefixes(network)
    assert decoder[0].startswith(decoder_start)
    modules = dict(network.named_modules())
    assert all(sum(p.numel() for p in modules[prefix].parameters()) > 0 for prefix in decoder)
    assert not any(layer.startswith(prefix + ".") or layer == prefix for prefix in decoder)  # the encoder is not in it
    maps = GradCAMMap(network)(torch.rand(2, 1, 32, 32))
    assert maps.shape == (2, 1, 32, 32)


def test_an_unknown_grad_cam_layer_names_the_options() -> None:
    expected = r"gradcam_layer 'encoder.9' is not a module of the utility; .*'downs', .*default: the deepest feature map, 'downs.1'"
    with pytest.raises(ConfigError, match=expected):
        GradCAMMap(build_unet("small"), "encoder.9")


def test_sanity_decoder_names_are_checked_and_a_string_is_one_name() -> None:
    from pipeline.explain.layers import check_prefixes

    network = build_unet("small")
    assert check_prefixes(network, "ups") == ("ups",)
    with pytest.raises(ConfigError, match=r"sanity_decoder 'upz' is not a module with weights of LevelUNet; its top-level modules are"):
        check_prefixes(network, ["ups", "upz"])


def test_a_squeeze_and_excitation_pool_is_no_feature_map() -> None:
    from monai.networks.blocks import ChannelSELayer

    network = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), ChannelSELayer(2, 8), torch.nn.MaxPool2d(2),
                                  torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.Upsample(scale_factor=2), torch.nn.Conv2d(8, 1, 1))
    assert find_feature_layer(network) == "2"  # the pooled map, not the SE block's 1 x 1 squeeze
