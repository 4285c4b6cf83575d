"""Ambiguous-segmentation metrics: GED, diversity, HM-IoU and the rater floor on hand-worked masks.

Masks are mostly 1D of length 4 (a mask is its set of ones): ``A = {0, 1}``, ``B = {2, 3}`` (disjoint from A),
``C = {1, 2}`` (IoU 1/3 with each of A and B) and the empty mask ``E``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.evaluation.ambiguity import (
    compute_ambiguity,
    compute_diversity,
    compute_ged,
    compute_hm_iou,
    compute_rater_floor,
    summarise_ambiguity,
)

A = np.array([1, 1, 0, 0], dtype=bool)
B = np.array([0, 0, 1, 1], dtype=bool)
C = np.array([0, 1, 1, 0], dtype=bool)
E = np.zeros(4, dtype=bool)


def test_identical_sets_of_one_mask_are_perfect() -> None:
    assert compute_ambiguity([A], [A]) == {"ged": 0.0, "diversity": 0.0, "hm_iou": 1.0}


def test_disjoint_sample_and_rater_are_at_distance_one_and_ged_two() -> None:
    # d(A, B) = 1, so GED = 2 * 1 - 0 - 0
    assert compute_ged([A], [B]) == pytest.approx(2.0)


def test_hand_worked_two_samples_two_raters() -> None:
    # samples A, C; raters A, B.  d(A,A) = 0, d(A,B) = 1, d(C,A) = d(C,B) = 1 - 1/3 = 2/3
    # E[d(S,Y)]  = (0 + 1 + 2/3 + 2/3) / 4 = 7/12
    # E[d(S,S')] = (0 + 2/3 + 2/3 + 0) / 4 = 1/3   (all 4 ordered pairs, i == j included)
    # E[d(Y,Y')] = (0 + 1 + 1 + 0) / 4 = 1/2
    # GED = 2 * 7/12 - 1/3 - 1/2 = 1/3; diversity (distinct pairs) = 2/3
    # HM-IoU: IoU matrix [[1, 0], [1/3, 1/3]], best matching A-A, C-B: (1 + 1/3) / 2 = 2/3
    result = compute_ambiguity([A, C], [A, B])
    assert result["ged"] == pytest.approx(1 / 3)
    assert result["diversity"] == pytest.approx(2 / 3)
    assert result["hm_iou"] == pytest.approx(2 / 3)


def test_ged_keeps_self_pairs_so_equal_sets_score_zero() -> None:
    # samples A, B and raters A, B: 2 * 1/2 - 1/2 - 1/2 = 0 (dropping i == j would give 1 - 1 - 1 = -1)
    assert compute_ged([A, B], [B, A]) == pytest.approx(0.0)


def test_two_empty_masks_are_at_distance_zero() -> None:
    assert compute_ged([E], [E]) == 0.0
    assert compute_hm_iou([E], [E]) == 1.0


def test_empty_and_non_empty_masks_are_at_distance_one() -> None:
    assert compute_ged([E], [A]) == pytest.approx(2.0)  # d = 1
    assert compute_hm_iou([E], [A]) == 0.0


def test_hm_iou_of_a_permutation_of_the_raters_is_one() -> None:
    assert compute_hm_iou([B, A], [A, B]) == pytest.approx(1.0)


def test_hm_iou_duplicates_a_single_rater_to_the_sample_count() -> None:
    # lcm(2, 1) = 2: rater A twice, matched to A (IoU 1) and B (IoU 0)
    assert compute_hm_iou([A, B], [A]) == pytest.approx(0.5)


def test_hm_iou_replicates_both_sets_to_their_lcm() -> None:
    # 3 samples A, A, B and 2 raters A, B -> 6 x 6: four A rows, two B rows; three A and three B columns.
    # Three A columns take A rows (IoU 1), two B columns take the B rows (IoU 1), the last A row meets B (IoU 0): 5/6
    assert compute_hm_iou([A, A, B], [A, B]) == pytest.approx(5 / 6)


def test_diversity_of_one_sample_is_zero() -> None:
    assert compute_diversity([A]) == 0.0


def test_diversity_of_two_disjoint_masks_is_one() -> None:
    assert compute_diversity([A, B]) == pytest.approx(1.0)


def test_rater_floor_of_identical_raters_is_zero() -> None:
    assert compute_rater_floor([A, A, A]) == {"diversity": 0.0, "ged_loo": 0.0}


def test_rater_floor_of_two_disjoint_raters() -> None:
    # each rater alone against the other: GED({A}, {B}) = 2
    assert compute_rater_floor([A, B]) == {"diversity": pytest.approx(1.0), "ged_loo": pytest.approx(2.0)}


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="samples and raters must share a spatial shape"):
        compute_ged([A], [np.zeros(5, dtype=bool)])


def test_masks_of_different_shapes_in_one_set_raise() -> None:
    with pytest.raises(ValueError, match="samples: expected masks of one shape"):
        compute_diversity([A, np.zeros(5, dtype=bool)])


@pytest.mark.parametrize("samples, raters, name", [([], [A], "samples"), ([A], np.zeros((0, 4)), "raters")])
def test_empty_sets_raise(samples: list, raters: list, name: str) -> None:
    with pytest.raises(ValueError, match=f"{name}: expected at least one mask"):
        compute_ambiguity(samples, raters)


def test_non_binary_masks_raise() -> None:
    with pytest.raises(ValueError, match=r"raters: expected binary masks"):
        compute_ged([A], np.array([[0.2, 0.9, 0.0, 0.0]]))


def test_rater_floor_needs_two_raters() -> None:
    with pytest.raises(ValueError, match="expected at least two raters"):
        compute_rater_floor([A])


def test_torch_tensors_give_the_numpy_values() -> None:
    expected = compute_ambiguity([A, C], [A, B])
    samples = torch.from_numpy(np.stack([A, C])).float()  # (2, 4) in {0, 1}
    raters = [torch.from_numpy(A), torch.from_numpy(B)]  # a list of bool tensors
    assert compute_ambiguity(samples, raters) == pytest.approx(expected)


def test_3d_volumes() -> None:
    cube = np.zeros((4, 4, 4), dtype=np.uint8)
    cube[:2, :2, :2] = 1  # 8 voxels
    shifted = np.roll(cube, 1, axis=0)  # overlaps cube on 4 voxels: IoU 4 / 12 = 1/3
    result = compute_ambiguity(np.stack([cube, cube]), np.stack([cube, shifted]))  # (2, 4, 4, 4) each
    # E[d(S,Y)] = (0 + 2/3) / 2 = 1/3, E[d(S,S')] = 0, E[d(Y,Y')] = (2 * 2/3) / 4 = 1/3: GED = 2/3 - 1/3 = 1/3
    assert result["ged"] == pytest.approx(1 / 3)
    assert result["hm_iou"] == pytest.approx((1 + 1 / 3) / 2)


def test_summary_counts_cases_and_brackets_the_mean() -> None:
    cases = [compute_ambiguity([A, C], [A, B]), compute_ambiguity([A], [A]), compute_ambiguity([A], [B]),
             compute_ambiguity([A, B], [C])]
    summary = summarise_ambiguity(cases, samples=200, seed=0)
    assert set(summary) == {"ged", "diversity", "hm_iou"}
    for entry in summary.values():
        low, high = entry["ci95"]
        assert entry["n"] == len(cases)
        assert low <= entry["mean"] <= high
