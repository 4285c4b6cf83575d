"""The shortcut benchmark's measures: does an explainer find the cue the utility really relies on?

On phantoms made with ``unoise phantom --shortcut marker`` (:mod:`pipeline.phantom.cue`) every slice with
pancreas carries a small bright cue at a fixed offset from the gland, and every volume has a twin
without it. The utility's reliance on the cue is measured (dice on the slices with the cue against the
same slices of the twin), and per explainer:

- ``cue_share_over_chance``: the share of the body's importance on the cue, over the cue's share of the
  body (1 = no better than a uniform map); ``cue_ring_share_over_chance`` the same for the cue plus a
  ``cue_ring_mm`` ring;
- ``pointing_rate``: over slices, how often the top ``pointing_share`` (1%) of body pixels touches the
  cue, within ``cue_ring_mm`` (the pointing game).

The null maps cannot find the cue: it lies 25 mm or more from the pancreas.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.errors import ConfigError
from pipeline.evaluation.protocols import predict, rank_in_region, select_top
from pipeline.evaluation.stats import bootstrap_ci, nanmean
from pipeline.noise.regions import compute_region, compute_region_share

SHORTCUT_KEYS = ("shortcut", "image_nocue")


def check_shortcut_entries(entries: Sequence[dict[str, Any]]) -> None:
    """Refuse a datalist whose cases lack the cue mask or the twin, naming the first such case."""
    for entry in entries:
        for key in SHORTCUT_KEYS:
            value = entry.get(key)
            if not value or not Path(str(value)).exists():
                raise ConfigError(
                    f"{entry.get('image')}: case {entry.get('case')!r} has no {key!r} file ({value!r}); the shortcut "
                    "evaluation needs phantoms written by `unoise phantom --shortcut marker` (cue masks in "
                    "shortcutsTr/, twins in imagesTr_nocue/).")


def pooled_dice(pred: torch.Tensor, label: torch.Tensor, cases: Sequence[str]) -> dict[str, float]:
    """Per case, the dice of all its slices pooled: 2 sum|P & L| / (sum|P| + sum|L|)."""
    result = {}
    for case in sorted(set(cases)):
        rows = torch.as_tensor([c == case for c in cases])
        shown, truth = pred[rows].float(), label[rows].float()
        total = float(shown.sum() + truth.sum())
        result[case] = 2.0 * float((shown * truth).sum()) / total if total > 0 else float("nan")
    return result


def compute_pointing(maps: torch.Tensor, body: torch.Tensor, region: torch.Tensor, share: float, seed: int = 0) -> np.ndarray:
    """Per slice, whether the top ``share`` of body pixels by importance touches ``region``: bool (B,)."""
    ranks = rank_in_region(maps, body, seed)
    counts = (body > 0.5).flatten(1).sum(1).cpu()
    top = select_top(ranks, torch.clamp(counts, min=1), share, maps.shape)
    top = top | (ranks == 0).view(*maps.shape)  # at least the single most important pixel
    return ((top & (region > 0.5)).flatten(1).any(1)).numpy()


def _over_chance(sums: np.ndarray) -> float:
    """(inside / total importance) / (region / counted pixels) from pooled :func:`compute_region_share` sums."""
    if sums[2] <= 0 or sums[1] <= 0:
        return float("nan")
    return float((sums[0] / sums[2]) / (sums[1] / sums[3]))


def evaluate_shortcut(utility: torch.nn.Module, maps: dict[str, torch.Tensor], data: dict[str, Any],
                      cue_ring_mm: float = 5.0, pointing_share: float = 0.01, bootstrap: int = 1000,
                      seed: int = 0) -> dict[str, Any]:
    """Reliance on the cue and each explainer's cue share and pointing rate, on the slices that carry the cue.

    Args:
        utility: the frozen segmentation network.
        maps: ``{method: (N, 1, H, W)}`` on the evaluated slices.
        data: the evaluated slices (``image``, ``image_nocue``, ``label``, ``body``, ``shortcut``,
            ``spacing``, ``cases``), see :func:`pipeline.evaluation.slices.load_evaluation_slices`.
        cue_ring_mm: ring around the cue that still counts as "on the cue".
        pointing_share: share of body pixels of the pointing game (0.01: the top 1%).
        bootstrap, seed: intervals over cases.

    Returns:
        ``{"dice_with_cue", "dice_without_cue", "dice_drop" (+ ``_ci95``), "slices", "cases",
        "cue_ring_mm", "pointing_share", "methods": {name: {"cue_share_over_chance",
        "cue_ring_share_over_chance", "pointing_rate", ... per case and intervals}}}``.
    """
    cue = data["shortcut"].detach().cpu()
    rows = cue.flatten(1).sum(1) > 0  # slices with the cue
    if not bool(rows.any()):
        raise ConfigError("no evaluated slice carries the cue; were the phantoms written with --shortcut marker?")
    cases = [c for c, keep in zip(data["cases"], rows.tolist()) if keep]
    case_names = sorted(set(cases))
    label, body, spacing = data["label"].detach().cpu()[rows], data["body"].detach().cpu()[rows], data["spacing"][rows]
    cue = cue[rows]  # (N, 1, H, W): the slices with the cue
    with_cue = pooled_dice(predict(utility, data["image"][rows]).cpu(), label, cases)
    without_cue = pooled_dice(predict(utility, data["image_nocue"][rows]).cpu(), label, cases)
    drops = [with_cue[c] - without_cue[c] for c in case_names]
    result: dict[str, Any] = {
        "dice_with_cue": float(nanmean([with_cue[c] for c in case_names])),
        "dice_without_cue": float(nanmean([without_cue[c] for c in case_names])),
        "dice_drop": float(nanmean(drops)), "dice_drop_ci95": list(bootstrap_ci(drops, bootstrap, seed=seed)),
        "per_case": {c: {"dice_with_cue": with_cue[c], "dice_without_cue": without_cue[c]} for c in case_names},
        "slices": int(rows.sum()), "cases": len(case_names), "cue_ring_mm": cue_ring_mm, "pointing_share": pointing_share,
        "methods": {},
    }
    region = torch.stack([torch.as_tensor(compute_region(cue[i, 0], spacing[i].tolist(), cue_ring_mm))
                          for i in range(int(rows.sum()))])[:, None]  # (N, 1, H, W) cue + ring
    case_index = np.asarray([case_names.index(c) for c in cases])
    for name, method_maps in maps.items():
        chosen = method_maps[rows]
        hits = compute_pointing(chosen, body, region, pointing_share, seed)
        entry: dict[str, Any] = {"pointing_rate": float(hits.mean()), "per_case": {}}
        for key, ring in (("cue", 0.0), ("cue_ring", cue_ring_mm)):
            sums = np.zeros(4)
            for c, case in enumerate(case_names):
                totals = np.zeros(4)
                for i in np.flatnonzero(case_index == c):
                    totals += compute_region_share(chosen[i, 0], cue[i, 0], spacing[i].tolist(), ring, body[i, 0])
                sums += totals
                entry["per_case"].setdefault(case, {"pointing_rate": float(hits[case_index == c].mean())})
                entry["per_case"][case][f"{key}_share_over_chance"] = _over_chance(totals)
            entry[f"{key}_share_over_chance"] = _over_chance(sums)
            entry[f"{key}_share"] = float(sums[0] / sums[2]) if sums[2] > 0 else float("nan")
            entry[f"{key}_chance"] = float(sums[1] / sums[3]) if sums[3] > 0 else float("nan")
        for metric in ("cue_share_over_chance", "cue_ring_share_over_chance", "pointing_rate"):
            entry[f"{metric}_ci95"] = list(bootstrap_ci([entry["per_case"][c][metric] for c in case_names], bootstrap, seed=seed))
        result["methods"][name] = entry
    return result


__all__ = ["SHORTCUT_KEYS", "check_shortcut_entries", "compute_pointing", "evaluate_shortcut", "pooled_dice"]
