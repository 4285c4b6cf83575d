"""Every protocol for every explainer on one set of slices: the ``methods`` and ``paired`` parts of evaluation.json.

Per method and per infill (every judged infill, then the held-out ones): visibility and deletion AUCs
against the clean prediction and the label, under ``<infill>_visibility_auc`` and so on; the first judged
infill's also without the prefix, with dice at p = 5, 10, 20 and 50% of the body and the mean curves (the
figures the report draws); localisation inside the body; cost per map. Curves are
averaged over each case's slices first, so every case weighs the same, and intervals bootstrap over
cases. ``paired`` holds, per method, the difference "reference U-Noise minus that method" per case with
its bootstrap interval: "beats" means that interval excludes 0.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from pipeline.evaluation.protocols import DEFAULT_FRACTIONS, REPORTED_FRACTIONS, compute_curves, fraction_index, predict
from pipeline.evaluation.stats import bootstrap_ci, compute_auc, nanmean, paired_difference
from pipeline.noise.infill import DEFAULT_BLUR_SIGMA
from pipeline.noise.regions import compute_dice, compute_region_share

logger = logging.getLogger(__name__)
PAIRED_METRICS = ("visibility_auc", "deletion_auc", "ring_over_chance")
INFILL_KEYS = ("visibility_auc", "deletion_auc", "visibility_auc_ci95", "deletion_auc_ci95", "visibility_auc_label",
               "deletion_auc_label")


def time_per_map_ms(
    explainer: Callable, image: torch.Tensor, label: torch.Tensor, spacing: torch.Tensor, cheap_ms: float = 200.0,
    extra_passes: int = 4, body: torch.Tensor | None = None,
) -> tuple[torch.Tensor, float]:
    """Explain slice by slice; return the maps (B, 1, H, W) and the median milliseconds of one slice.

    The first slice is explained once beforehand as warm-up, so set-up costs are not counted. Explainers
    faster than ``cheap_ms`` per slice are timed over ``extra_passes`` more passes, so the median of
    milliseconds-scale timings is not one noisy pass. An explainer with ``uses_body`` set (occlusion with a
    body-statistics fill) also gets each slice's ``body`` mask.
    """
    def explain(i: int) -> torch.Tensor:
        extra = {"body": body[i : i + 1]} if body is not None and getattr(explainer, "uses_body", False) else {}
        return explainer(image[i : i + 1], label[i : i + 1], spacing[i : i + 1], **extra)

    explain(0)
    maps, times = [], []
    for i in range(image.shape[0]):
        start = time.perf_counter()
        maps.append(explain(i).detach().float().cpu())
        times.append((time.perf_counter() - start) * 1000.0)
    if float(np.median(times)) < cheap_ms:
        for _ in range(extra_passes):
            for i in range(image.shape[0]):
                start = time.perf_counter()
                explain(i)
                times.append((time.perf_counter() - start) * 1000.0)
    return torch.cat(maps), float(np.median(times))


def compute_localisation(maps: torch.Tensor, label: torch.Tensor, body: torch.Tensor, spacing: torch.Tensor,
                         ring_mm: float, rows: np.ndarray | None = None) -> dict[str, float]:
    """Share of importance (inside the body) in the pancreas + ``ring_mm`` ring, over that region's share of the body.

    Pools the chosen ``rows`` (slices; all when None). Returns ``ring_share``, ``ring_chance``,
    ``ring_over_chance`` and the same for the pancreas alone (``pancreas_*``).
    """
    rows = np.arange(maps.shape[0]) if rows is None else np.flatnonzero(rows)
    result: dict[str, float] = {}
    for name, width in (("ring", ring_mm), ("pancreas", 0.0)):
        inside = region = total = pixels = 0.0
        for i in rows:
            a, b, c, d = compute_region_share(maps[i, 0], label[i, 0], spacing[i].tolist(), width, body[i, 0])
            inside, region, total, pixels = inside + a, region + b, total + c, pixels + d
        share = inside / total if total > 0 else float("nan")
        chance = region / pixels if pixels > 0 else float("nan")
        result[f"{name}_share"], result[f"{name}_chance"] = share, chance
        result[f"{name}_over_chance"] = share / chance if chance and np.isfinite(chance) and chance > 0 else float("nan")
    return result


def _percent(fraction: float) -> str:
    return f"{round(fraction * 100):d}"


def summarise_curves(curves: dict, case_index: np.ndarray, case_names: Sequence[str], fractions: Sequence[float],
                     prefix: str = "") -> tuple[dict[str, dict[str, float]], dict[str, list[float]]]:
    """Per-case AUCs and dice at the reported fractions, and the mean curves.

    Returns:
        ``({case: {metric: value}}, {"visibility_clean": curve, ...})``; metrics are
        ``visibility_auc``, ``deletion_auc``, ``dice_at_P``, ``deletion_dice_at_P`` against the clean
        prediction, and the same with ``_label`` appended against the label.
    """
    per_case: dict[str, dict[str, float]] = {case: {} for case in case_names}
    mean_curves: dict[str, list[float]] = {}
    for protocol in ("visibility", "deletion"):
        for target in ("clean", "label"):
            values = curves[protocol][target]  # (F, B)
            suffix = "" if target == "clean" else "_label"
            mean_curves[f"{protocol}_{target}"] = [float(v) for v in nanmean(values, axis=1)]
            for c, case in enumerate(case_names):
                curve = np.asarray(nanmean(values[:, case_index == c], axis=1), dtype=float)  # (F,)
                per_case[case][f"{prefix}{protocol}_auc{suffix}"] = (compute_auc(fractions, curve)
                                                                    if np.isfinite(curve).all() else float("nan"))
                if prefix:
                    continue
                for fraction in REPORTED_FRACTIONS:
                    name = "dice_at_" if protocol == "visibility" else "deletion_dice_at_"
                    per_case[case][f"{name}{_percent(fraction)}{suffix}"] = float(curve[fraction_index(fractions, fraction)])
    return per_case, mean_curves


def evaluate_explainers(
    utility: torch.nn.Module,
    explainers: dict[str, Callable],
    image: torch.Tensor,
    label: torch.Tensor,
    body: torch.Tensor,
    cases: Sequence[str],
    spacing: torch.Tensor,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    infills: Sequence[str] = ("blur",),
    held_out_infills: Sequence[str] = (),
    ring_mm: float = 10.0,
    seed: int = 0,
    bootstrap: int = 1000,
    blur_sigma: float = DEFAULT_BLUR_SIGMA,
    reference: str | None = None,
) -> dict:
    """Every protocol for every explainer on one set of slices.

    Args:
        utility: the frozen segmentation network (eval mode).
        explainers: ``{name: explainer(image, label, spacing) -> (B, 1, H, W) in [0, 1]}``.
        image: slices (B, C, H, W) windowed to [0, 1]; label: (B, 1, H, W) binary; body: (B, 1, H, W).
        cases: case name per slice (curves are averaged per case, intervals bootstrap over cases).
        spacing: (B, 2) in-plane pixel size per slice, mm.
        fractions: visible shares of the curves.
        infills: the judged infills (specs of :func:`pipeline.noise.infill.parse_infill`); every map is scored under
            each (``methods[name]["infills"][spec]``, ``paired[name]["<spec>_visibility_auc"]``); the first
            also gives the unprefixed metrics and the curves.
        held_out_infills: infills reported apart, as the test of generalisation (same keys).
        ring_mm: ring around the pancreas for the localisation share.
        seed: tie-breaking, random infills and bootstrap.
        bootstrap: resamples of the 95% intervals.
        blur_sigma: sigma of the ``blur`` infill, pixels.
        reference: the method the paired differences start from (default: the first name starting
            with ``unoise``, else none).

    Returns:
        ``{"clean_dice", "utility_forward_ms", "cases", "slices", "methods", "paired", "reference", "maps"}``.
    """
    utility.eval()
    specs = list(dict.fromkeys([*infills, *held_out_infills]))
    if not infills:
        raise ValueError("evaluate_explainers needs at least one judged infill.")
    case_names = sorted(set(cases))
    case_index = np.asarray([case_names.index(c) for c in cases])
    with torch.inference_mode():
        _, utility_ms = time_per_map_ms(lambda x, y, s: utility(x), image, label, spacing)
    clean = predict(utility, image)
    clean_dice = compute_dice(clean, label.to(clean.device).float()).cpu().numpy()
    result: dict = {"clean_dice": float(nanmean(clean_dice)), "utility_forward_ms": utility_ms, "cases": case_names,
                    "slices": int(image.shape[0]), "slices_without_prediction": int((clean.flatten(1).sum(1) == 0).sum()),
                    "fractions": [float(f) for f in fractions], "methods": {}, "maps": {}}
    body_cpu, label_cpu = body.detach().cpu(), label.detach().cpu()
    for name, explainer in explainers.items():
        started = time.perf_counter()
        maps, ms = time_per_map_ms(explainer, image, label, spacing, body=body)
        utility.eval()  # an explainer must not leave the shared utility in train mode
        result["maps"][name] = maps
        for index, spec in enumerate(specs):
            curves = compute_curves(utility, image, maps, body, clean, label, fractions, spec, seed, blur_sigma)
            spec_case, _ = summarise_curves(curves, case_index, case_names, fractions, prefix=f"{spec}_")
            if index == 0:  # the first judged infill: unprefixed, with the dice at p and the curves drawn
                per_case, mean_curves = summarise_curves(curves, case_index, case_names, fractions)
            for case in case_names:
                per_case[case].update(spec_case[case])
        for c, case in enumerate(case_names):
            per_case[case]["ring_over_chance"] = compute_localisation(maps, label_cpu, body_cpu, spacing, ring_mm,
                                                                      case_index == c)["ring_over_chance"]
        entry: dict = {"ms_per_map": ms, "forward_equivalents": ms / utility_ms if utility_ms > 0 else float("nan")}
        metrics = sorted({key for values in per_case.values() for key in values})
        for metric in metrics:
            values = [per_case[c][metric] for c in case_names]
            entry[metric] = float(nanmean(values))
            entry[f"{metric}_ci95"] = list(bootstrap_ci(values, bootstrap, seed=seed))
        # the headline localisation pools all slices; ring_over_chance_ci95 is the interval of the per-case mean
        entry["ring_over_chance_case_mean"] = entry["ring_over_chance"]
        entry.update(compute_localisation(maps, label_cpu, body_cpu, spacing, ring_mm))
        entry["infills"] = {spec: {key: entry[f"{spec}_{key}"] for key in INFILL_KEYS} for spec in specs}
        entry["curves"] = mean_curves
        entry["per_case"] = per_case
        result["methods"][name] = entry
        logger.info("%s: visibility AUC %.3f, deletion AUC %.3f, ring %.2fx, %.1f ms/map (%.0f s)", name,
                    entry["visibility_auc"], entry["deletion_auc"], entry["ring_over_chance"], ms,
                    time.perf_counter() - started)
    reference = reference or next((n for n in explainers if n.startswith("unoise")), None)
    result["reference"] = reference
    metrics = PAIRED_METRICS + tuple(f"{spec}_{key}" for spec in specs for key in ("visibility_auc", "deletion_auc"))
    result["paired"] = paired_against(result["methods"], reference, case_names, bootstrap, seed, metrics) if reference else {}
    return result


def paired_against(methods: dict, reference: str, case_names: Sequence[str], bootstrap: int = 1000,
                   seed: int = 0, metrics: Sequence[str] = PAIRED_METRICS) -> dict[str, dict[str, dict]]:
    """``{method: {metric: {"mean", "ci95", "n"}}}``: the reference minus each other method, paired by case.

    ``metrics`` are per-case keys: the unprefixed ones, and ``<infill>_visibility_auc`` / ``_deletion_auc``
    for every infill.
    """
    base = methods[reference]["per_case"]
    paired: dict[str, dict[str, dict]] = {}
    for name, method in methods.items():
        if name == reference:
            continue
        paired[name] = {metric: paired_difference([base[c][metric] for c in case_names],
                                                  [method["per_case"][c][metric] for c in case_names], bootstrap, seed=seed)
                        for metric in metrics}
    return paired


__all__ = ["PAIRED_METRICS", "compute_localisation", "evaluate_explainers", "paired_against", "summarise_curves",
           "time_per_map_ms"]
