"""Explainers and null maps: one signature, [0, 1] maps, each one's defining property."""

from __future__ import annotations

import pytest
import torch

from pipeline.explain import (
    GradCAMMap,
    OcclusionMap,
    OracleMap,
    PancreasScore,
    PredictionLogitsMap,
    RandomMap,
    SaliencyMap,
    SegmentationMap,
    SmoothGradMap,
    UNoiseMap,
)
from pipeline.networks import build_unet


def bright_segmenter() -> torch.nn.Module:
    """A utility whose logits are 20 * (x - 0.5): it segments the bright pixels."""
    conv = torch.nn.Conv2d(1, 1, kernel_size=1)
    with torch.no_grad():
        conv.weight.fill_(20.0)
        conv.bias.fill_(-10.0)
    return conv


def square_image(size: int = 32) -> torch.Tensor:
    image = torch.full((1, 1, size, size), 0.2)
    image[..., 12:18, 12:18] = 0.9
    return image


@pytest.mark.parametrize("fill", ["blur", 0.0])
def test_occlusion_is_high_on_the_segmented_object_and_zero_far_away(fill: float | str) -> None:
    explainer = OcclusionMap(bright_segmenter(), window=5, stride=2, fill=fill, blur_sigma=2.0)
    importance = explainer(square_image())
    assert importance.shape == (1, 1, 32, 32)
    assert float(importance[0, 0, 14, 14]) > 0.5 and float(importance[0, 0, 0, 0]) == 0.0
    assert float(importance.max()) == pytest.approx(1.0)
    assert explainer.forwards == len(explainer.positions(32, 32))


def test_occlusion_windows_cover_the_borders() -> None:
    corners = OcclusionMap(bright_segmenter(), window=15, stride=2).positions(32, 33)
    assert (0, 0) in corners and (17, 18) in corners  # the last window ends at the border


def test_gradcam_gives_unit_range_maps_of_the_input_size() -> None:
    torch.manual_seed(0)
    maps = GradCAMMap(build_unet("small"), target_layer="downs.1")(torch.rand(2, 1, 32, 32))
    assert maps.shape == (2, 1, 32, 32) and float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0


def test_gradcam_works_on_a_frozen_utility() -> None:
    from pipeline.noise import freeze

    maps = GradCAMMap(freeze(build_unet("small")), target_layer="downs.1")(torch.rand(1, 1, 32, 32))
    assert maps.shape == (1, 1, 32, 32)


def test_gradcam_leaves_the_utility_in_eval_mode() -> None:
    utility = build_unet("small").eval()
    GradCAMMap(utility, target_layer="downs.1")(torch.rand(1, 1, 32, 32))
    assert not any(module.training for module in utility.modules())


def test_pancreas_score_averages_logits_over_the_predicted_region() -> None:
    score = PancreasScore(bright_segmenter())(square_image())
    assert score.shape == (1, 1) and float(score) == pytest.approx(20 * 0.9 - 10)


def test_random_map_is_seeded() -> None:
    image = torch.zeros(2, 1, 8, 8)
    assert torch.equal(RandomMap(3)(image), RandomMap(3)(image))
    assert not torch.equal(RandomMap(3)(image), RandomMap(4)(image))


def test_oracle_is_one_on_the_pancreas_and_decays_outside_in_mm() -> None:
    label = torch.zeros(1, 1, 16, 16)
    label[..., 5:8, 5:8] = 1
    maps = OracleMap(decay_mm=2.0)(torch.zeros(1, 1, 16, 16), label)
    assert float(maps[0, 0, 6, 6]) == 1.0 and float(maps[0, 0, 15, 15]) < 0.01
    coarse = OracleMap(decay_mm=2.0)(torch.zeros(1, 1, 16, 16), label, torch.tensor([[2.0, 2.0]]))
    assert float(coarse[0, 0, 6, 10]) == pytest.approx(float(maps[0, 0, 6, 10]) ** 2, rel=1e-5)  # twice the mm
    with pytest.raises(ValueError, match="needs the label"):
        OracleMap()(torch.zeros(1, 1, 4, 4))


def test_segmentation_map_follows_the_prediction_not_the_label() -> None:
    image = square_image()
    wrong_label = torch.zeros(1, 1, 32, 32)
    wrong_label[..., 0:3, 0:3] = 1
    maps = SegmentationMap(bright_segmenter(), decay_mm=3.0)(image, wrong_label, torch.tensor([[1.0, 1.0]]))
    assert torch.equal(maps[image > 0.5], torch.ones(36))  # 1 on the predicted square
    assert float(maps[0, 0, 14, 20]) == pytest.approx(float(torch.exp(torch.tensor(-3.0 / 3.0))), rel=1e-5)  # 3 mm away
    assert float(maps[0, 0, 1, 1]) < 0.01


def test_prediction_logits_map_is_the_scaled_logit_magnitude() -> None:
    image = square_image()
    maps = PredictionLogitsMap(bright_segmenter())(image)
    logits = (20 * image - 10).abs()
    assert torch.allclose(maps, logits / logits.max())


@pytest.mark.parametrize("method", [SaliencyMap, SmoothGradMap])
def test_gradient_maps_are_unit_range_and_signed_attribution_keeps_the_sign(method: type) -> None:
    torch.manual_seed(0)
    utility = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 1, 3, padding=1))
    explainer = method(utility) if method is SaliencyMap else method(utility, samples=4)
    image = torch.rand(2, 1, 16, 16)
    maps, signed = explainer(image), explainer.attribution(image)
    assert maps.shape == (2, 1, 16, 16) and float(maps.min()) >= 0 and float(maps.amax(dim=(1, 2, 3)).min()) == pytest.approx(1.0)
    assert signed.shape == maps.shape and float(signed.min()) < 0 < float(signed.max())


def test_saliency_is_the_gradient_of_the_pancreas_score() -> None:
    utility = bright_segmenter()
    image = square_image()
    maps = SaliencyMap(utility)(image)
    # the score is the mean logit over the predicted square: its gradient is 20 / 36 on the square, 0 elsewhere
    assert torch.allclose(maps[image > 0.5], torch.ones(36)) and float(maps[image < 0.5].abs().max()) == 0.0


def test_unoise_map_is_one_minus_tolerance() -> None:
    class Constant(torch.nn.Module):
        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return torch.zeros_like(image)  # logits 0 -> B = 0.5

    assert torch.allclose(UNoiseMap(Constant())(torch.rand(1, 1, 4, 4)), torch.full((1, 1, 4, 4), 0.5))
