"""Network presets: shapes, channels, the paper preset's size, errors."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import BasicUNet

from pipeline.networks import NETWORK_PRESETS, build_unet, count_parameters


@pytest.mark.parametrize("preset", ["demo", "small", "medium", "large"])
def test_logits_have_the_input_size(preset: str) -> None:
    network = build_unet(preset).eval()
    with torch.no_grad():
        logits = network(torch.rand(2, 1, 32, 48))
    assert logits.shape == (2, 1, 32, 48)


def test_multichannel_input_by_config() -> None:
    network = build_unet("small", in_channels=3).eval()  # e.g. FLAIR / T1 / T2 stacked
    with torch.no_grad():
        assert network(torch.rand(1, 3, 16, 16)).shape == (1, 1, 16, 16)


def test_downsamplings_per_preset() -> None:
    assert {name: p.downsamplings for name, p in NETWORK_PRESETS.items()} == {
        "paper": 4, "demo": 4, "small": 2, "medium": 3, "large": 4}


def test_paper_preset_has_basic_unet_layers() -> None:
    reference = BasicUNet(2, 1, 1, features=(64, 128, 256, 512, 1024, 64), upsample="nontrainable")
    assert count_parameters(build_unet("paper")) == count_parameters(reference) == 28_982_017


def test_noise_shapes_grow_with_depth() -> None:
    sizes = [count_parameters(build_unet(p)) for p in ("small", "medium", "large")]
    assert sizes == sorted(sizes) and sizes[0] > 10_000


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown network preset 'huge'"):
        build_unet("huge")
    with pytest.raises(ValueError, match="in_channels and out_channels must be >= 1"):
        build_unet("small", in_channels=0)
