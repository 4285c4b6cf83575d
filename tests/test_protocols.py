"""Faithfulness protocols: ranking inside the body, hiding pixels, curves against the prediction and the label."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_explain import bright_segmenter, square_image

from pipeline.evaluation.protocols import (
    apply_visibility,
    compute_curves,
    fraction_index,
    predict,
    rank_in_region,
    select_top,
)
from pipeline.evaluation.stats import compute_auc, nanmean
from pipeline.explain import OracleMap, RandomMap


def body_slice(size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """``square_image`` with a body: the left half of the slice is air (0) outside the body."""
    image = square_image(size)
    body = torch.ones_like(image)
    body[..., :, :8] = 0
    image[..., :, :8] = 0.0
    return image, body


def test_pixels_outside_the_region_rank_after_every_pixel_inside() -> None:
    importance = torch.rand(1, 1, 8, 8)
    region = torch.zeros(1, 1, 8, 8)
    region[..., :4] = 1
    importance[..., 4:] += 10  # outside: far more "important"
    ranks = rank_in_region(importance, region).view(1, 1, 8, 8)
    assert int(ranks[region > 0].max()) < int(ranks[region == 0].min())


def test_all_visible_is_the_image_and_nothing_visible_hides_only_the_body() -> None:
    image, body = body_slice()
    ranks = rank_in_region(torch.rand(1, 1, 32, 32), body)
    assert torch.equal(apply_visibility(image, ranks, body, 1.0, "floor"), image)
    hidden_all = apply_visibility(image, ranks, body, 0.0, "mean")
    assert torch.equal(hidden_all[body == 0], image[body == 0])  # air untouched
    assert torch.allclose(hidden_all[body > 0], image[body > 0].mean())


def test_the_share_counts_body_pixels() -> None:
    _, body = body_slice()
    top = select_top(rank_in_region(torch.rand(1, 1, 32, 32), body), body.flatten(1).sum(1), 0.25, body.shape)
    assert int(top.sum()) == round(0.25 * int(body.sum())) and not bool(top[body == 0].any())


def test_a_map_that_ranks_air_first_scores_like_the_same_map_without_it() -> None:
    utility, (image, body) = bright_segmenter(), body_slice()
    label = (image > 0.5).float()
    clean = predict(utility, image)
    random_map = RandomMap(0)(image)
    air_first = torch.where(body > 0, random_map, torch.full_like(random_map, 5.0))
    curves = [compute_curves(utility, image, m, body, clean, label, infill="blur") for m in (random_map, air_first)]
    for protocol in ("visibility", "deletion"):
        assert np.array_equal(curves[0][protocol]["clean"], curves[1][protocol]["clean"], equal_nan=True)


def test_oracle_beats_random_against_the_prediction_and_the_label() -> None:
    utility, (image, body) = bright_segmenter(), body_slice()
    label = (image > 0.5).float()
    clean = predict(utility, image)
    aucs = {}
    for name, explainer in {"oracle": OracleMap(2.0), "random": RandomMap(0)}.items():
        curves = compute_curves(utility, image, explainer(image, label), body, clean, label, infill="floor")
        aucs[name] = {t: compute_auc(curves["fractions"], nanmean(curves["visibility"][t], axis=1)) for t in ("clean", "label")}
    assert aucs["oracle"]["clean"] > aucs["random"]["clean"] + 0.3
    assert aucs["oracle"]["label"] > aucs["random"]["label"] + 0.3


def test_slices_without_a_clean_prediction_are_left_out_against_it() -> None:
    utility = bright_segmenter()
    image = torch.full((1, 1, 16, 16), 0.2)  # nothing bright: the utility predicts nothing
    body, label = torch.ones_like(image), torch.zeros_like(image)
    label[..., 4:8, 4:8] = 1
    curves = compute_curves(utility, image, torch.rand(1, 1, 16, 16), body, predict(utility, image), label)
    assert np.isnan(curves["visibility"]["clean"]).all() and np.isfinite(curves["visibility"]["label"]).all()


def test_curves_are_reported_only_where_they_were_measured() -> None:
    assert fraction_index([0.0, 0.05, 0.1], 0.05) == 1
    with pytest.raises(ValueError, match="not measured at p = 0.2"):
        fraction_index([0.0, 0.05, 0.1], 0.2)


def test_a_coarser_list_of_fractions_is_checked_before_any_curve_is_drawn() -> None:
    from pipeline.errors import ConfigError
    from pipeline.evaluation.protocols import DEFAULT_FRACTIONS, check_fractions

    assert check_fractions(None) == DEFAULT_FRACTIONS
    assert check_fractions([0, 0.05, 0.1, 0.2, 0.5, 1]) == (0.0, 0.05, 0.1, 0.2, 0.5, 1.0)
    with pytest.raises(ConfigError, match=r"missing \[0.2\]"):
        check_fractions([0, 0.05, 0.1, 0.5, 1])  # the report quotes dice at p = 20%
    with pytest.raises(ConfigError, match="increase strictly"):
        check_fractions([0, 0.1, 0.05, 0.2, 0.5, 1])
    with pytest.raises(ConfigError, match="list of numbers"):
        check_fractions("0.1")
