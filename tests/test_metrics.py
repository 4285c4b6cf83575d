"""Importance-map metrics: region masks in mm, shares against chance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ignite.engine import Engine

from pipeline.handlers import RegionShare
from pipeline.noise.regions import compute_region, compute_region_share


def _label() -> np.ndarray:
    label = np.zeros((21, 21))
    label[10, 10] = 1
    return label


def test_ring_width_is_in_millimetres_per_axis() -> None:
    region = compute_region(_label(), spacing_mm=(1.0, 2.0), ring_mm=4.0)
    rows, cols = np.nonzero(region)
    assert (rows.min(), rows.max()) == (6, 14)  # 4 mm at 1 mm/pixel
    assert (cols.min(), cols.max()) == (8, 12)  # 4 mm at 2 mm/pixel


def test_zero_ring_is_the_pancreas() -> None:
    assert np.array_equal(compute_region(_label(), (1.0, 1.0), 0.0), _label() > 0)


def test_uniform_map_scores_chance() -> None:
    inside, region, total, pixels = compute_region_share(np.ones((21, 21)), _label(), (1.0, 1.0), 3.0)
    assert pixels == 21**2 and inside / total == pytest.approx(region / 21**2)


def test_only_pixels_within_the_body_count() -> None:
    body = np.zeros((21, 21), bool)
    body[:, :11] = True  # the pancreas and half the slice
    importance = np.ones((21, 21))
    importance[:, 11:] = 100.0  # mass outside the body must not dilute the share
    inside, region, total, pixels = compute_region_share(importance, _label(), (1.0, 1.0), 0.0, within=body)
    assert pixels == body.sum() and total == body.sum() and inside == region == float(((_label() > 0) & body).sum())


def test_map_on_the_pancreas_has_all_its_mass_inside() -> None:
    inside, _, total, _ = compute_region_share(_label(), _label(), (1.0, 1.0), 2.0)
    assert inside == total == 1.0


def test_shape_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="same"):
        compute_region_share(np.ones((4, 4)), np.ones((5, 5)), (1.0, 1.0), 1.0)


def _one_pixel_metric(batch_extra: dict) -> RegionShare:
    """RegionShare after one 4 x 4 slice whose importance all lies on its one pancreas pixel."""
    metric = RegionShare(ring_mm=0.0)
    metric.reset()
    engine = Engine(lambda e, b: None)
    label = torch.zeros(1, 4, 4)
    label[0, 0, 0] = 1
    tolerance = torch.ones(1, 4, 4)
    tolerance[0, 0, 0] = 0
    engine.state.batch = {"spacing": [torch.tensor([1.0, 1.0])], **batch_extra}
    engine.state.output = [{"pred_tolerance": tolerance, "label": label}]
    metric.iteration_completed(engine)
    return metric


def test_region_share_metric_pools_slices() -> None:
    metric = _one_pixel_metric({})
    assert metric.compute() == pytest.approx(16.0) and metric.share == pytest.approx(1.0)


def test_region_share_metric_counts_the_body_when_the_batch_has_it() -> None:
    body = torch.zeros(1, 1, 4, 4)
    body[..., :2, :2] = 1  # 4 body pixels
    assert _one_pixel_metric({"body": body}).compute() == pytest.approx(4.0)


def test_dice_is_monai_dice_with_both_empty_as_nan() -> None:
    """Ours is MONAI's formula vectorised over the batch (``monai.metrics.compute_dice`` loops over it in Python,
    and occlusion scores thousands of masks per map); both empty is NaN (left out of means), one empty is 0."""
    from monai.metrics import compute_dice as monai_dice

    from pipeline.noise.regions import compute_dice

    generator = torch.Generator().manual_seed(0)
    pred = (torch.rand(12, 1, 9, 7, generator=generator) > 0.6).float()
    reference = (torch.rand(12, 1, 9, 7, generator=generator) > 0.5).float()
    pred[10], reference[10], pred[11] = 0, 0, 0  # both empty; the prediction alone empty
    ours, theirs = compute_dice(pred, reference), monai_dice(pred, reference, include_background=True, ignore_empty=False)[:, 0]
    assert torch.allclose(ours[:10], theirs[:10]) and torch.isnan(ours[10]) and ours[11] == theirs[11] == 0
