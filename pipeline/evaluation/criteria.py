"""Pass or fail, per criterion, from evaluation.json: what the report and the CLI say in plain words.

Each criterion compares the reference U-Noise with the maps it must beat, under the headline protocol
(body-restricted, the evaluation's infill, against the utility's clean prediction). Differences use the
paired intervals over cases: "beats" needs an interval that excludes 0; "at least as good" needs a
mean difference on the right side of 0.
"""

from __future__ import annotations

from typing import Any

SPEEDUP_TARGET = 1000.0
RING_FRACTION_TARGET = 0.8
SANITY_TARGET = 0.3
RELIANCE_TARGET = 0.2
CUE_SHARE_TARGET = 5.0
POINTING_TARGET = 0.8


def _paired_verdict(result: dict, other: str, metric: str, higher_is_better: bool) -> dict[str, Any] | None:
    paired = result.get("paired", {}).get(other, {}).get(metric)
    if paired is None:
        return None
    mean, (low, high) = paired["mean"], paired["ci95"]
    sign = 1 if higher_is_better else -1
    passed = sign * mean >= 0
    beats = sign * low > 0 if higher_is_better else sign * high > 0
    return {"mean": mean, "ci95": [low, high], "n": paired["n"], "passed": bool(passed), "beats": bool(beats)}


def _cost_criteria(result: dict, reference: str) -> list[dict[str, Any]]:
    """U-Noise against occlusion (and, per whole 3D volume, Grad-CAM) on time: per map in 2D, per whole volume in 3D."""
    methods, volumes = result["methods"], result.get("volumes")
    if not volumes or reference not in volumes["methods"]:
        ref_ms, occ_ms = methods[reference]["ms_per_map"], methods["occlusion"]["ms_per_map"]
        speedup = occ_ms / max(ref_ms, 1e-9)
        return [{"criterion": f"cost: {reference} vs occlusion", "measured": f"{ref_ms:.1f} ms against {occ_ms:,.0f} ms "
                 f"per map: {speedup:,.0f}x faster", "target": f">= {SPEEDUP_TARGET:,.0f}x",
                 "passed": bool(speedup >= SPEEDUP_TARGET),
                 "words": f"A U-Noise map costs {speedup:,.0f} times less time than an occlusion map."}]
    cost = volumes["methods"]
    ref_ms = cost[reference]["ms_per_volume"]
    stride = result.get("settings", {}).get("occlusion_stride")
    occlusion = f"occlusion_stride{stride}" if f"occlusion_stride{stride}" in cost else next(
        (name for name in cost if name.startswith("occlusion_stride")), None)
    criteria = []
    if occlusion:
        speedup = cost[occlusion]["ms_per_volume"] / max(ref_ms, 1e-9)
        criteria.append({
            "criterion": f"cost per whole volume: {reference} vs occlusion (stride {cost[occlusion]['stride']}, extrapolated)",
            "measured": f"{ref_ms:,.0f} ms against {cost[occlusion]['ms_per_volume']:,.0f} ms per volume: {speedup:,.0f}x faster",
            "target": f">= {SPEEDUP_TARGET:,.0f}x", "passed": bool(speedup >= SPEEDUP_TARGET),
            "words": f"A whole-volume U-Noise map costs {speedup:,.0f} times less time than occlusion's at the evaluated stride."})
    if "gradcam" in cost:
        speedup = cost["gradcam"]["ms_per_volume"] / max(ref_ms, 1e-9)
        criteria.append({
            "criterion": f"cost per whole volume: {reference} vs Grad-CAM",
            "measured": f"{ref_ms:,.0f} ms against {cost['gradcam']['ms_per_volume']:,.0f} ms per volume: {speedup:,.1f}x",
            "target": "> 1x", "passed": bool(speedup > 1.0),
            "words": "A whole-volume U-Noise map is " + ("faster" if speedup > 1.0 else "not faster") + " than Grad-CAM's."})
    return criteria


