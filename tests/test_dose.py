"""Simulated lower dose: each noise model's level and texture, the chain's seeded insertion, and the denoiser's pairs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from pipeline.data import (Denoised, ImageDomainNoise, NoisyPairsd, ProjectionDomainNoise, SimulateDosed, build_noise_model,
                           water_cylinder)
from pipeline.errors import ConfigError
from pipeline.networks import ResidualDenoiser

FLAT = np.zeros((128, 128), np.float32)  # a flat 0 HU slab filling the slice: the noise alone is measured
SPACING = (2.0, 2.0)


def pooled_correlation(noise: np.ndarray, lag: int) -> float:
    """Correlation of pixels ``lag`` apart along rows, pooled over a stack of (N, X, Y) noise fields."""
    return float(np.corrcoef(noise[:, lag:, :].ravel(), noise[:, :-lag, :].ravel())[0, 1])


@pytest.mark.parametrize("correlation_mm", [0.0, 3.0])
def test_image_domain_std_follows_one_over_root_dose(correlation_mm):
    model = ImageDomainNoise(full_dose_std=20.0, correlation_mm=correlation_mm)
    rng = np.random.default_rng(0)
    for dose in (0.5, 0.25, 0.125):
        noise = np.stack([model.sample(FLAT, SPACING, dose, rng) for _ in range(4)])
        expected = 20.0 * math.sqrt(1 / dose - 1)  # inserted: the total is 20 / sqrt(dose) on a 20 HU scan
        assert abs(noise.std() / expected - 1) < (0.02 if correlation_mm == 0 else 0.08), (dose, noise.std(), expected)
        assert abs(noise.mean()) < 0.1 * expected
    assert not model.sample(FLAT, SPACING, 1.0, rng).any()  # dose 1: the scan as given


def test_projection_domain_std_scales_with_dose_and_is_correlated_where_image_domain_is_not():
    cylinder = water_cylinder((96, 96), (3.5, 3.5))
    centre = (slice(24, 72), slice(24, 72))
    projection = ProjectionDomainNoise(photons=1e5, views=120)
    stds, lag1, lag2 = {}, {}, {}
    for dose in (0.5, 0.125):
        noise = np.stack([projection.sample(cylinder, (3.5, 3.5), dose, np.random.default_rng(k))[centre] for k in range(6)])
        stds[dose] = float(noise.std())
        lag1[dose] = pooled_correlation(noise, 1)
        lag2[dose] = pooled_correlation(noise, 2)
    expected_ratio = math.sqrt((1 / 0.125 - 1) / (1 / 0.5 - 1))  # variance inserted grows as 1/d - 1: sqrt(7)
    assert abs(stds[0.125] / stds[0.5] / expected_ratio - 1) < 0.12, (stds, expected_ratio)
    assert stds[0.5] > 5.0  # a real level, not a vanishing one
    # filtered back-projection: neighbours correlate (about 0.1 here; the standard error of 6 x 2256 pairs is ~0.01),
    # and the ramp filter's negative lobe shows two pixels away
    assert min(lag1.values()) > 0.05 and max(lag2.values()) < -0.03, (lag1, lag2)
    white = np.stack([ImageDomainNoise(full_dose_std=20.0).sample(FLAT, SPACING, 0.125, np.random.default_rng(k))[centre]
                      for k in range(6)])
    assert abs(pooled_correlation(white, 1)) < 0.03


def test_projection_noise_is_higher_behind_a_longer_path():
    projection = ProjectionDomainNoise(photons=1e5, views=90)
    small, large = water_cylinder((96, 96), (2.0, 2.0), 100.0), water_cylinder((96, 96), (2.0, 2.0), 180.0)
    centre = (slice(44, 52), slice(44, 52))
    stds = [np.std([projection.sample(c, (2.0, 2.0), 0.25, np.random.default_rng(k))[centre] for k in range(4)])
            for c in (small, large)]
    assert stds[1] > 1.3 * stds[0]


def test_the_models_refuse_bad_settings():
    with pytest.raises(ConfigError, match="unknown dose noise model"):
        build_noise_model("poisson")
    with pytest.raises(ConfigError, match="takes"):
        build_noise_model("image", photons=1e5)
    with pytest.raises(ConfigError, match="dose fraction"):
        ImageDomainNoise().sample(FLAT, SPACING, 0.0, np.random.default_rng(0))
    with pytest.raises(ConfigError, match="dose fraction"):
        SimulateDosed("image", ImageDomainNoise(), dose=1.5)
    with pytest.raises(ConfigError, match="photons"):
        ProjectionDomainNoise(photons=-1)


def _volume(seed: int = 0) -> MetaTensor:
    rng = np.random.default_rng(seed)
    return MetaTensor(torch.as_tensor(rng.normal(40, 5, (1, 40, 40, 3)).astype(np.float32)), affine=torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0])))


def test_simulate_dosed_is_seeded_per_case_and_dose():
    model = ImageDomainNoise(full_dose_std=10.0)
    image = _volume()
    low = SimulateDosed("image", model, dose=0.25, seed=3)
    first = low({"image": image, "case": "a"})["image"]
    assert torch.equal(first, low({"image": image, "case": "a"})["image"])  # the same scan every time
    assert not torch.equal(first, low({"image": image, "case": "b"})["image"])  # another case, another draw
    assert not torch.equal(first, SimulateDosed("image", model, dose=0.125, seed=3)({"image": image, "case": "a"})["image"])
    assert torch.equal(SimulateDosed("image", model, dose=1.0)({"image": image, "case": "a"})["image"], image)
    assert isinstance(first, MetaTensor) and torch.equal(first.affine, image.affine)
    assert abs(float((first - image).std()) - 10.0 * math.sqrt(3)) < 1.5


def _slice(case: str = "c", index: int = 0) -> dict:
    clean = torch.as_tensor(water_cylinder((48, 48), (4.0, 4.0), 150.0) / 1000.0)[None]
    return {"image": clean, "case": case, "slice": index, "spacing": torch.tensor([4.0, 4.0])}


def test_noise2noise_pairs_are_two_independent_scans_of_one_slice():
    pairs = NoisyPairsd("image", "n2n", ImageDomainNoise(full_dose_std=30.0), doses=[0.25], hu_scale=1000.0)
    item = _slice()
    out = pairs(item)
    first, second = (out["image"] - item["image"]) * 1000, (out["label"] - item["image"]) * 1000
    assert first.std() > 20 and second.std() > 20
    assert abs(float(np.corrcoef(first.ravel(), second.ravel())[0, 1])) < 0.1  # independent realisations
    again = pairs(_slice())
    assert torch.equal(again["image"], out["image"]) and torch.equal(again["label"], out["label"])  # kept, not redrawn
    assert "clean" not in out and "noise" not in out  # Noise2Noise never sees the clean slice


def test_noise2clean_and_nes_pairs():
    model = ImageDomainNoise(full_dose_std=30.0)
    item = _slice()
    n2c = NoisyPairsd("image", "n2c", model, doses=[0.25], with_clean=True)(item)
    assert torch.equal(n2c["label"], item["image"]) and torch.equal(n2c["clean"], item["image"])
    nes = NoisyPairsd("image", "nes", model, doses=[0.25])
    out = nes(item)
    assert torch.equal(out["label"], out["image"])  # the noisy scan is its own first target
    assert out["noise"].shape == item["image"].shape and 0.02 < float(out["noise"].std()) < 0.08  # noise only, in HU / 1000
    with pytest.raises(ConfigError, match="below 1"):
        NoisyPairsd("image", "n2n", model, doses=[1.0])
    with pytest.raises(ConfigError, match="denoise_mode"):
        NoisyPairsd("image", "n2v", model, doses=[0.5])


def test_denoised_keeps_the_grid_and_an_untrained_residual_denoiser_removes_nothing():
    image = MetaTensor(torch.randn(1, 50, 70, 4) * 100, affine=torch.eye(4))
    out = Denoised("image", ResidualDenoiser(2, (4, 8, 16)).eval(), hu_scale=1000.0, divisor=4)({"image": image})["image"]
    assert out.shape == image.shape and isinstance(out, MetaTensor)
    assert torch.allclose(out, image, atol=1e-3)  # the gain starts at zero: the identity
    assert Denoised("image", None)({"image": image})["image"] is image


def test_water_equivalent_diameter_of_a_water_cylinder_is_its_diameter():
    from pipeline.data.denoise import water_equivalent_diameter

    assert water_equivalent_diameter(water_cylinder((128, 128), (2.0, 2.0), 200.0), (2.0, 2.0)) == pytest.approx(200.0, rel=0.02)
    fat = np.where(water_cylinder((128, 128), (2.0, 2.0), 200.0) > -500, -100.0, -1000.0)  # -100 HU: 0.9 x water's attenuation
    assert water_equivalent_diameter(fat, (2.0, 2.0)) == pytest.approx(200.0 * 0.9 ** 0.5, rel=0.02)
