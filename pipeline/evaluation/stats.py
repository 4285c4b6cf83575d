"""Statistics of the evaluation: AUC, bootstrap intervals over cases, paired differences, rank correlation."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch


def nanmean(values: np.ndarray | Sequence[float], axis: int | None = None) -> np.ndarray | float:
    """``np.nanmean`` that returns NaN for all-NaN input without a RuntimeWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        return np.nanmean(values, axis=axis)


def compute_auc(fractions: Sequence[float], values: Sequence[float]) -> float:
    """Area under a curve over [0, 1] by the trapezoid rule (fractions need not be evenly spaced)."""
    x, y = np.asarray(fractions, dtype=float), np.asarray(values, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or x.size < 2:
        raise ValueError(f"need matching 1D fractions and values with >= 2 points, got {x.shape} and {y.shape}.")
    return float(np.trapezoid(y, x))


def bootstrap_ci(values: Sequence[float], samples: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over cases (NaNs dropped; ``scipy.stats.bootstrap``).

    (NaN, NaN) without data; one case, or cases that all agree, give the degenerate interval (v, v).
    """
    from scipy.stats import bootstrap

    data = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    if data.size == 0:
        return float("nan"), float("nan")
    if data.size == 1 or np.all(data == data[0]):
        return float(data[0]), float(data[0])
    result = bootstrap((data,), np.mean, n_resamples=int(samples), confidence_level=level, method="percentile",
                       rng=np.random.default_rng(seed), vectorized=True)
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def paired_difference(first: Sequence[float], second: Sequence[float], samples: int = 1000, level: float = 0.95,
                      seed: int = 0) -> dict[str, float | int | list[float]]:
    """Mean of ``first - second`` over cases with both values, and its bootstrap interval.

    The cases are resampled together, so what two methods share (an easy case, a hard case) cancels:
    "A beats B" means the interval excludes 0.

    Returns:
        ``{"mean", "ci95": [low, high], "n"}``.
    """
    a, b = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired values need one entry per case on both sides, got {a.shape} and {b.shape}.")
    keep = np.isfinite(a) & np.isfinite(b)
    differences = a[keep] - b[keep]
    low, high = bootstrap_ci(differences, samples, level, seed)
    mean = float(differences.mean()) if differences.size else float("nan")
    return {"mean": mean, "ci95": [low, high], "n": int(differences.size)}


def compute_spearman(first: torch.Tensor, second: torch.Tensor, region: torch.Tensor | None = None) -> np.ndarray:
    """Spearman rank correlation per slice of two (B, 1, H, W) maps, over the ``region`` pixels.

    A slice where either map is constant over the region has no ranking to share: its correlation is 0.

    Returns:
        (B,) float array.
    """
    from scipy.stats import spearmanr

    a, b = first.detach().float().cpu().flatten(1).numpy(), second.detach().float().cpu().flatten(1).numpy()
    keep = np.ones_like(a, dtype=bool) if region is None else region.detach().cpu().flatten(1).numpy() > 0.5
    values = []
    for x, y, k in zip(a, b, keep):
        x, y = x[k], y[k]
        values.append(float(spearmanr(x, y).statistic) if x.size > 2 and x.std() > 0 and y.std() > 0 else 0.0)
    return np.asarray(values)


__all__ = ["bootstrap_ci", "compute_auc", "compute_spearman", "nanmean", "paired_difference"]
