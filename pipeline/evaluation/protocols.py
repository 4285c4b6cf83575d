"""Faithfulness protocols for any explainer (docs/architecture.md, "Evaluation"), as pure functions over slices.

Every function takes 2D slices (B, C, H, W) or 3D volumes (B, C, X, Y, Z) alike: "pixels" below are
voxels in 3D, and a "slice" is one volume (or patch).

Everything happens inside the body: a map is judged only on how it ranks body pixels, the visible share
p counts body pixels, and air is never hidden (hiding air costs nothing, so a protocol over the whole
slice rewards any map that ranks "not air" first).

- Visibility: keep the top-p body pixels by importance, replace the other body pixels by an infill
  (:mod:`pipeline.noise.infill`, ``blur`` by default), and measure the utility's dice on the result against
  its own clean prediction (what the explanation explains) and against the label. Higher AUC is better.
- Deletion, the mirror: hide the top-p body pixels first. Lower AUC is better.
- Ties in the ranking (e.g. a constant map) are broken by seeded jitter, so the result does not depend
  on pixel order.
- Against the clean prediction, slices where the utility predicts nothing have nothing to explain and
  are left out (NaN); against the label every slice counts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from pipeline.errors import ConfigError
from pipeline.noise.infill import DEFAULT_BLUR_SIGMA, apply_infill, fill_values, parse_infill
from pipeline.noise.regions import compute_dice

DEFAULT_FRACTIONS = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
REPORTED_FRACTIONS = (0.05, 0.1, 0.2, 0.5)
TARGETS = ("clean", "label")


def rank_in_region(importance: torch.Tensor, region: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Rank of every pixel per slice, 0 = most important inside ``region``; pixels outside rank after all inside.

    Args:
        importance: (B, 1, H, W) maps.
        region: (B, 1, H, W) mask of the pixels that are ranked (the body).
        seed: seeds the tie-breaking jitter (1e-6, below any real difference of maps in [0, 1]).

    Returns:
        (B, H * W) long.
    """
    if importance.ndim != region.ndim or importance.shape[0] != region.shape[0] or importance.shape[2:] != region.shape[2:]:
        raise ValueError(f"importance {tuple(importance.shape)} and region {tuple(region.shape)} must be (B, 1, spatial...) alike.")
    flat = importance.detach().float().cpu().flatten(1)  # (B, H * W)
    inside = region.detach().cpu().flatten(1) > 0.5
    jitter = torch.rand(flat.shape, generator=torch.Generator().manual_seed(seed)) * 1e-6
    score = torch.where(inside, flat + jitter, torch.full_like(flat, -float("inf")))
    order = torch.argsort(score, dim=1, descending=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1]).expand_as(order))
    return ranks


