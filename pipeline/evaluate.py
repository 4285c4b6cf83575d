"""Faithfulness protocols for any explainer (DESIGN.md section 6), as pure functions.

- Visibility: keep the top-p pixels by importance, replace the rest with a baseline, and measure the
  utility's dice on the result against the label and against its own clean prediction. Higher AUC is
  better.
- Deletion, the mirror: hide the top-p pixels first. Lower AUC is better.
- Baselines for hidden pixels: ``floor`` (0, the window floor), ``mean`` (the slice mean), ``noise``
  (Gaussian with the slice's mean and std), ``blur`` (the slice blurred, sigma 4 px).
- Ties in the ranking (e.g. a constant map) are broken by seeded jitter, so the result does not depend on
  pixel order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.metrics import compute_dice

HIDDEN_BASELINES = ("floor", "mean", "noise", "blur")
DEFAULT_FRACTIONS = tuple(round(0.05 * i, 2) for i in range(21))


def apply_hidden_baseline(image: torch.Tensor, baseline: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """What hidden pixels become: (B, C, H, W) like ``image``."""
    if baseline == "floor":
        return torch.zeros_like(image)
    if baseline == "mean":
        return image.mean(dim=(-2, -1), keepdim=True).expand_as(image).clone()
    if baseline == "noise":
        mean, std = image.mean(dim=(-2, -1), keepdim=True), image.std(dim=(-2, -1), keepdim=True)
        return mean + std * torch.randn(image.shape, generator=generator, dtype=image.dtype).to(image.device)
    if baseline == "blur":
        radius = 12
        x = torch.arange(-radius, radius + 1, dtype=image.dtype)
        kernel = torch.exp(-(x**2) / (2 * 4.0**2))
        kernel = kernel / kernel.sum()
        channels = image.shape[1]
        padded = F.pad(image, (radius, radius, radius, radius), mode="replicate")
        rows = F.conv2d(padded, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)
        return F.conv2d(rows, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    raise ValueError(f"hidden-pixel baseline must be one of {HIDDEN_BASELINES}, got {baseline!r}.")


def rank_pixels(importance: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Rank of every pixel per slice, 0 = most important: (B, H * W) long, ties broken by seeded jitter."""
    flat = importance.detach().float().flatten(1)  # (B, H * W)
    jitter = torch.rand(flat.shape, generator=torch.Generator().manual_seed(seed)) * 1e-6
    order = torch.argsort(flat + jitter, dim=1, descending=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1]).expand_as(order))
    return ranks


