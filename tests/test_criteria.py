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
    visibility = criteria["visibility auc: unoise vs occlusion, under every judged infill"]
    deletion = criteria["deletion auc: unoise vs occlusion, under every judged infill"]
    assert visibility["passed"] and visibility["beats"]
    assert deletion["passed"] and not deletion["beats"]  # mean lower, interval reaches 0: no loss, no win
    assert criteria["localisation: unoise vs occlusion"]["passed"]  # 4.5 / 5.0 >= 0.8
    assert criteria["cost: unoise vs occlusion"]["passed"] and criteria["sanity check: unoise"]["passed"]


def test_misses_are_reported_as_failures() -> None:
    criteria = _by_name(compute_criteria(_result((-0.02, -0.04, -0.005), 3.0, 0.57)))  # interval below 0: a loss
    assert not criteria["visibility auc: unoise vs occlusion, under every judged infill"]["passed"]
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


def _infill_result(differences: dict[str, tuple[float, float, float]]) -> dict:
    """A result judged under several infills: visibility differences per infill, the occlusion of each fill."""
    paired: dict = {}
    methods = {"unoise": {"ring_over_chance": 4.0, "ms_per_map": 10.0}, "segmentation": {"ring_over_chance": 5.0}}
    for spec, (mean, low, high) in differences.items():
        for other in ("segmentation", "occlusion" if spec == "blur" else f"occlusion_{spec}"):
            methods.setdefault(other, {"ring_over_chance": 5.0, "ms_per_map": 2000.0})
            paired.setdefault(other, {})[f"{spec}_visibility_auc"] = {"mean": mean, "ci95": [low, high], "n": 8}
    return {"reference": "unoise", "methods": methods, "paired": paired,
            "protocol": {"ring_mm": 10, "infills": [s for s in differences if s != "road"],
                         "held_out_infills": [s for s in differences if s == "road"]}}


def test_a_verdict_holds_only_where_it_holds_under_every_judged_infill() -> None:
    result = _infill_result({"blur": (0.03, 0.01, 0.05), "mean": (0.01, -0.01, 0.03), "noise": (-0.05, -0.08, -0.02)})
    criteria = _by_name(compute_criteria(result))
    occlusion = criteria["visibility auc: unoise vs occlusion, under every judged infill"]
    assert not occlusion["passed"] and occlusion["losses"] == ["noise"] and occlusion["wins"] == ["blur"]
    assert [v["against"] for v in occlusion["per_infill"]] == ["occlusion", "occlusion_mean", "occlusion_noise"]
    assert "a loss under noise" in occlusion["words"]
    level = _infill_result({"blur": (0.03, 0.01, 0.05), "mean": (0.01, -0.01, 0.03)})
    criterion = _by_name(compute_criteria(level))["visibility auc: unoise vs occlusion, under every judged infill"]
    assert criterion["passed"] and not criterion["beats"] and "a win under 1 of 2: blur" in criterion["words"]


def test_road_is_judged_by_deletion_only() -> None:
    result = _infill_result({"blur": (0.03, 0.01, 0.05), "road": (-0.2, -0.3, -0.1)})
    names = set(_by_name(compute_criteria(result)))
    assert "visibility auc: unoise vs segmentation, under the held-out infills" not in names  # saturated: not judged
    assert "visibility auc: unoise vs segmentation, under every judged infill" in names


def test_cost_is_judged_at_the_papers_stride() -> None:
    result = _result((0.03, 0.01, 0.05), 4.5, 0.1)
    result["methods"]["unoise"]["forward_equivalents"] = 1.5
    result["methods"]["occlusion"].update({"ms_per_map": 5000.0, "windows_per_map": 841, "windows_at_paper_stride": 3249})
    result["settings"] = {"occlusion_stride": 4}
    cost = _by_name(compute_criteria(result))["cost: unoise vs occlusion at the paper's stride (2), in time per map"]
    assert cost["passed"]  # 500x at stride 4, 500 * 3249 / 841 = 1932x at stride 2
    assert "1,932x" in cost["measured"] and "500x" in cost["measured"]


def test_whole_volume_cost_is_judged_at_the_papers_stride_where_timed() -> None:
    result = _result((0.03, 0.01, 0.05), 4.5, 0.1)
    result["settings"] = {"occlusion_stride": 16}
    result["volumes"] = {"methods": {"unoise": {"ms_per_volume": 200.0},
                                     "occlusion_stride16": {"ms_per_volume": 3000.0, "stride": 16},
                                     "occlusion_stride2": {"ms_per_volume": 300000.0, "stride": 2}}}
    cost = _by_name(compute_criteria(result))["cost per whole volume: unoise vs occlusion (stride 2, extrapolated)"]
    assert cost["passed"] and "1,500x" in cost["measured"]  # 15x at stride 16 would fail the 1,000x target
    del result["volumes"]["methods"]["occlusion_stride2"]
    cost = _by_name(compute_criteria(result))["cost per whole volume: unoise vs occlusion (stride 16, extrapolated)"]
    assert not cost["passed"] and "evaluated stride 16" in cost["words"]
