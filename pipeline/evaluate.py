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
        return mean + std * torch.randn(image.shape, generator=generator, dtype=image.dtype)
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
    top = (ranks < count).view(image.shape[0], 1, *image.shape[-2:])  # (B, 1, H, W)
    keep = ~top if deletion else top
    return torch.where(keep, image, hidden)


def compute_dice(pred: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Dice per slice of binary (B, 1, H, W) masks; NaN where both are empty (excluded from means)."""
    inter = (pred * reference).flatten(1).sum(1)
    total = pred.flatten(1).sum(1) + reference.flatten(1).sum(1)
    return torch.where(total > 0, 2 * inter / total.clamp_min(1e-8), torch.full_like(total, float("nan")))


def compute_curve(
    utility: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    label: torch.Tensor,
    importance: torch.Tensor,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    baseline: str = "floor",
    deletion: bool = False,
    seed: int = 0,
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

    Returns:
        ``{"fractions": (F,), "dice_label": (F, B), "dice_clean": (F, B)}``, NaN where dice is undefined.
    """
    generator = torch.Generator().manual_seed(seed)
    ranks = rank_pixels(importance, seed)
    hidden = apply_hidden_baseline(image, baseline, generator)
    with torch.inference_mode():
        clean = (utility(image) > 0).float()
        dice_label, dice_clean = [], []
        for fraction in fractions:
            pred = (utility(apply_visibility(image, ranks, fraction, hidden, deletion)) > 0).float()
            dice_label.append(compute_dice(pred, label.float()).numpy())
            dice_clean.append(compute_dice(pred, clean).numpy())
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
