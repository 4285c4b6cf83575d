"""Which pixels drive a sampling model's disagreement? Scored where the multi-rater phantom planted the cause.

In the multi-rater phantom (:mod:`pipeline.phantom.raters`) the raters include a borderline lesion on every case that
shows a remote sign, 40 mm away, and split on it otherwise. A Probabilistic U-Net that learned this is sure about the
lesion when the sign shows and unsure without it: the sign is a known image cause of (the absence of) uncertainty,
placed away from where the uncertainty sits. On every slice that shows the sign, each map is scored as the shortcut
benchmark scores a cue:

- **share over chance**: the map's importance mass on the sign (+ ``ring_mm``), over the sign's share of the body;
- **pointing**: whether the top ``pointing_share`` of body pixels by importance touches the sign (+ ``ring_mm``).

Maps: each U-Noise model given (one trained against the uncertainty, ``--utility-output uncertainty``: the
uncertainty-importance map; one against the segmentation), the uncertainty map itself (predictive entropy), the
segmentation null map and a random map. ``reliance`` checks the premise: the predictive entropy on the lesion with
the sign and on the same slices without it (the twin ``image_nosign``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from pipeline.evaluation.shortcut import _over_chance, compute_pointing
from pipeline.evaluation.stats import bootstrap_ci, paired_difference
from pipeline.explain.null import RandomMap, SegmentationMap
from pipeline.networks.probabilistic import UncertaintyView
from pipeline.noise import UNoiseExplainer
from pipeline.noise.regions import compute_region, compute_region_share


def _rows(volume: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(C, H, W, Z) -> the chosen slices (N, C, H, W)."""
    return volume.permute(3, 0, 1, 2)[rows]


@torch.no_grad()
def evaluate_attribution(
    view: UncertaintyView,
    noise_models: dict[str, torch.nn.Module],
    cases: Sequence[dict[str, Any]],
    transform: Callable[[dict[str, Any]], dict[str, Any]],
    ring_mm: float = 5.0,
    pointing_share: float = 0.01,
    device: torch.device | str = "cpu",
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Score each map on the planted cause of the sampler's (lack of) uncertainty.

    Args:
        view: the Probabilistic U-Net's uncertainty (:class:`pipeline.networks.UncertaintyView`), eval mode.
        noise_models: ``{name: noise network}``; each map is U-Noise's importance of that model.
        cases: entries of the multi-rater phantom with ``sign``, ``lesion`` and ``image_nosign``; cases without the
            sign are left out (they hold no cause to find).
        transform: the chain to the utility's grid with those keys (``image`` and ``image_nosign`` windowed,
            ``sign``, ``lesion`` and ``body`` binary), (1, H, W, Z) each.
        ring_mm: ring around the sign that still counts as on it.
        pointing_share: the pointing game's share of body pixels.
        device: where the networks run.
        bootstrap, seed: intervals over cases; ``seed`` also seeds the random map.

    Returns:
        ``{"cases", "slices", "ring_mm", "pointing_share", "reliance": {"entropy_on_lesion_with_sign",
        "..._without_sign", "difference"}, "methods": {name: {"share_over_chance", "pointing_rate", per case,
        intervals}}}``; ``{"skipped": reason}`` when no case shows the sign.
    """
    explainers: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
        name: (lambda image, spacing, e=UNoiseExplainer(net, view).to(device): e(image)[:, :1]) for name, net in noise_models.items()}
    explainers["uncertainty"] = lambda image, spacing: view.predictive_entropy(image)
    segmentation, random = SegmentationMap(view.network), RandomMap(seed)
    explainers["segmentation"] = lambda image, spacing: segmentation(image, spacing=spacing)
    explainers["random"] = lambda image, spacing: random(image)
    totals = {name: {} for name in explainers}
    hits: dict[str, dict[str, np.ndarray]] = {name: {} for name in explainers}
    with_sign, without_sign, slices = {}, {}, 0
    for entry in cases:
        if not entry.get("has_sign"):
            continue
        data = transform({key: entry[key] for key in ("image", "image_nosign", "sign", "lesion")})
        sign = torch.as_tensor(data["sign"])
        rows = sign[0].flatten(0, 1).sum(0) > 0  # (Z,) the slices showing the sign
        if not bool(rows.any()):
            continue
        case = str(entry.get("case"))
        image = _rows(torch.as_tensor(data["image"]).float(), rows).to(device)  # (N, 1, H, W)
        twin = _rows(torch.as_tensor(data["image_nosign"]).float(), rows).to(device)
        cause, lesion = _rows(sign, rows), _rows(torch.as_tensor(data["lesion"]), rows) > 0.5
        body = _rows(torch.as_tensor(data["body"]), rows)
        affine = np.asarray(data["image"].affine)
        spacing_mm = np.linalg.norm(affine[:3, :3], axis=0)[:2].tolist()
        spacing = torch.tensor([spacing_mm] * len(image))
        entropy = view.predictive_entropy(image).cpu()
        with_sign[case] = float(entropy[lesion].mean()) if lesion.any() else float("nan")
        without_sign[case] = float(view.predictive_entropy(twin).cpu()[lesion].mean()) if lesion.any() else float("nan")
        region = torch.stack([torch.as_tensor(compute_region(cause[i, 0], spacing_mm, ring_mm)) for i in range(len(image))])[:, None]
        for name, explain in explainers.items():
            maps = entropy if name == "uncertainty" else explain(image, spacing).float().cpu()  # (N, 1, H, W); computed once
            hits[name][case] = compute_pointing(maps, body, region, pointing_share, seed)
            totals[name][case] = np.sum([np.asarray(compute_region_share(maps[i, 0], cause[i, 0], spacing_mm, ring_mm, body[i, 0]))
                                         for i in range(len(image))], axis=0)  # pooled over the case's slices
        slices += int(rows.sum())
    names = sorted(with_sign)
    if not names:
        return {"skipped": "no evaluated case shows the remote sign (the multi-rater phantom: unoise phantom --raters N)"}
    methods = {}
    for name in explainers:
        per_case = {c: {"share_over_chance": _over_chance(totals[name][c]), "pointing_rate": float(hits[name][c].mean())}
                    for c in names}
        pooled = sum(totals[name][c] for c in names)
        methods[name] = {"share_over_chance": _over_chance(pooled),
                         "pointing_rate": float(np.concatenate([hits[name][c] for c in names]).mean()), "per_case": per_case,
                         **{f"{key}_ci95": list(bootstrap_ci([per_case[c][key] for c in names], bootstrap, seed=seed))
                            for key in ("share_over_chance", "pointing_rate")}}
    return {
        "cases": len(names), "slices": slices, "ring_mm": ring_mm, "pointing_share": pointing_share,
        "reliance": {"entropy_on_lesion_with_sign": float(np.nanmean([with_sign[c] for c in names])),
                     "entropy_on_lesion_without_sign": float(np.nanmean([without_sign[c] for c in names])),
                     "difference": paired_difference([without_sign[c] for c in names], [with_sign[c] for c in names],
                                                     bootstrap, seed=seed),
                     "note": "predictive entropy (bits) on the lesion, the same slices without the sign minus with it"},
        "methods": methods,
    }


__all__ = ["evaluate_attribution"]
