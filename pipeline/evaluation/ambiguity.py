"""Metrics for ambiguous segmentation: several raters per case, a model that samples several masks per case.

As in Kohl et al. 2018 (Probabilistic U-Net) and Kohl et al. 2019 (Hierarchical Probabilistic U-Net) on LIDC.

Definitions and conventions:

- ``d(A, B) = 1 - IoU(A, B)`` for binary masks. Two empty masks agree perfectly: IoU 1, d 0. One empty mask and one
  non-empty mask: IoU 0, d 1 (PHiSeg-code's ``utils.generalised_energy_distance`` uses the same two rules).
- ``D^2_GED = 2 E[d(S, Y)] - E[d(S, S')] - E[d(Y, Y')]`` over samples ``S_1..S_m`` and raters ``Y_1..Y_n`` of one
  case. Each expectation averages over *all* ordered pairs, ``i == j`` included (whose d is 0): ``m * n``, ``m**2``
  and ``n**2`` terms. This is what both reference implementations do: SimonKohl/probabilistic_unet
  (``evaluation/eval_cityscapes``, ``calc_energy_distances`` takes ``np.mean`` over the full matrices) and
  baumgach/PHiSeg-code (``utils.generalised_energy_distance`` divides by ``N**2`` and ``M**2``). It is the energy
  distance between the two empirical distributions, so a sample set equal to the rater set scores exactly 0, and the
  numbers compare with the published LIDC tables, which report ``D^2_GED`` (the squared value, not its root).
  Dropping the ``i == j`` terms would lower the subtracted terms by the factors ``(m - 1) / m`` and ``(n - 1) / n``
  (and can make the value negative).
- Diversity ``E[d(S, S')]`` averages over pairs of *distinct* samples, ``i != j``: 0 for one sample or identical
  samples, 1 for two disjoint non-empty masks. (Inside GED the ``i == j`` terms stay, as above.)
- Hungarian-matched IoU (HM-IoU, Kohl et al. 2019): the (m, n) IoU matrix between samples and raters, both sets
  replicated to ``L = lcm(m, n)`` members (each sample ``L / m`` times, each rater ``L / n`` times), the max-IoU
  one-to-one assignment (``scipy.optimize.linear_sum_assignment``), and the mean matched IoU. When n divides m (16
  samples, 4 raters) this is the paper's rule of duplicating the raters to the number of samples; the lcm extends it
  to any counts while every sample and every rater keeps equal weight (no truncation). Meant for small counts: the
  assignment is cubic in L.

Masks are numpy arrays or torch tensors, bool or {0, 1}, of any spatial shape (2D, 3D). A set is either one
array of shape (K, *spatial) or a sequence of K masks of shape spatial. IoUs come from one matrix product of the
flattened (K, N) masks, so 16 samples and 4 raters of a 3D volume cost one pass over the voxels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from pipeline.evaluation.stats import bootstrap_ci

MaskSet = np.ndarray | torch.Tensor | Sequence[np.ndarray | torch.Tensor]
KEYS = ("ged", "diversity", "hm_iou")


def _to_numpy(mask: np.ndarray | torch.Tensor) -> np.ndarray:
    return mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)


def _flatten(masks: MaskSet, name: str) -> tuple[np.ndarray, tuple[int, ...]]:
    """One set of masks as a (K, N) bool array, with the spatial shape; ValueError for an empty or non-binary set."""
    if isinstance(masks, (np.ndarray, torch.Tensor)):
        stack = _to_numpy(masks)
        if stack.ndim < 2:
            raise ValueError(f"{name}: expected an array of shape (K, *spatial) with K >= 1, received shape {stack.shape}; "
                             f"stack the masks along a new first axis, or pass a list of masks.")
    else:
        arrays = [_to_numpy(m) for m in masks]
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise ValueError(f"{name}: expected masks of one shape, received shapes {sorted(shapes)}; resample them to one grid.")
        stack = np.stack(arrays) if arrays else np.zeros((0,))
    if stack.shape[0] == 0:
        raise ValueError(f"{name}: expected at least one mask, received none (shape {stack.shape}); pass one or more masks.")
    if stack.dtype != bool:
        if not np.all((stack == 0) | (stack == 1)):
            raise ValueError(f"{name}: expected binary masks (bool or values in {{0, 1}}), received values outside {{0, 1}} "
                             f"(dtype {stack.dtype}); threshold probabilities first, e.g. ``mask > 0.5``.")
        stack = stack.astype(bool)
    return stack.reshape(stack.shape[0], -1), tuple(stack.shape[1:])


def _flatten_pair(samples: MaskSet, raters: MaskSet) -> tuple[np.ndarray, np.ndarray]:
    s, s_shape = _flatten(samples, "samples")
    y, y_shape = _flatten(raters, "raters")
    if s_shape != y_shape:
        raise ValueError(f"samples and raters must share a spatial shape, received samples of {s_shape} and raters of "
                         f"{y_shape}; resample both to one grid.")
    return s, y


def _iou_matrix(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """IoU of every row of ``first`` (K, N) bool with every row of ``second`` (L, N) bool, as a (K, L) float array.

    Intersections come from a matrix product; float32 counts are exact below 2**24 voxels, float64 above.
    """
    dtype = np.float32 if first.shape[1] < 2**24 else np.float64
    a, b = first.astype(dtype), second.astype(dtype)
    intersection = (a @ b.T).astype(np.float64)
    union = a.sum(1, dtype=np.float64)[:, None] + b.sum(1, dtype=np.float64)[None, :] - intersection
    return np.where(union > 0, intersection / np.maximum(union, 1.0), 1.0)  # empty vs empty: IoU 1


def _blocks(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU blocks (samples x raters, samples x samples, raters x raters) from one product over both sets."""
    iou = _iou_matrix(np.concatenate([s, y]), np.concatenate([s, y]))
    m = s.shape[0]
    return iou[:m, m:], iou[:m, :m], iou[m:, m:]