def select_top(ranks: torch.Tensor, counts: torch.Tensor, fraction: float, shape: Sequence[int]) -> torch.Tensor:
    """The top ``fraction`` of each slice's ranked pixels: bool (B, 1, H, W).

    Args:
        ranks: (B, H * W) from :func:`rank_in_region`.
        counts: (B,) pixels in each slice's region.
        fraction: share in [0, 1].
        shape: (B, 1, H, W) of the result.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"fraction must be in [0, 1], got {fraction}.")
    keep = torch.round(fraction * counts.double()).long()  # (B,)
    return (ranks < keep[:, None]).view(*shape)


def apply_visibility(
    image: torch.Tensor,
    ranks: torch.Tensor,
    body: torch.Tensor,
    fraction: float,
    infill: str = "blur",
    deletion: bool = False,
    generator: torch.Generator | None = None,
    blurred: torch.Tensor | None = None,
    blur_sigma: float = DEFAULT_BLUR_SIGMA,
) -> torch.Tensor:
    """Keep the top ``fraction`` of body pixels (or, with ``deletion``, hide them); hidden pixels get the infill.

    Args:
        image: (B, C, H, W) windowed to [0, 1].
        ranks: (B, H * W) from :func:`rank_in_region` over ``body``.
        body: (B, 1, H, W) body mask; pixels outside are never hidden.
        fraction: share of body pixels kept (deleted).
        infill: see :data:`pipeline.noise.infill.INFILLS`.
        deletion: hide the top pixels instead of keeping them.
        generator: for the ``noise`` and ``road`` infills.
        blurred: the blurred slices, if the caller has them.
        blur_sigma: sigma of the ``blur`` infill in pixels.
    """
    inside = body > 0.5  # (B, 1, H, W)
    top = select_top(ranks, inside.flatten(1).sum(1).cpu(), fraction, inside.shape).to(image.device)
    hidden = (top if deletion else ~top) & inside
    return apply_infill(image, hidden, infill, body, generator, blur_sigma, blurred=blurred)


def predict(utility: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """Binary prediction (logit > 0) of the utility, in batches: (B, 1, H, W) float in {0, 1}."""
    with torch.inference_mode():
        return torch.cat([(utility(image[i : i + batch_size]) > 0).float() for i in range(0, image.shape[0], batch_size)])


def compute_curves(
    utility: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    importance: torch.Tensor,
    body: torch.Tensor,
    clean: torch.Tensor,
    label: torch.Tensor,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    infill: str = "blur",
    seed: int = 0,
    blur_sigma: float = DEFAULT_BLUR_SIGMA,
    batch_size: int = 16,
) -> dict[str, object]:
    """Visibility and deletion curves of one set of slices, against the clean prediction and the label.

    Args:
        utility: maps (B, C, H, W) to pancreas logits (B, 1, H, W).
        image: slices windowed to [0, 1], (B, C, H, W).
        importance: the explainer's maps (B, 1, H, W).
        body: (B, 1, H, W) body masks.
        clean: the utility's binary prediction on ``image`` (B, 1, H, W).
        label: binary pancreas masks (B, 1, H, W).
        fractions: shares of body pixels kept (deleted).
        infill: what hidden pixels become (:data:`pipeline.noise.infill.INFILLS`).
        seed: tie-breaking and the random infills.
        blur_sigma: sigma of the ``blur`` infill, pixels.
        batch_size: slices per utility forward.

    Returns:
        ``{"fractions": (F,), "visibility": {"clean": (F, B), "label": (F, B)}, "deletion": {...}}``,
        dice per fraction and slice; NaN where dice is undefined (against ``clean``: every slice whose
        clean prediction is empty).
    """
    device = image.device
    body, clean, label = body.to(device), clean.to(device), label.to(device).float()
    ranks = rank_in_region(importance, body, seed)
    blurred = fill_values(image, infill, blur_sigma=blur_sigma) if parse_infill(infill)[0] == "blur" else None  # once per curve
    nothing = clean.flatten(1).sum(1) == 0  # (B,)
    result: dict[str, object] = {"fractions": np.asarray(fractions, dtype=float)}
    for protocol, deletion in (("visibility", False), ("deletion", True)):
        generator = torch.Generator().manual_seed(seed)
        per_target: dict[str, list[np.ndarray]] = {"clean": [], "label": []}
        for fraction in fractions:
            shown = apply_visibility(image, ranks, body, fraction, infill, deletion, generator, blurred, blur_sigma)
            pred = predict(utility, shown, batch_size)
            versus_clean = compute_dice(pred, clean)
            versus_clean[nothing] = float("nan")
            per_target["clean"].append(versus_clean.cpu().numpy())
            per_target["label"].append(compute_dice(pred, label).cpu().numpy())
        result[protocol] = {target: np.stack(values) for target, values in per_target.items()}
    return result


def check_fractions(fractions: Sequence[float] | None) -> tuple[float, ...]:
    """The curves' visible shares: :data:`DEFAULT_FRACTIONS` when None; else increasing, from 0 to 1, holding the
    reported shares (:data:`REPORTED_FRACTIONS`). A coarser list makes a costly protocol (3D whole volumes) cheaper."""
    if fractions is None:
        return DEFAULT_FRACTIONS
    if isinstance(fractions, str) or not isinstance(fractions, (list, tuple)) or not all(
            isinstance(f, (int, float)) and not isinstance(f, bool) for f in fractions):
        raise ConfigError(f"fractions must be a list of numbers, e.g. \"[0, 0.05, 0.1, 0.2, 0.5, 1]\", got {fractions!r}.")
    values = tuple(float(f) for f in fractions)
    missing = [f for f in (0.0, *REPORTED_FRACTIONS, 1.0) if not any(abs(f - v) < 1e-9 for v in values)]
    if missing or list(values) != sorted(set(values)):
        raise ConfigError(f"fractions {list(values)} must increase from 0 to 1 and hold the reported shares "
                          f"{list(REPORTED_FRACTIONS)}; missing {missing}." if missing else
                          f"fractions {list(values)} must increase strictly from 0 to 1.")
    return values


def fraction_index(fractions: Sequence[float], fraction: float) -> int:
    """Index of ``fraction`` in ``fractions``; ValueError when the curve was not measured there."""
    matches = [i for i, f in enumerate(fractions) if abs(float(f) - fraction) < 1e-9]
    if not matches:
        raise ValueError(f"the curves were not measured at p = {fraction}; fractions are {list(fractions)}.")
    return matches[0]


__all__ = ["DEFAULT_FRACTIONS", "REPORTED_FRACTIONS", "TARGETS", "apply_visibility", "check_fractions", "compute_curves",
           "fraction_index", "predict", "rank_in_region", "select_top"]
