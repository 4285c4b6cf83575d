"""Pass/fail verdicts: a mean on the right side passes, an interval off zero beats, targets are the issue's."""

from __future__ import annotations

from pipeline.evaluation.criteria import compute_criteria


def _result(vis_diff: tuple[float, float, float], ring: float, rho: float) -> dict:
    mean, low, high = vis_diff
    method = {"visibility_auc": 0.9, "deletion_auc": 0.08, "ring_over_chance": ring, "ms_per_map": 10.0}
    other = {"visibility_auc": 0.9 - mean, "deletion_auc": 0.09, "ring_over_chance": 5.0, "ms_per_map": 20000.0}
    paired = {"visibility_auc": {"mean": mean, "ci95": [low, high], "n": 8},
              "deletion_auc": {"mean": -0.01, "ci95": [-0.02, 0.001], "n": 8}}
    return {"reference": "unoise", "methods": {"unoise": method, "occlusion": other}, "paired": {"occlusion": paired},
            "protocol": {"ring_mm": 10}, "sanity": {"unoise": rho}}


def _by_name(criteria: list[dict]) -> dict[str, dict]:
    return {c["criterion"]: c for c in criteria}


def test_a_win_needs_an_interval_that_excludes_zero() -> None:
    criteria = _by_name(compute_criteria(_result((0.03, 0.01, 0.05), 4.5, 0.1)))
    visibility = criteria["visibility auc: unoise vs occlusion"]
    deletion = criteria["deletion auc: unoise vs occlusion"]
    assert visibility["passed"] and visibility["beats"]
    assert deletion["passed"] and not deletion["beats"]  # mean lower, interval touches 0
    assert criteria["localisation: unoise vs occlusion"]["passed"]  # 4.5 / 5.0 >= 0.8
    assert criteria["cost: unoise vs occlusion"]["passed"] and criteria["sanity check: unoise"]["passed"]


def test_misses_are_reported_as_failures() -> None:
    criteria = _by_name(compute_criteria(_result((-0.02, -0.04, 0.0), 3.0, 0.57)))
    assert not criteria["visibility auc: unoise vs occlusion"]["passed"]
    assert not criteria["localisation: unoise vs occlusion"]["passed"]
    assert not criteria["sanity check: unoise"]["passed"]
    assert "follows the image more than the model" in criteria["sanity check: unoise"]["words"]


def test_shortcut_criteria() -> None:
    result = _result((0.01, 0.0, 0.02), 4.5, 0.1)
    result["shortcut"] = {"dice_with_cue": 0.9, "dice_without_cue": 0.5, "methods": {
        "unoise": {"cue_share_over_chance": 8.0, "pointing_rate": 0.9},
        "segmentation": {"cue_share_over_chance": 0.1, "pointing_rate": 0.0}}}
    criteria = _by_name(compute_criteria(result))
    assert criteria["shortcut: the utility relies on the cue"]["passed"]
    assert criteria["shortcut: unoise finds the cue"]["passed"]
    assert criteria["shortcut: the segmentation map cannot find the cue"]["passed"]
