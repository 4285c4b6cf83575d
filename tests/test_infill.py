"""Infills for hidden pixels: each keeps what is not hidden and fills what is in its own way."""

from __future__ import annotations

import pytest
import torch

from pipeline.noise.infill import INFILLS, apply_blur, apply_infill, apply_linear_imputation, draw_fill, fill_values, parse_infill


def _hole(batch: int = 2, size: int = 24) -> torch.Tensor:
    hidden = torch.zeros(batch, 1, size, size, dtype=torch.bool)
    hidden[..., 6:18, 8:16] = True
    return hidden


@pytest.mark.parametrize("infill", INFILLS)
def test_visible_pixels_keep_their_values(infill: str) -> None:
    image = torch.rand(2, 1, 24, 24, generator=torch.Generator().manual_seed(1))
    hidden = _hole()
    filled = apply_infill(image, hidden, infill, generator=torch.Generator().manual_seed(0))
    assert filled.shape == image.shape and torch.equal(filled[~hidden.expand_as(image)], image[~hidden.expand_as(image)])
    assert torch.equal(apply_infill(image, torch.zeros_like(hidden), infill), image)


def test_blur_of_a_constant_is_the_constant() -> None:
    assert torch.allclose(apply_blur(torch.full((1, 2, 20, 20), 0.3), 3.0), torch.full((1, 2, 20, 20), 0.3))


def test_floor_and_mean_use_zero_and_the_body_mean() -> None:
    image = torch.zeros(1, 1, 10, 10)
    body = torch.zeros(1, 1, 10, 10)
    body[..., 2:8, 2:8] = 1
    image[body > 0] = 0.6
    hidden = (body > 0) & (torch.arange(10).view(1, 1, 1, 10) < 5)
    assert float(apply_infill(image, hidden, "floor")[hidden].max()) == 0.0
    assert torch.allclose(apply_infill(image, hidden, "mean", body)[hidden], torch.tensor(0.6))  # air left out of the mean


def test_linear_imputation_restores_a_ramp() -> None:
    ramp = torch.linspace(0, 1, 24).view(1, 1, 1, 24).expand(1, 1, 24, 24).clone()
    hidden = _hole(batch=1)
    filled = apply_linear_imputation(ramp, hidden)
    assert float((filled - ramp).abs().max()) < 1e-3  # a linear function is its neighbours' weighted mean


def test_road_adds_seeded_noise_to_the_imputation() -> None:
    image, hidden = torch.rand(1, 1, 24, 24), _hole(batch=1)
    first = apply_infill(image, hidden, "road", generator=torch.Generator().manual_seed(3))
    again = apply_infill(image, hidden, "road", generator=torch.Generator().manual_seed(3))
    plain = apply_linear_imputation(image, hidden)
    assert torch.equal(first, again)
    assert 0.005 < float((first - plain)[hidden].std()) < 0.02  # road_noise 0.01


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="infill 'checkerboard' is not one of"):
        apply_infill(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4, dtype=torch.bool), "checkerboard")
    for spec in ("blur:0", "blur:-2", "blur:wide", "mean:3"):
        with pytest.raises(ValueError, match=f"infill '{spec}'"):
            parse_infill(spec)
    with pytest.raises(ValueError, match="cannot be drawn per slice"):
        fill_values(torch.zeros(1, 1, 4, 4), "road")
    with pytest.raises(ValueError, match="does not match image"):
        apply_infill(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 8, 8, dtype=torch.bool), "floor")
    with pytest.raises(ValueError, match="sigma must be > 0"):
        apply_blur(torch.zeros(1, 1, 4, 4), 0.0)


def test_blur_spec_names_its_sigma() -> None:
    image = torch.rand(2, 1, 24, 24)
    hidden = torch.ones(2, 1, 24, 24, dtype=torch.bool)
    assert parse_infill("blur") == ("blur", 4.0) and parse_infill("blur:8") == ("blur", 8.0)
    assert torch.allclose(apply_infill(image, hidden, "blur:8"), apply_blur(image, 8.0))
    assert torch.allclose(apply_infill(image, hidden, "blur", blur_sigma=8.0), apply_blur(image, 8.0))
    assert not torch.allclose(apply_infill(image, hidden, "blur:8"), apply_blur(image, 4.0))


def test_draw_fill_gives_each_slice_one_of_the_infills() -> None:
    image = torch.rand(12, 1, 16, 16)
    body = torch.zeros(12, 1, 16, 16)
    body[..., 2:14, 2:14] = 1
    infills = ["floor", "mean", "blur:8"]
    values, drawn = draw_fill(image, infills, body, torch.Generator().manual_seed(0))
    assert values.shape == image.shape and len(set(drawn.tolist())) > 1  # several infills in one batch
    for row, index in enumerate(drawn.tolist()):
        expected = fill_values(image[row : row + 1], infills[index], body[row : row + 1])
        assert torch.allclose(values[row : row + 1], expected)
    again, drawn_again = draw_fill(image, infills, body, torch.Generator().manual_seed(0))
    assert torch.equal(values, again) and torch.equal(drawn, drawn_again)  # seeded: repeatable
    _, per_step = draw_fill(image, infills, body, torch.Generator().manual_seed(0), per_slice=False)
    assert len(set(per_step.tolist())) == 1  # one infill for the batch


def test_mean_infill_uses_body_pixels_in_3d() -> None:
    volume = torch.zeros(1, 1, 8, 8, 4)
    body = torch.zeros(1, 1, 8, 8, 4)
    body[..., 2:6, 2:6, :] = 1
    volume[body > 0] = 0.6
    assert torch.allclose(fill_values(volume, "mean", body), torch.full_like(volume, 0.6))
