"""Statistics of the evaluation: AUC, bootstrap and paired intervals, rank correlation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.evaluation.stats import bootstrap_ci, compute_auc, compute_spearman, paired_difference


def test_auc_of_a_constant_is_the_constant_on_an_uneven_grid() -> None:
    assert compute_auc([0.0, 0.05, 0.5, 1.0], [0.7] * 4) == pytest.approx(0.7)
    with pytest.raises(ValueError, match="matching 1D"):
        compute_auc([0.0, 1.0], [0.5])


def test_bootstrap_interval_brackets_the_mean() -> None:
    values = np.random.default_rng(0).normal(0.6, 0.1, 50)
    low, high = bootstrap_ci(values, seed=1)
    assert low < values.mean() < high and high - low < 0.1
    assert all(np.isnan(bootstrap_ci([float("nan")])))


def test_paired_interval_excludes_zero_for_a_consistent_gain_hidden_by_case_spread() -> None:
    rng = np.random.default_rng(0)
    cases = rng.uniform(0.2, 0.9, 12)  # hard and easy cases: unpaired intervals would overlap
    better, worse = cases + 0.03 + rng.normal(0, 0.005, 12), cases
    paired = paired_difference(better, worse, seed=0)
    assert paired["n"] == 12 and paired["ci95"][0] > 0 and paired["mean"] == pytest.approx(0.03, abs=0.005)
    low_a, high_a = bootstrap_ci(better)
    low_b, high_b = bootstrap_ci(worse)
    assert low_a < high_b  # the separate intervals overlap


def test_paired_interval_includes_zero_without_a_difference() -> None:
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 1, 10)
    paired = paired_difference(a + rng.normal(0, 0.05, 10), a + rng.normal(0, 0.05, 10))
    assert paired["ci95"][0] < 0 < paired["ci95"][1]


def test_paired_interval_drops_cases_missing_on_either_side() -> None:
    paired = paired_difference([0.5, float("nan"), 0.7], [0.4, 0.3, float("nan")])
    assert paired["n"] == 1 and paired["mean"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="one entry per case"):
        paired_difference([0.1, 0.2], [0.1])


def test_spearman_is_one_for_a_monotone_copy_and_zero_for_a_constant() -> None:
    first = torch.rand(2, 1, 8, 8)
    assert np.allclose(compute_spearman(first, first**3), 1.0)
    assert np.allclose(compute_spearman(first, torch.ones_like(first)), 0.0)


def test_spearman_counts_only_the_region() -> None:
    first, second = torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8)
    region = torch.zeros(1, 1, 8, 8)
    region[..., :4] = 1
    shared = torch.where(region > 0, second, first)  # agrees with `first` only outside the region
    assert abs(float(compute_spearman(first, shared, region)[0]) - float(compute_spearman(first[..., :4], second[..., :4])[0])) < 1e-9


def test_blank_maps_are_counted_per_method() -> None:
    import torch

    from pipeline.evaluation.run import count_blank_maps

    maps = {"flat": torch.zeros(3, 1, 4, 4, 2), "mixed": torch.stack([torch.zeros(1, 4, 4, 2), torch.rand(1, 4, 4, 2) + 0.1])}
    assert count_blank_maps(maps) == {"flat": 3, "mixed": 1}
