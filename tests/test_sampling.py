"""The ambiguity evaluation of a model that samples: per-case metrics against the raters, on tiny volumes."""

from __future__ import annotations

import pytest
import torch

from pipeline.evaluation.sampling import evaluate_sampling, predict_mask, sample_masks
from pipeline.networks import ProbabilisticUNet


class _Fixed(torch.nn.Module):
    """A 'deterministic utility' whose logits are +1 on a fixed mask, -1 elsewhere."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.mask = mask  # (H, W)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.where(self.mask, 1.0, -1.0).expand(image.shape[0], 1, *self.mask.shape)


def _case(raters: torch.Tensor) -> tuple[dict, callable]:
    """An entry and a transform giving image (1, 8, 8, 2) and the raters' label (R, 8, 8, 2)."""
    image = torch.rand(1, 8, 8, 2)

    def transform(data: dict) -> dict:
        return {"image": image, "label": raters.float()}

    return {"image": "case.nii.gz", "label": ["r0", "r1"], "case": "case"}, transform


def _sampler() -> ProbabilisticUNet:
    torch.manual_seed(0)
    return ProbabilisticUNet(2, 1, 1, (4, 8), latent_dim=2).eval()


def test_sample_masks_gives_one_binary_volume_per_sample():
    masks = sample_masks(_sampler(), torch.rand(1, 8, 8, 3), samples=5, batch_size=2)
    assert masks.shape == (5, 3, 8, 8) and masks.dtype == torch.bool


def test_predict_mask_thresholds_the_logits_at_zero():
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[2:5, 2:5] = True
    out = predict_mask(_Fixed(mask), torch.rand(1, 8, 8, 3))
    assert out.shape == (1, 3, 8, 8) and torch.equal(out[0, 1], mask)


def test_a_deterministic_model_equal_to_one_rater_scores_what_the_metrics_say():
    first = torch.zeros(8, 8, 2, dtype=torch.bool)
    first[1:4, 1:4] = True
    second = torch.zeros(8, 8, 2, dtype=torch.bool)
    second[5:7, 5:7] = True  # disjoint from the first: d = 1 between the raters
    raters = torch.stack([first, second])  # (2, 8, 8, 2)
    entry, transform = _case(raters)
    result = evaluate_sampling(_sampler(), [entry], transform, samples=3, deterministic=_Fixed(first[..., 0]), bootstrap=50)
    deterministic = result["per_case"][0]["deterministic"]
    # one sample equal to rater 1, raters disjoint: GED = 2 * (0 + 1) / 2 - 0 - (0 + 1 + 1 + 0) / 4 = 0.5
    assert deterministic["ged"] == pytest.approx(0.5)
    assert deterministic["diversity"] == 0.0
    assert deterministic["hm_iou"] == pytest.approx(0.5)  # matched once to its rater (1), once to the other (0)
    assert result["diversity"]["raters"]["mean"] == pytest.approx(1.0)
    assert result["cases"] == 1 and result["raters_per_case"] == [2]
    assert set(result["paired"]) == {"ged", "hm_iou", "note"}


def test_a_single_rater_is_refused_by_name():
    entry, transform = _case(torch.zeros(1, 8, 8, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="case.nii.gz: 1 rater"):
        evaluate_sampling(_sampler(), [entry], transform, samples=2)
