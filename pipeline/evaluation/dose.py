"""The dose audit: how a segmentation model, its U-Noise maps and a denoiser in front of it fare at lower dose.

For each noise model (:mod:`pipeline.data.dose`) and dose fraction, every labelled case goes through the bundle's own
preprocessing with the dose's noise inserted (``common.json``'s ``SimulateDosed``, seeded per case and dose, so each
variant below sees the same noisy scan) and, where asked, a denoiser after it (``Denoised``):

- **image quality**: PSNR and SSIM (``monai.metrics``) of the noisy scan and of each denoiser's output against the
  full-dose scan, in HU (peak ``psnr_peak_hu``) and in the reading window (peak 1), slice by slice, mean per case;
- **the utility**: 3D dice against the label and against its own full-dose prediction, without and with the chosen
  denoiser in front of it;
- **its U-Noise maps** (with a noise checkpoint): Spearman rank correlation with the full-dose map inside the body,
  and the importance share of pancreas + ring, on the slices with pancreas.

Means over cases carry percentile-bootstrap intervals; "won back" is the paired difference (with - without) at the
lowest dose beside the dice lost there (full dose - lowest dose), both over the same cases; each denoiser's gain
over the noisy scan (PSNR, SSIM) and Noise2Noise against Noise2Clean are paired differences too.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from monai.inferers import SlidingWindowInferer
from monai.metrics import PSNRMetric, SSIMMetric

from pipeline.data import build_noise_model, build_volume_transforms, check_dose, resolve_window, water_cylinder
from pipeline.errors import ConfigError
from pipeline.evaluation.stats import bootstrap_ci, compute_spearman, paired_difference
from pipeline.noise.regions import compute_dice, compute_region_share

logger = logging.getLogger(__name__)

HU_CHAIN = {"data_window": [0.0, 1.0], "window_clip": False, "data_spatial_size": None}  # the chain's HU, unscaled


def check_audit_settings(doses: Sequence[float], noise_models: Sequence[str], denoise_with: str | None,
                         denoisers: dict[str, str] | None) -> list[float]:
    """The dose levels, sorted from full dose down (1 added when missing); refuses no model and unknown denoisers
    (an unknown model's name is refused where the models are built, :func:`pipeline.data.build_noise_model`)."""
    levels = sorted({1.0, *(check_dose(d, "doses") for d in doses)}, reverse=True)
    if len(levels) < 2:
        raise ConfigError(f"doses lists at least one fraction below 1 to audit, got {list(doses)}.")
    if not noise_models:
        raise ConfigError("noise_models names at least one dose noise model: image, projection.")
    if denoise_with and denoise_with not in (denoisers or {}):
        raise ConfigError(f"denoise_with {denoise_with!r} is not one of the denoisers given ({sorted(denoisers or {})}); "
                          f"pass it as --denoiser {denoise_with}=RUN/checkpoints/last.pt.")
    return levels


def summary(values: Sequence[float], seed: int = 0, samples: int = 1000) -> dict[str, Any]:
    """Mean over cases with its bootstrap interval and n; None where no case has a finite value (the PSNR of a scan
    against itself)."""
    finite = [float(v) for v in values if np.isfinite(v)]
    if not finite:
        return {"mean": None, "ci95": [None, None], "n": 0}
    low, high = bootstrap_ci(finite, samples, seed=seed)
    return {"mean": float(np.mean(finite)), "ci95": [low, high], "n": len(finite)}


def image_quality(volume: torch.Tensor, reference: torch.Tensor, peak_hu: float, window: Sequence[float]) -> dict[str, float]:
    """PSNR and SSIM of a (1, X, Y, Z) HU volume against the reference, per axial slice, averaged: in HU and in window."""
    slices = lambda v: v[0].permute(2, 0, 1)[:, None].float()  # noqa: E731  (Z, 1, X, Y)
    low, high = (float(w) for w in window)
    windowed = lambda v: ((v - low) / (high - low)).clamp(0.0, 1.0)  # noqa: E731
    a, b = slices(volume), slices(reference)
    out = {}
    for suffix, (x, y, peak) in {"": (a, b, peak_hu), "_window": (windowed(a), windowed(b), 1.0)}.items():
        out[f"psnr{suffix}"] = float(PSNRMetric(max_val=peak)(x, y).mean())
        out[f"ssim{suffix}"] = float(SSIMMetric(spatial_dims=2, data_range=peak)(x, y).mean())
    return out


def agreement(pred: torch.Tensor, full_dose: torch.Tensor) -> float:
    """Dice of a prediction against the full-dose one; 1 where both are empty (they agree: nothing found either way)."""
    value = float(compute_dice(pred[None], full_dose[None])[0])
    return 1.0 if math.isnan(value) else value


def run_network(network: Callable[[torch.Tensor], torch.Tensor], volume: torch.Tensor, spatial_dims: int,
                roi_size: Sequence[int] | None, batch_size: int = 16) -> torch.Tensor:
    """A network's output over a (C, X, Y, Z) volume: slice by slice (2D) or by sliding windows (3D); (1, X, Y, Z)."""
    with torch.no_grad():
        if spatial_dims == 3:
            inferer = SlidingWindowInferer(roi_size=list(roi_size or [64, 64, 32]), sw_batch_size=1, overlap=0.25, mode="gaussian")
            return inferer(volume[None].float(), network)[0, :1]
        slices = volume.permute(3, 0, 1, 2).float()  # (Z, C, X, Y)
        out = torch.cat([network(slices[i:i + batch_size]) for i in range(0, len(slices), batch_size)])
        return out[:, :1].permute(1, 2, 3, 0)


def noise_check(models: dict[str, Any], levels: Sequence[float], spacing_mm: Sequence[float], size: int,
                seed: int) -> dict[str, Any]:
    """Each model's inserted noise on a water cylinder: HU std in its central disc per dose beside the prediction.

    The image model predicts the std outright (``full_dose_std * sqrt(1 / d - 1)``). The projection model's level
    depends on the object, its photons and views; what it predicts is the scaling, so its prediction at each lower
    dose is the measured std at the highest fraction below 1 times ``sqrt((1 / d - 1) / (1 / d_ref - 1))``. The
    neighbour correlation (next pixel along a row) is measured too: white noise has none, CT noise has.
    """
    cylinder = water_cylinder((size, size), spacing_mm)
    radius = min(size * float(spacing_mm[0]), 320.0) / 2  # the cylinder, or the field of view where it is wider
    centre = water_cylinder((size, size), spacing_mm, radius) == 0.0  # the central disc, half the cylinder's radius
    result: dict[str, Any] = {}
    for name, model in models.items():
        rows, reference = [], None
        for k, dose in enumerate(levels):
            if dose == 1.0:
                continue
            noise = model.sample(cylinder, spacing_mm, dose, np.random.default_rng([seed, k, 17]))
            measured = float(noise[centre].std())
            pair = centre[1:, :] & centre[:-1, :]
            correlation = float(np.corrcoef(noise[1:, :][pair], noise[:-1, :][pair])[0, 1])
            if hasattr(model, "predicted_std"):
                predicted, basis = float(model.predicted_std(dose)), "full_dose_std * sqrt(1/d - 1)"
            else:
                reference = reference or (dose, measured)
                predicted = reference[1] * math.sqrt((1 / dose - 1) / (1 / reference[0] - 1))
                basis = f"scaling sqrt(1/d - 1) from the measured std at d = {reference[0]:g}"
            rows.append({"dose": dose, "measured_std_hu": measured, "predicted_std_hu": predicted,
                         "ratio": measured / predicted if predicted else float("nan"), "neighbour_correlation": correlation,
                         "prediction": basis})
        result[name] = {"region": f"central disc of a {320:g} mm water cylinder, {int(centre.sum())} pixels",
                        "spacing_mm": [float(s) for s in spacing_mm[:2]], "levels": rows}
    return result


def run_dose_audit(
    entries: Sequence[dict[str, Any]],
    utility: torch.nn.Module,
    utility_meta: dict[str, Any],
    pancreas_labels: Sequence[int],
    doses: Sequence[float],
    noise_models: Sequence[str],
    noise_settings: dict[str, dict[str, Any]],
    denoisers: dict[str, str] | None = None,
    denoise_with: str | None = None,
    noise_net: torch.nn.Module | None = None,
    spatial_dims: int = 2,
    ring_mm: float = 10.0,
    psnr_peak_hu: float = 2000.0,
    metric_window: str | Sequence[float] = "pancreas",
    seed: int = 0,
    bootstrap: int = 1000,
    utility_bundle: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The audit's figures (see the module's docstring) over ``entries`` (labelled cases), as a JSON-ready dict."""
    levels = check_audit_settings(doses, noise_models, denoise_with, denoisers)
    denoisers = dict(denoisers or {})
    window = resolve_window(metric_window)
    models = {name: build_noise_model(name, **dict(noise_settings.get(name, {}))) for name in noise_models}
    utility_window = utility_meta.get("window", "pancreas")
    utility_size = None if utility_bundle else utility_meta.get("spatial_size")
    roi = utility_meta.get("roi_size")

    @functools.cache  # one chain per variant, built once (a denoiser's checkpoint is read once), run for every case
    def transforms(dose: float, model: str, denoiser: str | None, hu: bool) -> Callable[[dict[str, Any]], dict[str, Any]]:
        settings = {"dose": dose, "dose_noise_model": model, "dose_noise_settings": dict(noise_settings.get(model, {})),
                    "dose_seed": seed, "denoiser_checkpoint": denoisers.get(denoiser) if denoiser else None}
        if utility_bundle:
            settings["utility_bundle"] = utility_bundle
        if hu:
            settings = {**settings, **HU_CHAIN, "utility_bundle": None}
        return build_volume_transforms(utility_window, None if hu else utility_size, pancreas_labels, settings=settings)

    def chain(dose: float, model: str, denoiser: str | None, hu: bool, entry: dict[str, Any]) -> dict[str, Any]:
        return transforms(dose, model, denoiser, hu)(dict(entry))

    cases: list[dict[str, Any]] = []
    spacing, grid = None, None
    for number, entry in enumerate(entries, 1):
        case = str(entry.get("case", number))
        if progress:
            progress(f"case {number}/{len(entries)}: {case}")
        clean = chain(1.0, noise_models[0], None, True, entry)
        if spacing is None:
            affine = np.asarray(clean["image"].affine, np.float64)
            spacing, grid = np.linalg.norm(affine[:3, :3], axis=0), int(max(clean["image"].shape[1:3]))
        reference = chain(1.0, noise_models[0], None, False, entry)
        label = torch.as_tensor(reference["label"]).float()
        if label.sum() == 0:
            logger.info("%s: no pancreas, left out of the dose audit", case)
            continue
        full_pred = (run_network(utility, torch.as_tensor(reference["image"]), spatial_dims, roi) > 0).float()
        record: dict[str, Any] = {"case": case, "levels": []}
        full_maps = _maps(noise_net, reference, spatial_dims, roi)
        for model in noise_models:
            for dose in levels:
                row: dict[str, Any] = {"model": model, "dose": dose}
                noisy_hu = clean if dose == 1.0 else chain(dose, model, None, True, entry)
                row["quality"] = {"noisy": image_quality(torch.as_tensor(noisy_hu["image"]), torch.as_tensor(clean["image"]),
                                                         psnr_peak_hu, window)}
                for name in denoisers:
                    out = chain(dose, model, name, True, entry)
                    row["quality"][name] = image_quality(torch.as_tensor(out["image"]), torch.as_tensor(clean["image"]),
                                                         psnr_peak_hu, window)
                variants = {"without": None, **({"with": denoise_with} if denoise_with else {})}
                row["dice"], row["maps"] = {}, {}
                for variant, denoiser in variants.items():
                    data = reference if dose == 1.0 and denoiser is None else chain(dose, model, denoiser, False, entry)
                    pred = (run_network(utility, torch.as_tensor(data["image"]), spatial_dims, roi) > 0).float()
                    row["dice"][variant] = {"label": float(compute_dice(pred[None], label[None])[0]),
                                            "full_dose": agreement(pred, full_pred)}
                    if full_maps is not None:
                        row["maps"][variant] = _map_shift(_maps(noise_net, data, spatial_dims, roi), full_maps, reference,
                                                          spacing, ring_mm)
                record["levels"].append(row)
        cases.append(record)
    if not cases:
        raise ConfigError("none of the audited cases holds pancreas; check the split and pancreas_labels.")
    result = {
        "cases": len(cases), "doses": levels, "noise_models": list(noise_models),
        "noise_settings": {name: vars(model) for name, model in models.items()},
        "denoisers": denoisers, "denoise_with": denoise_with, "psnr_peak_hu": psnr_peak_hu, "metric_window": list(window),
        "noise_check": noise_check(models, levels, spacing, grid, seed),
        "levels": _levels(cases, noise_models, levels, list(denoisers), bool(denoise_with), bootstrap, seed),
        "per_case": cases,
    }
    result["recovery"] = _recovery(cases, noise_models, levels, bootstrap, seed) if denoise_with else None
    result["n2n_vs_n2c"] = _pairs(cases, noise_models, levels, "n2n", "n2c", bootstrap, seed) if {"n2n", "n2c"} <= set(denoisers) else None
    result["gain_over_noisy"] = {name: {metric: _pairs(cases, noise_models, levels, name, "noisy", bootstrap, seed, metric)
                                        for metric in ("psnr", "ssim")} for name in denoisers}
    return result


def _maps(noise_net: torch.nn.Module | None, data: dict[str, Any], spatial_dims: int, roi: Any) -> torch.Tensor | None:
    """U-Noise importance over a volume, 1 - sigmoid(noise), (1, X, Y, Z); None without a noise model."""
    if noise_net is None:
        return None
    return 1.0 - torch.sigmoid(run_network(noise_net, torch.as_tensor(data["image"]), spatial_dims, roi))


def _map_shift(maps: torch.Tensor, full: torch.Tensor, reference: dict[str, Any], spacing: np.ndarray,
               ring_mm: float) -> dict[str, float]:
    """Rank correlation with the full-dose map (body pixels) and pancreas + ring share, over the pancreas slices."""
    label, body = torch.as_tensor(reference["label"]).float(), torch.as_tensor(reference["body"]).float()
    keep = [z for z in range(label.shape[-1]) if label[..., z].sum() > 0]
    rho = compute_spearman(maps[..., keep].permute(3, 0, 1, 2), full[..., keep].permute(3, 0, 1, 2),
                           body[..., keep].permute(3, 0, 1, 2))
    parts = np.array([compute_region_share(maps[0, ..., z], label[0, ..., z], spacing[:2], ring_mm, body[0, ..., z])
                      for z in keep])
    return {"rank_correlation": float(np.mean(rho)), "region_share": float(parts[:, 0].sum() / max(parts[:, 2].sum(), 1e-12)),
            "region_chance": float(parts[:, 1].sum() / max(parts[:, 3].sum(), 1.0))}


def _values(cases: list[dict[str, Any]], model: str, dose: float, path: Sequence[str]) -> list[float]:
    out = []
    for case in cases:
        row = next(r for r in case["levels"] if r["model"] == model and r["dose"] == dose)
        node: Any = row
        for part in path:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        out.append(float(node) if isinstance(node, (int, float)) else float("nan"))
    return out


def _levels(cases: list[dict[str, Any]], models: Sequence[str], levels: Sequence[float], denoisers: list[str],
            with_denoiser: bool, bootstrap: int, seed: int) -> list[dict[str, Any]]:
    rows = []
    for model in models:
        for dose in levels:
            row: dict[str, Any] = {"model": model, "dose": dose}
            for metric in ("psnr", "ssim", "psnr_window", "ssim_window"):
                row[metric] = {name: summary(_values(cases, model, dose, ["quality", name, metric]), seed, bootstrap)
                               for name in ["noisy", *denoisers]}
            variants = ["without", "with"] if with_denoiser else ["without"]
            row["dice"] = {v: {ref: summary(_values(cases, model, dose, ["dice", v, ref]), seed, bootstrap)
                               for ref in ("label", "full_dose")} for v in variants}
            if cases[0]["levels"][0].get("maps"):
                row["maps"] = {v: {key: summary(_values(cases, model, dose, ["maps", v, key]), seed, bootstrap)
                                   for key in ("rank_correlation", "region_share", "region_chance")} for v in variants}
            rows.append(row)
    return rows


def _recovery(cases: list[dict[str, Any]], models: Sequence[str], levels: Sequence[float], bootstrap: int,
              seed: int) -> dict[str, Any]:
    """At the lowest dose: dice (against the label) lost without the denoiser, and won back with it, paired."""
    lowest, out = levels[-1], {}
    for model in models:
        full = _values(cases, model, 1.0, ["dice", "without", "label"])
        without = _values(cases, model, lowest, ["dice", "without", "label"])
        with_ = _values(cases, model, lowest, ["dice", "with", "label"])
        lost = paired_difference(full, without, bootstrap, seed=seed)
        won = paired_difference(with_, without, bootstrap, seed=seed)
        out[model] = {"dose": lowest, "dice_lost": lost, "dice_won_back": won,
                      "share_won_back": won["mean"] / lost["mean"] if lost["mean"] > 0 else None}
    return out


def _pairs(cases: list[dict[str, Any]], models: Sequence[str], levels: Sequence[float], first: str, second: str,
           bootstrap: int, seed: int, metric: str = "psnr") -> dict[str, Any]:
    """Paired difference of ``metric`` (PSNR in HU by default) ``first - second`` per model and lower dose."""
    return {model: {f"{dose:g}": paired_difference(_values(cases, model, dose, ["quality", first, metric]),
                                                   _values(cases, model, dose, ["quality", second, metric]), bootstrap, seed=seed)
                    for dose in levels if dose < 1.0} for model in models}


def denoise_summary(result: dict[str, Any], model: str) -> dict[str, Any]:
    """``denoise.json``: per dose level of one noise model, ``psnr`` and ``ssim`` per variant and ``dice`` without / with."""
    levels = {}
    for row in result["levels"]:
        if row["model"] != model:
            continue
        levels[f"{row['dose']:g}"] = {"psnr": row["psnr"], "ssim": row["ssim"], "psnr_window": row["psnr_window"],
                                      "ssim_window": row["ssim_window"],
                                      "dice": {v: row["dice"][v]["label"] for v in row["dice"]}}
    return {"noise_model": model, "cases": result["cases"], "denoise_with": result["denoise_with"], "levels": levels,
            "recovery": (result.get("recovery") or {}).get(model), "n2n_vs_n2c": (result.get("n2n_vs_n2c") or {}).get(model),
            "gain_over_noisy": {name: {metric: block[metric].get(model) for metric in block}
                                for name, block in (result.get("gain_over_noisy") or {}).items()},
            "source": "dose_audit.json (unoise audit-dose)"}


__all__ = ["agreement", "check_audit_settings", "denoise_summary", "image_quality", "noise_check", "run_dose_audit", "run_network", "summary"]
