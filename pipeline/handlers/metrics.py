"""Ignite metrics of the validation runs: per-patient 3D dice, running means, the importance's region share.

Each handler has MONAI's shape: ``attach(engine)`` registers it, ``__call__(engine)`` does the work.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from ignite.engine import Engine
from ignite.metrics import Metric

from pipeline.distributed import gather_objects, sum_over_ranks
from pipeline.noise.regions import compute_region_share


class VolumeDice(Metric):
    """Dice per patient in 3D: slice predictions are summed back into their volume, then averaged over cases.

    Reads ``engine.state.output`` (decollated dicts with binary ``pred`` and ``label``, each (1, H, W))
    and the case names from ``engine.state.batch["case"]``. The 3D dice of a case is
    2 |P ∩ L| / (|P| + |L|) over all its validated slices (1.0 when both are empty). Per-case values are
    kept in ``per_case`` after ``compute()``.

    Under several processes a case's slices are spread over the ranks: ``compute()`` gathers every
    rank's per-case sums and adds them before dividing, so each rank gets the dice of all cases.

    Args:
        pred_key: output key of the binary prediction.
        label_key: output key of the binary label.
        case_key: batch key naming the volume of each slice.
    """

    def __init__(self, pred_key: str = "pred", label_key: str = "label", case_key: str = "case") -> None:
        self.pred_key, self.label_key, self.case_key = pred_key, label_key, case_key
        self.per_case: dict[str, float] = {}
        super().__init__(output_transform=lambda output: output)

    def reset(self) -> None:
        self._sums: dict[str, list[float]] = {}  # case -> [intersection, pred voxels, label voxels]

    def update(self, output: Any) -> None:  # unused: iteration_completed reads batch and output together
        raise NotImplementedError

    def iteration_completed(self, engine: Engine) -> None:
        batch, output = engine.state.batch, engine.state.output
        cases = [item[self.case_key] for item in batch] if isinstance(batch, list) else list(batch[self.case_key])
        if not isinstance(output, list):
            raise TypeError(f"VolumeDice expects decollated engine output (a list of dicts), got {type(output).__name__}.")
        for case, item in zip(cases, output):
            pred = torch.as_tensor(item[self.pred_key]) > 0.5
            label = torch.as_tensor(item[self.label_key]) > 0.5
            sums = self._sums.setdefault(str(case), [0.0, 0.0, 0.0])
            sums[0] += float((pred & label).sum())
            sums[1] += float(pred.sum())
            sums[2] += float(label.sum())

    def compute(self) -> float:
        sums: dict[str, list[float]] = {}
        for rank_sums in gather_objects(self._sums):  # a collective: before any check that could raise on one rank
            for case, values in rank_sums.items():
                total = sums.setdefault(case, [0.0, 0.0, 0.0])
                for i, value in enumerate(values):
                    total[i] += value
        if not sums:
            raise RuntimeError("VolumeDice needs at least one validated slice before compute().")
        self.per_case = {
            case: (2 * inter / (p + lab) if p + lab > 0 else 1.0) for case, (inter, p, lab) in sorted(sums.items())
        }
        return sum(self.per_case.values()) / len(self.per_case)

class OutputMean(Metric):
    """Mean over validated items of a loss or a channel of ``engine.state.output`` (decollated dicts).

    Args:
        key: output key holding a tensor per item (e.g. ``pred_tolerance``); its mean is averaged.
        loss_function: instead of ``key``, average ``loss_function(item["pred"][None], item["label"][None])``.

    Under several processes ``compute()`` averages over the items of every rank.
    """

    def __init__(self, key: str | None = None, loss_function: Callable | None = None) -> None:
        if (key is None) == (loss_function is None):
            raise ValueError("OutputMean needs exactly one of key or loss_function.")
        self.key, self.loss_function = key, loss_function
        super().__init__(output_transform=lambda output: output)

    def reset(self) -> None:
        self._total, self._count = 0.0, 0

    def update(self, output: Any) -> None:
        for item in output:
            if self.loss_function is not None:
                label = item.get("label")
                label = None if label is None else torch.as_tensor(label)[None]  # None: label-free training
                value = self.loss_function(torch.as_tensor(item["pred"])[None], label)
            else:
                value = torch.as_tensor(item[self.key]).float().mean()
            self._total += float(value)
            self._count += 1

    def compute(self) -> float:
        totals = sum_over_ranks({"total": self._total, "count": self._count})  # a collective: before the check
        if totals["count"] == 0:
            raise RuntimeError("OutputMean needs at least one validated item before compute().")
        return totals["total"] / totals["count"]

class RegionShare(Metric):
    """How much of the importance lies in the pancreas plus a ring, relative to that region's area.

    Pools over validated slices: share = importance inside / total importance; chance = region pixels /
    all pixels; ``compute()`` returns share / chance (1 = no better than a uniform map). When the batch
    carries the slices' ``body`` masks, only body pixels count (air says nothing about a map). ``share`` and
    ``chance`` are kept as attributes. Reads ``tolerance_key`` (importance = 1 - B)
    from the decollated output, the region ``region_key`` from it, and the pixel ``spacing`` from
    ``engine.state.batch``. Under several processes ``compute()`` pools the slices of every rank.

    Args:
        ring_mm: ring width around the pancreas, mm (0: the pancreas alone).
        tolerance_key: output key of the tolerance B; the importance is 1 - B.
        region_key: output key of the binary region: ``label``, or ``pred_clean`` (the utility's clean
            prediction) in label-free training.
    """

    def __init__(self, ring_mm: float = 10.0, tolerance_key: str = "pred_tolerance", region_key: str = "label") -> None:
        self.ring_mm, self.tolerance_key, self.region_key = float(ring_mm), tolerance_key, region_key
        self.share = self.chance = float("nan")
        super().__init__(output_transform=lambda output: output)

    def reset(self) -> None:
        self._inside = self._region = self._total = self._pixels = 0.0

    def update(self, output: Any) -> None:  # unused: iteration_completed reads batch and output together
        raise NotImplementedError

    def iteration_completed(self, engine: Engine) -> None:
        batch = engine.state.batch
        spacings = [item["spacing"] for item in batch] if isinstance(batch, list) else list(batch["spacing"])
        bodies = ([item.get("body") for item in batch] if isinstance(batch, list) else
                  list(batch["body"]) if "body" in batch else [None] * len(spacings))
        for item, spacing, body in zip(engine.state.output, spacings, bodies):
            importance = 1.0 - torch.as_tensor(item[self.tolerance_key])[0]  # (H, W)
            label = torch.as_tensor(item[self.region_key])[0]
            within = None if body is None else torch.as_tensor(body)[0]
            inside, region, total, pixels = compute_region_share(importance, label, torch.as_tensor(spacing).tolist(),
                                                                 self.ring_mm, within)
            self._inside, self._region, self._total = self._inside + inside, self._region + region, self._total + total
            self._pixels += pixels

    def compute(self) -> float:
        pooled = sum_over_ranks({"inside": self._inside, "region": self._region, "total": self._total, "pixels": self._pixels})
        if pooled["pixels"] == 0 or pooled["total"] == 0:
            raise RuntimeError("RegionShare needs at least one validated slice with non-zero importance.")
        self.share, self.chance = pooled["inside"] / pooled["total"], pooled["region"] / pooled["pixels"]
        return self.share / self.chance if self.chance > 0 else float("nan")


__all__ = ["OutputMean", "RegionShare", "VolumeDice"]