def _ged(iou_sy: np.ndarray, iou_ss: np.ndarray, iou_yy: np.ndarray) -> float:
    return float(2 * (1 - iou_sy).mean() - (1 - iou_ss).mean() - (1 - iou_yy).mean())


def _distinct_pair_mean(distances: np.ndarray) -> float:
    k = distances.shape[0]
    return 0.0 if k < 2 else float(distances[~np.eye(k, dtype=bool)].mean())


def _hm_iou(iou_sy: np.ndarray) -> float:
    from scipy.optimize import linear_sum_assignment

    m, n = iou_sy.shape
    size = math.lcm(m, n)
    balanced = np.repeat(np.repeat(iou_sy, size // m, axis=0), size // n, axis=1)
    rows, cols = linear_sum_assignment(balanced, maximize=True)
    return float(balanced[rows, cols].mean())


def compute_ged(samples: MaskSet, raters: MaskSet) -> float:
    """Squared generalised energy distance of one case; returns D^2_GED, as the papers report it.

    Args:
        samples: the model's masks, (m, *spatial) or a sequence of m masks, bool or {0, 1}.
        raters: the raters' masks, (n, *spatial) or a sequence of n masks, same spatial shape.

    Returns:
        ``2 E[d(S, Y)] - E[d(S, S')] - E[d(Y, Y')]`` with ``i == j`` pairs included (module docstring); 0 when the
        two sets are equal, at most 2.

    Raises:
        ValueError: an empty set, non-binary values, or mismatched shapes.
    """
    return _ged(*_blocks(*_flatten_pair(samples, raters)))


def compute_diversity(samples: MaskSet) -> float:
    """Mean distance ``E[d(S, S')]`` over ordered pairs of distinct samples.

    Args:
        samples: (m, *spatial) or a sequence of m masks, bool or {0, 1}.

    Returns:
        In [0, 1]; 0 for a single sample or identical samples.

    Raises:
        ValueError: an empty set, non-binary values, or masks of different shapes.
    """
    s, _ = _flatten(samples, "samples")
    return _distinct_pair_mean(1 - _iou_matrix(s, s))


def compute_hm_iou(samples: MaskSet, raters: MaskSet) -> float:
    """Hungarian-matched IoU: the mean IoU of the best one-to-one matching, both sets replicated to lcm(m, n).

    Args:
        samples: (m, *spatial) or a sequence of m masks, bool or {0, 1}.
        raters: (n, *spatial) or a sequence of n masks, same spatial shape.

    Returns:
        In [0, 1]; 1 when the samples are the raters in any order.

    Raises:
        ValueError: an empty set, non-binary values, or mismatched shapes.
    """
    s, y = _flatten_pair(samples, raters)
    return _hm_iou(_iou_matrix(s, y))


def compute_ambiguity(samples: MaskSet, raters: MaskSet) -> dict[str, float]:
    """GED, sample diversity and HM-IoU of one case, from one IoU computation.

    Args:
        samples: the model's masks, (m, *spatial) or a sequence of m masks, bool or {0, 1}.
        raters: the raters' masks, (n, *spatial) or a sequence of n masks, same spatial shape.

    Returns:
        ``{"ged": D^2_GED, "diversity": E[d(S, S')] over distinct samples, "hm_iou": Hungarian-matched IoU}``.

    Raises:
        ValueError: an empty set, non-binary values, or mismatched shapes.
    """
    iou_sy, iou_ss, iou_yy = _blocks(*_flatten_pair(samples, raters))
    return {"ged": _ged(iou_sy, iou_ss, iou_yy), "diversity": _distinct_pair_mean(1 - iou_ss), "hm_iou": _hm_iou(iou_sy)}


def compute_rater_floor(raters: MaskSet) -> dict[str, float]:
    """How much the raters disagree among themselves: the reference point for a model's GED and diversity.

    ``D^2_GED(raters, raters)`` is 0 by definition, so it says nothing. Reported instead:

    - ``diversity``: ``E[d(Y, Y')]`` over distinct raters, what a model's diversity should approach;
    - ``ged_loo``: leave-one-out, the mean over k of ``D^2_GED({Y_k}, raters without Y_k)``: the GED a "model"
      scores that outputs one real rater's mask as its single sample, judged by the other raters. It is a reference,
      not a bound: a model with several samples can score lower.

    Args:
        raters: (n, *spatial) or a sequence of n >= 2 masks, bool or {0, 1}.

    Returns:
        ``{"diversity": float, "ged_loo": float}``; both 0 when the raters agree.

    Raises:
        ValueError: fewer than two raters, non-binary values, or masks of different shapes.
    """
    y, _ = _flatten(raters, "raters")
    n = y.shape[0]
    if n < 2:
        raise ValueError(f"raters: expected at least two raters for a leave-one-out floor, received {n}; "
                         f"the floor needs rater disagreement to measure.")
    iou = _iou_matrix(y, y)
    loo = []
    for k in range(n):
        rest = np.arange(n) != k
        loo.append(_ged(iou[k:k + 1, rest], np.ones((1, 1)), iou[np.ix_(rest, rest)]))
    return {"diversity": _distinct_pair_mean(1 - iou), "ged_loo": float(np.mean(loo))}


def summarise_ambiguity(per_case: Sequence[dict[str, float]], samples: int = 1000,
                        seed: int = 0) -> dict[str, dict[str, float | int | list[float]]]:
    """Mean over cases and percentile bootstrap interval of each metric (:func:`pipeline.evaluation.stats.bootstrap_ci`).

    Args:
        per_case: one :func:`compute_ambiguity` result per case.
        samples: bootstrap resamples.
        seed: seed of the resampling.

    Returns:
        ``{"ged" | "diversity" | "hm_iou": {"mean", "ci95": [low, high], "n"}}``; ``n`` counts the cases with a finite
        value (NaN mean and interval for none).

    Raises:
        ValueError: a case without one of the keys.
    """
    summary: dict[str, dict[str, float | int | list[float]]] = {}
    for key in KEYS:
        missing = [i for i, case in enumerate(per_case) if key not in case]
        if missing:
            raise ValueError(f"per_case: expected every case to hold {list(KEYS)}, received cases {missing[:5]} without "
                             f"{key!r}; pass the dicts compute_ambiguity returns.")
        values = np.asarray([float(case[key]) for case in per_case], dtype=float)
        values = values[np.isfinite(values)]
        low, high = bootstrap_ci(values, samples=samples, seed=seed)
        summary[key] = {"mean": float(values.mean()) if values.size else float("nan"), "ci95": [low, high], "n": int(values.size)}
    return summary


__all__ = ["compute_ambiguity", "compute_diversity", "compute_ged", "compute_hm_iou", "compute_rater_floor",
           "summarise_ambiguity"]
