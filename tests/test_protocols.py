"""Faithfulness protocols: properties of hiding pixels, curves, AUC and intervals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_baselines import bright_segmenter, square_image

from pipeline.baselines import OracleMap, RandomMap
from pipeline.evaluate import (
    HIDDEN_BASELINES,
    apply_hidden_baseline,
    apply_visibility,
    bootstrap_ci,
    compute_auc,
    compute_curve,
    rank_pixels,
)


def test_everything_visible_is_the_image_and_nothing_visible_is_the_baseline() -> None:
    image = torch.rand(2, 1, 8, 8)
    ranks = rank_pixels(torch.rand(2, 1, 8, 8))
    hidden = apply_hidden_baseline(image, "floor")
    assert torch.equal(apply_visibility(image, ranks, 1.0, hidden), image)
    assert torch.equal(apply_visibility(image, ranks, 0.0, hidden), hidden)
    assert torch.equal(apply_visibility(image, ranks, 0.0, hidden, deletion=True), image)


def test_the_kept_pixels_are_the_most_important() -> None:
    importance = torch.arange(16.0).view(1, 1, 4, 4)
    kept = apply_visibility(torch.ones(1, 1, 4, 4), rank_pixels(importance), 0.25, torch.zeros(1, 1, 4, 4))
    assert kept.flatten().tolist() == [0.0] * 12 + [1.0] * 4


def test_constant_maps_keep_the_requested_share() -> None:
    ranks = rank_pixels(torch.ones(1, 1, 10, 10))
    kept = apply_visibility(torch.ones(1, 1, 10, 10), ranks, 0.3, torch.zeros(1, 1, 10, 10))
    assert int(kept.sum()) == 30


@pytest.mark.parametrize("baseline", HIDDEN_BASELINES)
def test_hidden_baselines_keep_the_shape(baseline: str) -> None:
    image = torch.rand(2, 1, 20, 24)
    assert apply_hidden_baseline(image, baseline, torch.Generator().manual_seed(0)).shape == image.shape


def test_unknown_baseline_is_refused() -> None:
    with pytest.raises(ValueError, match="hidden-pixel baseline must be one of"):
        apply_hidden_baseline(torch.zeros(1, 1, 2, 2), "checkerboard")


def test_oracle_beats_random_on_visibility() -> None:
    utility, image = bright_segmenter(), square_image()
    label = (image > 0.5).float()
    aucs = {}
    for name, explainer in {"oracle": OracleMap(), "random": RandomMap(0)}.items():
        curve = compute_curve(utility, image, label, explainer(image, label))
        aucs[name] = compute_auc(curve["fractions"], np.nanmean(curve["dice_label"], axis=1))
    assert aucs["oracle"] > aucs["random"] + 0.3


def test_auc_of_a_constant_is_the_constant() -> None:
    assert compute_auc([0.0, 0.5, 1.0], [0.7, 0.7, 0.7]) == pytest.approx(0.7)


def test_bootstrap_interval_brackets_the_mean() -> None:
    values = np.random.default_rng(0).normal(0.6, 0.1, 50)
    low, high = bootstrap_ci(values, seed=1)
    assert low < values.mean() < high and high - low < 0.1
    assert bootstrap_ci([float("nan")]) != bootstrap_ci([0.5])