def compute_criteria(result: dict) -> list[dict[str, Any]]:
    """The acceptance criteria with measured values, targets, pass/fail and one sentence each."""
    reference = result.get("reference")
    methods = result.get("methods", {})
    criteria: list[dict[str, Any]] = []
    if reference is None or reference not in methods:
        return criteria
    ref = methods[reference]
    for other in ("occlusion", "segmentation"):
        for metric, better, words in (("visibility_auc", True, "keeps the model's segmentation with the fewest pixels shown"),
                                      ("deletion_auc", False, "destroys the model's segmentation with the fewest pixels hidden")):
            verdict = _paired_verdict(result, other, metric, better)
            if verdict is None:
                continue
            low, high = verdict["ci95"]
            strength = "better, with a 95% interval that excludes zero: a win" if verdict["beats"] else (
                "at least as good on average, but the 95% interval includes zero: level, not a win" if verdict["passed"]
                else "worse on average")
            criteria.append({
                "criterion": f"{metric.replace('_', ' ')}: {reference} vs {other}",
                "measured": f"{reference} {ref[metric]:.3f}, {other} {methods[other][metric]:.3f}; "
                            f"difference {verdict['mean']:+.3f} [{low:+.3f}, {high:+.3f}], n = {verdict['n']} cases",
                "target": ">= 0" if better else "<= 0", "passed": verdict["passed"], "beats": verdict["beats"],
                "words": f"Compared with the {other} map, U-Noise {words}: {strength}.",
            })
    if "occlusion" in methods:
        ratio = ref["ring_over_chance"] / methods["occlusion"]["ring_over_chance"]
        criteria.append({
            "criterion": f"localisation: {reference} vs occlusion",
            "measured": f"pancreas + {result.get('protocol', {}).get('ring_mm', 10):g} mm ring holds {ref['ring_over_chance']:.2f}x "
                        f"its share of the body (occlusion {methods['occlusion']['ring_over_chance']:.2f}x): {ratio:.2f} of occlusion's",
            "target": f">= {RING_FRACTION_TARGET}", "passed": bool(ratio >= RING_FRACTION_TARGET),
            "words": "U-Noise's importance sits on the pancreas and its surroundings "
                     + ("about as much as occlusion's does." if ratio >= RING_FRACTION_TARGET else "clearly less than occlusion's does."),
        })
        criteria += _cost_criteria(result, reference)
    if reference in result.get("sanity", {}):
        rho = result["sanity"][reference]
        criteria.append({
            "criterion": f"sanity check: {reference}", "measured": f"|Spearman| {rho:.2f} between maps of the trained and the "
                                                                    "randomised utility",
            "target": f"<= {SANITY_TARGET}", "passed": bool(rho <= SANITY_TARGET),
            "words": "When the model's weights are destroyed, U-Noise's map " + (
                "changes: it follows the model, not just the image." if rho <= SANITY_TARGET else
                "stays much the same: it follows the image more than the model."),
        })
    shortcut = result.get("shortcut")
    if shortcut:
        drop = shortcut["dice_with_cue"] - shortcut["dice_without_cue"]
        criteria.append({
            "criterion": "shortcut: the utility relies on the cue", "measured": f"dice {shortcut['dice_with_cue']:.3f} with the cue, "
            f"{shortcut['dice_without_cue']:.3f} without: drop {drop:.3f}", "target": f">= {RELIANCE_TARGET}",
            "passed": bool(drop >= RELIANCE_TARGET),
            "words": "The model needs the planted cue: without it, it loses " + f"{drop:.2f} dice.",
        })
        cue = shortcut["methods"].get(reference)
        if cue:
            passed = cue["cue_share_over_chance"] >= CUE_SHARE_TARGET and cue["pointing_rate"] >= POINTING_TARGET
            criteria.append({
                "criterion": f"shortcut: {reference} finds the cue", "measured": f"the cue holds {cue['cue_share_over_chance']:.1f}x its "
                f"share of the body's importance; the top 1% touches it on {cue['pointing_rate']:.0%} of slices",
                "target": f">= {CUE_SHARE_TARGET:g}x and >= {POINTING_TARGET:.0%}", "passed": bool(passed),
                "words": "U-Noise " + ("shows the cue the model relies on." if passed else "does not show the cue clearly enough."),
            })
        seg = shortcut["methods"].get("segmentation")
        if seg:
            neither = seg["cue_share_over_chance"] < CUE_SHARE_TARGET and seg["pointing_rate"] < POINTING_TARGET
            criteria.append({
                "criterion": "shortcut: the segmentation map cannot find the cue",
                "measured": f"{seg['cue_share_over_chance']:.1f}x, pointing {seg['pointing_rate']:.0%}",
                "target": f"< {CUE_SHARE_TARGET:g}x and < {POINTING_TARGET:.0%}", "passed": bool(neither),
                "words": "A map made from the segmentation alone " + ("misses the cue, as it must." if neither else "finds the cue too: "
                                                                     "the benchmark would not tell explainers apart."),
            })
    return criteria


__all__ = ["compute_criteria"]