def apply_visibility(
    image: torch.Tensor, ranks: torch.Tensor, fraction: float, hidden: torch.Tensor, deletion: bool = False
) -> torch.Tensor:
    """Keep the top ``fraction`` of pixels (or, with ``deletion``, hide them); the rest come from ``hidden``.

    Args:
        image: (B, C, H, W).
        ranks: (B, H * W) from :func:`rank_pixels`.
        fraction: share of pixels in [0, 1].
        hidden: values of hidden pixels, shaped like ``image``.
        deletion: hide the top pixels instead of keeping them.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}.")
    count = int(round(fraction * ranks.shape[1]))
    top = (ranks < count).view(image.shape[0], 1, *image.shape[-2:]).to(image.device)  # (B, 1, H, W)
    keep = ~top if deletion else top
    return torch.where(keep, image, hidden)


def compute_curve(
    utility: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    label: torch.Tensor,
    importance: torch.Tensor,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    baseline: str = "floor",
    deletion: bool = False,
    seed: int = 0,
    clean: torch.Tensor | None = None,
) -> dict[str, np.ndarray]:
    """Visibility (or deletion) curve of one batch of slices.

    Args:
        utility: maps (B, C, H, W) to pancreas logits (B, 1, H, W).
        image: slices windowed to [0, 1], (B, C, H, W).
        label: binary pancreas masks (B, 1, H, W).
        importance: the explainer's maps (B, 1, H, W).
        fractions: shares of pixels kept (deleted).
        baseline: hidden-pixel baseline, see ``HIDDEN_BASELINES``.
        deletion: the deletion protocol.
        seed: for tie-breaking and the ``noise`` baseline.
        clean: the utility's binary prediction on ``image`` (B, 1, H, W), if the caller has it already.

    Returns:
        ``{"fractions": (F,), "dice_label": (F, B), "dice_clean": (F, B)}``, NaN where dice is undefined.
    """
    generator = torch.Generator().manual_seed(seed)
    ranks = rank_pixels(importance, seed)
    hidden = apply_hidden_baseline(image, baseline, generator)
    with torch.inference_mode():
        if clean is None:
            clean = (utility(image) > 0).float()
        dice_label, dice_clean = [], []
        for fraction in fractions:
            pred = (utility(apply_visibility(image, ranks, fraction, hidden, deletion)) > 0).float()
            dice_label.append(compute_dice(pred, label.float()).cpu().numpy())
            dice_clean.append(compute_dice(pred, clean).cpu().numpy())
    return {"fractions": np.asarray(fractions, dtype=float), "dice_label": np.stack(dice_label),
            "dice_clean": np.stack(dice_clean)}


def compute_auc(fractions: Sequence[float], values: Sequence[float]) -> float:
    """Area under a curve over [0, 1] by the trapezoid rule."""
    x, y = np.asarray(fractions, dtype=float), np.asarray(values, dtype=float)
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))


def bootstrap_ci(values: Sequence[float], samples: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over cases (NaNs dropped)."""
    data = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    if data.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(samples, data.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    return float(np.quantile(means, tail)), float(np.quantile(means, 1.0 - tail))


def compute_ranked_spearman(first: torch.Tensor, second: torch.Tensor) -> float:
    """Mean over slices of the Spearman rank correlation of two (B, 1, H, W) maps."""
    from scipy.stats import spearmanr

    values = []
    for a, b in zip(first.flatten(1).numpy(), second.flatten(1).numpy()):
        rho = spearmanr(a, b).statistic if a.std() > 0 and b.std() > 0 else float("nan")
        values.append(float(rho))
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def time_per_map_ms(
    explainer: Callable, image: torch.Tensor, label: torch.Tensor, cheap_ms: float = 200.0, extra_passes: int = 4
) -> tuple[torch.Tensor, float]:
    """Explain slice by slice; return the maps (B, 1, H, W) and the median milliseconds of one slice.

    The first slice is explained once beforehand as warm-up, so set-up costs are not counted. Explainers
    faster than ``cheap_ms`` per slice are timed over ``extra_passes`` more passes, so the median of
    milliseconds-scale timings is not one noisy pass.
    """
    import time

    explainer(image[:1], label[:1])
    maps, times = [], []
    for i in range(image.shape[0]):
        start = time.perf_counter()
        maps.append(explainer(image[i : i + 1], label[i : i + 1]))
        times.append((time.perf_counter() - start) * 1000.0)
    if float(np.median(times)) < cheap_ms:
        for _ in range(extra_passes):
            for i in range(image.shape[0]):
                start = time.perf_counter()
                explainer(image[i : i + 1], label[i : i + 1])
                times.append((time.perf_counter() - start) * 1000.0)
    return torch.cat(maps), float(np.median(times))


def _nanmean(values: np.ndarray | Sequence[float], axis: int | None = None) -> np.ndarray | float:
    """``np.nanmean`` that returns NaN for all-NaN input without a RuntimeWarning."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        return np.nanmean(values, axis=axis)


def evaluate_explainers(
    utility: torch.nn.Module,
    explainers: dict[str, Callable],
    image: torch.Tensor,
    label: torch.Tensor,
    cases: Sequence[str],
    spacing_mm: torch.Tensor,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    baseline: str = "floor",
    ring_mm: float = 10.0,
    seed: int = 0,
    bootstrap: int = 1000,
) -> dict:
    """Every protocol for every explainer on one set of slices; the content of ``evaluation.json``.

    Args:
        utility: the frozen segmentation network (eval mode).
        explainers: ``{name: explainer(image, label) -> (B, 1, H, W) in [0, 1]}``.
        image: slices (B, C, H, W) windowed to [0, 1]; label: (B, 1, H, W) binary.
        cases: case name per slice (curves are averaged per case, intervals bootstrap over cases).
        spacing_mm: (B, 2) in-plane pixel size per slice, for the ring.
        fractions: visible shares of the curves; baseline: hidden-pixel baseline.
        ring_mm: ring around the pancreas for the localisation share.
        seed: tie-breaking, noise baseline and bootstrap.
        bootstrap: resamples for the 95% intervals.

    Returns:
        ``{"clean_dice", "utility_forward_ms", "cases", "methods": {name: {...}}}``.
    """
    from pipeline.metrics import compute_region_share

    utility.eval()
    case_names = sorted(set(cases))
    case_index = np.asarray([case_names.index(c) for c in cases])
    with torch.inference_mode():
        _, utility_ms = time_per_map_ms(lambda x, y: utility(x), image, label)
        clean = (utility(image) > 0).float()  # (B, 1, H, W)
    clean_dice = compute_dice(clean, label.float()).cpu().numpy()
    result: dict = {"clean_dice": float(_nanmean(clean_dice)), "utility_forward_ms": utility_ms, "cases": case_names,
                    "slices": int(image.shape[0]), "fractions": list(map(float, fractions)), "baseline": baseline,
                    "ring_mm": ring_mm, "methods": {}, "maps": {}}
    half = int(np.argmin(np.abs(np.asarray(fractions) - 0.5)))
    for name, explainer in explainers.items():
        maps, ms = time_per_map_ms(explainer, image, label)
        maps = maps.detach().float().cpu()
        utility.eval()  # an explainer must not leave the shared utility in train mode
        result["maps"][name] = maps
        visible = compute_curve(utility, image, label, maps, fractions, baseline, deletion=False, seed=seed, clean=clean)
        deleted = compute_curve(utility, image, label, maps, fractions, baseline, deletion=True, seed=seed, clean=clean)
        per_case: dict[str, dict[str, float]] = {}
        for c, case in enumerate(case_names):
            rows = case_index == c
            vis = _nanmean(visible["dice_label"][:, rows], axis=1)
            dele = _nanmean(deleted["dice_label"][:, rows], axis=1)
            per_case[case] = {"visibility_auc": compute_auc(fractions, vis), "dice_at_50": float(vis[half]),
                              "deletion_auc": compute_auc(fractions, dele)}
        sums = np.zeros(3)
        pancreas = np.zeros(3)
        for i in range(maps.shape[0]):
            sums += compute_region_share(maps[i, 0], label[i, 0], spacing_mm[i].tolist(), ring_mm)
            pancreas += compute_region_share(maps[i, 0], label[i, 0], spacing_mm[i].tolist(), 0.0)
        pixels = float(np.prod(maps.shape[-2:]) * maps.shape[0])
        entry: dict = {
            "curve": {"dice_label": _nanmean(visible["dice_label"], axis=1).tolist(),
                      "dice_clean": _nanmean(visible["dice_clean"], axis=1).tolist()},
            "deletion_curve": {"dice_label": _nanmean(deleted["dice_label"], axis=1).tolist()},
            "dice_at_50_clean": float(_nanmean(visible["dice_clean"][half])),
            "ring_share": sums[0] / sums[2] if sums[2] > 0 else float("nan"),
            "ring_chance": sums[1] / pixels,
            "pancreas_share": pancreas[0] / pancreas[2] if pancreas[2] > 0 else float("nan"),
            "pancreas_chance": pancreas[1] / pixels,
            "ms_per_map": ms,
            "forward_equivalents": ms / utility_ms if utility_ms > 0 else float("nan"),
            "per_case": per_case,
        }
        for metric in ("visibility_auc", "dice_at_50", "deletion_auc"):
            values = [per_case[c][metric] for c in case_names]
            entry[metric] = float(_nanmean(values))
            entry[f"{metric}_ci95"] = list(bootstrap_ci(values, bootstrap, seed=seed))
        result["methods"][name] = entry
    return result


def randomise_layers(network: torch.nn.Module, prefixes: Sequence[str] | None = None, seed: int = 0) -> torch.nn.Module:
    """Re-initialise (in place) the modules whose names start with one of ``prefixes`` (all when None)."""
    torch.manual_seed(seed)
    for name, module in network.named_modules():
        if hasattr(module, "reset_parameters") and (prefixes is None or name.startswith(tuple(prefixes))):
            module.reset_parameters()
        if hasattr(module, "reset_running_stats") and (prefixes is None or name.startswith(tuple(prefixes))):
            module.reset_running_stats()
    return network


def train_noise_briefly(noise_net: torch.nn.Module, utility: torch.nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
                        steps: int, min_scale: float, max_scale: float, perturbation: str, noise_weight: float,
                        learning_rate: float = 3e-3) -> torch.nn.Module:
    """A short U-Noise training (plain loop, for the sanity check) against ``utility``."""
    from pipeline.noise import UNoiseLoss, UNoiseModel

    model = UNoiseModel(noise_net, utility, min_scale, max_scale, perturbation)
    loss_function = UNoiseLoss(noise_weight)
    optimizer = torch.optim.Adam(noise_net.parameters(), lr=learning_rate)
    for step in range(steps):
        image, label = batches[step % len(batches)]
        model.train()
        optimizer.zero_grad()
        loss_function(model(image), label).backward()
        optimizer.step()
    return noise_net.eval()
