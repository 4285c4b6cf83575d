"""Ignite handlers and metrics of the training runs: per-patient 3D dice, checkpoints, metrics.json.

Each handler has MONAI's shape: ``attach(engine)`` registers it, ``__call__(engine)`` does the work.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.metrics import Metric
from monai.handlers import CheckpointLoader, from_engine

from pipeline.checkpoints import load_checkpoint, save_atomic
from pipeline.distributed import gather_objects, is_main_process, sum_over_ranks
from pipeline.errors import ConfigError
from pipeline.fileio import atomic_path, save_nifti, write_json_atomic
from pipeline.metrics import compute_region_share

logger = logging.getLogger(__name__)


def radiological_view(array: np.ndarray) -> np.ndarray:
    """A RAS (x, y) slice as shown in radiology: patient right on the screen's left, anterior up."""
    return np.fliplr(np.rot90(array))


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


class CheckpointHandler:
    """Best and last checkpoints of a run, atomic and resumable; the best survives a resume.

    After each trainer epoch, ``last.pt`` gets model, optimizer, scheduler and trainer state; when the
    evaluator ran this epoch and its ``metric_name`` beat the best so far, ``best.pt`` then gets the model.
    Last is written before best, so a crash between the two is repaired on the resume
    (:func:`pipeline.checkpoints.reconcile_best`); attach :class:`MetricsRecorder` before this handler so
    that ``metrics.json`` is never behind ``last.pt``.
    With ``resume``, MONAI's ``CheckpointLoader`` restores ``last.pt`` when the trainer starts and the best
    score is read back from it, so a worse epoch after the resume does not replace ``best.pt``.

    Under several processes attach it on every rank: each rank tracks the best score (the validation
    metrics are reduced over ranks, so all agree) and restores ``last.pt`` on a resume, but only rank 0
    writes files.

    Args:
        save_dir: ``RUN_DIR/checkpoints``.
        network, optimizer, scheduler: the objects to save (scheduler may be None).
        evaluator: the validation engine whose metric picks the best model.
        metric_name: key in ``evaluator.state.metrics``.
        higher_is_better: False when a lower metric is better (e.g. a validation loss).
        meta: written into every checkpoint (preset, channels...; see :mod:`pipeline.checkpoints`).
        resume: continue from ``save_dir/last.pt``.
    """

    def __init__(
        self,
        save_dir: str | Path,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        evaluator: Engine,
        metric_name: str,
        scheduler: Any | None = None,
        meta: dict[str, Any] | None = None,
        resume: bool = False,
        map_location: str | torch.device = "cpu",
        higher_is_better: bool = True,
    ) -> None:
        self.save_dir = Path(save_dir)
        self.sign = 1.0 if higher_is_better else -1.0
        self.network, self.optimizer, self.scheduler, self.evaluator = network, optimizer, scheduler, evaluator
        self.metric_name = metric_name
        self.meta = dict(meta or {})
        self.resume = resume
        self.map_location = map_location
        self.best_metric = -self.sign * float("inf")
        self.best_epoch = 0
        self.trainer: Engine | None = None

    @property
    def last_path(self) -> Path:
        return self.save_dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.save_dir / "best.pt"

    def _objects(self, trainer: Engine) -> dict[str, Any]:
        objects: dict[str, Any] = {"model": self.network, "optimizer": self.optimizer, "trainer": trainer}
        if self.scheduler is not None:
            objects["scheduler"] = self.scheduler
        return objects

    def attach(self, engine: Engine) -> None:
        """Attach to the trainer (after the validation handler, so this epoch's metric is known)."""
        self.trainer = engine
        if self.resume:
            meta = load_checkpoint(self.last_path).get("meta", {})
            self.best_metric = float(meta.get("best_metric", -self.sign * float("inf")))
            self.best_epoch = int(meta.get("best_epoch", 0))
            CheckpointLoader(load_path=str(self.last_path), load_dict=self._objects(engine),
                             map_location=self.map_location).attach(engine)
            logger.info("resuming from %s (best %s %.4f at epoch %d)", self.last_path, self.metric_name, self.best_metric, self.best_epoch)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        meta = {**self.meta, "epoch": epoch, "metric_name": self.metric_name}
        validated = self.evaluator.state.epoch == epoch and self.metric_name in self.evaluator.state.metrics
        improved = False
        if validated:
            metric = float(self.evaluator.state.metrics[self.metric_name])
            meta["metric"] = metric
            if self.sign * metric > self.sign * self.best_metric:
                self.best_metric, self.best_epoch, improved = metric, epoch, True
        if not is_main_process():  # every rank tracks the best; rank 0 alone writes
            return
        # last first, then best: a crash in between leaves last.pt naming this epoch as best, and
        # pipeline.checkpoints.reconcile_best rewrites best.pt from it on the resume.
        state = {name: obj.state_dict() for name, obj in self._objects(engine).items()}
        state["meta"] = {**meta, "best_metric": self.best_metric, "best_epoch": self.best_epoch}
        save_atomic(state, self.last_path)
        if improved:
            save_atomic({"model": state["model"], "meta": state["meta"]}, self.best_path)
            logger.info("epoch %d: new best %s %.4f -> %s", epoch, self.metric_name, self.best_metric, self.best_path)


class MetricsRecorder:
    """Write ``RUN_DIR/metrics.json``: one record per epoch (train loss, lr, validation metrics, seconds).

    Also sets ``engine.state.lr`` each iteration, so ``TensorBoardStatsHandler(state_attributes=["lr"])``
    can plot it. On a resume, records of epochs after the resumed one are dropped and new ones appended.
    Under several processes attach it on every rank: ``train_loss`` is the mean over every rank's
    iterations, and only rank 0 writes the file.

    Args:
        path: the JSON file.
        optimizer: whose first parameter group's learning rate is recorded.
        evaluator: validation engine; its metrics are recorded in the epochs where it ran.
        loss_transform: takes ``engine.state.output`` to the batch loss.
        per_case: ``{name: VolumeDice}`` metrics of the evaluator whose per-case values to record.
        best_key: validation metric that picks the best epoch in the summary.
        higher_is_better: direction of ``best_key``.
    """

    def __init__(
        self,
        path: str | Path,
        optimizer: torch.optim.Optimizer,
        evaluator: Engine | None = None,
        loss_transform: Callable[[Any], Any] = from_engine(["loss"], first=True),
        per_case: dict[str, VolumeDice] | None = None,
        best_key: str = "val_dice_3d",
        higher_is_better: bool = True,
    ) -> None:
        self.path = Path(path)
        self.best_key, self.higher_is_better = best_key, higher_is_better
        self.optimizer, self.evaluator = optimizer, evaluator
        self.loss_transform = loss_transform
        self.per_case = dict(per_case or {})
        self.records: list[dict[str, Any]] = []
        self._read = False

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _epoch_started(self, engine: Engine) -> None:
        if not self._read and self.path.exists():
            # resumed run (read here, after the checkpoint loader restored the epoch, whatever the handler
            # order): keep the epochs before this one, drop those a crash left beyond the checkpoint
            previous = json.loads(self.path.read_text()).get("epochs", [])
            self.records = [r for r in previous if r["epoch"] < engine.state.epoch]
        self._read = True
        self._losses: list[float] = []
        self._start = time.perf_counter()

    def _iteration_completed(self, engine: Engine) -> None:
        engine.state.lr = float(self.optimizer.param_groups[0]["lr"])
        loss = self.loss_transform(engine.state.output)
        self._losses.append(float(loss[0] if isinstance(loss, (list, tuple)) else loss))

    def __call__(self, engine: Engine) -> None:
        losses = sum_over_ranks({"total": sum(self._losses), "count": len(self._losses)})  # a collective: every rank
        record: dict[str, Any] = {
            "epoch": engine.state.epoch,
            "train_loss": losses["total"] / max(1, losses["count"]),
            "lr": float(self.optimizer.param_groups[0]["lr"]),
            "seconds": round(time.perf_counter() - self._start, 3),
        }
        record.update({k: float(v) for k, v in engine.state.metrics.items() if isinstance(v, (int, float))})
        if self.evaluator is not None and self.evaluator.state.epoch == engine.state.epoch:
            record.update({k: float(v) for k, v in self.evaluator.state.metrics.items() if isinstance(v, (int, float))})
            for name, metric in self.per_case.items():
                record[f"{name}_per_case"] = dict(metric.per_case)
        self.records.append(record)
        if not is_main_process():
            return
        validated = [r for r in self.records if self.best_key in r]
        summary: dict[str, Any] = {"epochs": self.records}
        if validated:
            pick = max if self.higher_is_better else min
            best = pick(validated, key=lambda r: r[self.best_key])
            summary["best"] = {"epoch": best["epoch"], **{k: v for k, v in best.items() if k.startswith("val_") and not isinstance(v, dict)}}
        write_json_atomic(summary, self.path)


class LossTermsHandler:
    """Per-epoch means of a loss's ``last_terms`` (e.g. :class:`pipeline.noise.UNoiseLoss`) into ``engine.state.metrics``.

    Attach it before the stats/TensorBoard handlers so they log ``train_<term>`` at the end of each epoch.
    Under several processes the means are over every rank's iterations.
    """

    def __init__(self, loss_function: torch.nn.Module, prefix: str = "train_") -> None:
        if not hasattr(loss_function, "last_terms"):
            raise TypeError(f"LossTermsHandler needs a loss with `last_terms`, got {type(loss_function).__name__}.")
        self.loss_function, self.prefix = loss_function, prefix
        self._sums: dict[str, float] = {}
        self._count = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._accumulate)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _reset(self, engine: Engine) -> None:
        self._sums, self._count = {}, 0

    def _accumulate(self, engine: Engine) -> None:
        for key, value in self.loss_function.last_terms.items():
            self._sums[key] = self._sums.get(key, 0.0) + float(value)
        self._count += 1

    def __call__(self, engine: Engine) -> None:
        totals = sum_over_ranks(self._sums)  # collectives: every rank calls them
        count = sum_over_ranks({"iterations": self._count})["iterations"]
        for key, total in totals.items():
            engine.state.metrics[f"{self.prefix}{key}"] = total / max(1, count)


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


class SliceImagesHandler:
    """Log named 2D images of the first item of the last validation batch to TensorBoard, each epoch.

    Args:
        summary_writer: a ``SummaryWriter``.
        images: ``{tag: (source, key, channel, invert)}`` with source ``batch`` or ``output``; ``invert``
            shows 1 - channel (importance from tolerance). Each image is min-max scaled for display. A key
            the item does not hold (``label`` in label-free training) is skipped.
    """

    def __init__(self, summary_writer: Any, images: dict[str, tuple[str, str, int, bool]]) -> None:
        for tag, spec in images.items():
            if len(spec) != 4 or spec[0] not in ("batch", "output"):
                raise ConfigError(f"image {tag!r}: expected (source 'batch'|'output', key, channel, invert), got {spec!r}.")
        self.writer, self.images = summary_writer, dict(images)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        for tag, (source, key, channel, invert) in self.images.items():
            items = engine.state.batch if source == "batch" else engine.state.output
            if items[0].get(key) is None:
                continue
            image = torch.as_tensor(items[0][key])[channel].detach().float().cpu()  # (H, W)
            if invert:
                image = 1.0 - image
            low, high = float(image.min()), float(image.max())
            image = (image - low) / (high - low) if high > low else torch.zeros_like(image)
            self.writer.add_image(tag, image[None], engine.state.epoch, dataformats="CHW")


class ImportanceExporter:
    """Write each explained volume as NIfTI in the input's own geometry, beside the utility's segmentation.

    Reads, per item of ``engine.state.output``: ``pred`` (2, X, Y, Z), channel 0 the importance and channel 1
    the utility's pancreas probability, already inverted to the input's voxel grid (MONAI ``Invertd``), and
    ``image`` (the preprocessed volume, whose meta holds the input's ``original_affine`` and
    ``spatial_shape``). The case name comes from ``engine.state.batch[i]["case"]``. Files:

    - ``<case>_importance.nii.gz``: float32 in [0, 1], 1 = most important;
    - ``<case>_seg.nii.gz``: uint8, 1 where the probability > 0.5;
    - ``<case>_overlay.png`` with ``overlay``: CT, importance heat map and pancreas contour on the axial
      slices with the most predicted pancreas (reads ``pred_ras``, the prediction before inversion).

    Only the affine and the voxels are written: no header field of the input (DICOM patient data
    included) is copied. Files are written atomically.

    Args:
        output_dir: folder of the outputs (created).
        overlay: also write the PNG overlay.
        overlay_slices: slices in the overlay.
    """

    def __init__(self, output_dir: str | Path, overlay: bool = False, overlay_slices: int = 3) -> None:
        self.output_dir = Path(output_dir)
        self.overlay, self.overlay_slices = overlay, max(1, int(overlay_slices))

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        batch = engine.state.batch if isinstance(engine.state.batch, list) else [engine.state.batch]
        for item, source in zip(engine.state.output, batch):
            case = str(source["case"])
            meta = item["image"].meta
            affine = np.asarray(meta["original_affine"], dtype=np.float64)
            shape = tuple(int(s) for s in np.asarray(meta["spatial_shape"]).tolist())
            pred = torch.as_tensor(item["pred"]).detach().float().cpu().numpy()  # (2, X, Y, Z)
            if pred.shape[1:] != shape:
                raise RuntimeError(f"{case}: inverted prediction {pred.shape[1:]} does not match the input grid {shape}.")
            outputs = {
                "importance": np.clip(pred[0], 0.0, 1.0).astype(np.float32),
                "seg": (pred[1] > 0.5).astype(np.uint8),
            }
            for name, array in outputs.items():
                save_nifti(array, affine, self.output_dir / f"{case}_{name}.nii.gz")
            if self.overlay:
                self._write_overlay(case, item)
            logger.info("%s: wrote %s_importance.nii.gz and %s_seg.nii.gz", case, case, case)

    def _write_overlay(self, case: str, item: dict[str, Any]) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        image = torch.as_tensor(item["image"]).float().cpu().numpy()[0]  # (X, Y, Z), RAS, windowed [0, 1]
        pred = torch.as_tensor(item["pred_ras"]).float().cpu().numpy()  # (2, X, Y, Z)
        area = (pred[1] > 0.5).sum(axis=(0, 1))
        slices = sorted(np.argsort(area)[::-1][: self.overlay_slices].tolist())

        figure, axes = plt.subplots(2, len(slices), figsize=(3.6 * len(slices), 7.2), squeeze=False)
        for column, z in enumerate(slices):
            ct_axis, map_axis = axes[0, column], axes[1, column]
            ct_axis.imshow(radiological_view(image[:, :, z]), cmap="gray", vmin=0, vmax=1)
            heat = map_axis.imshow(radiological_view(pred[0, :, :, z]), cmap="inferno", vmin=0, vmax=1)
            if pred[1, :, :, z].max() > 0.5:
                for axis in (ct_axis, map_axis):
                    axis.contour(radiological_view(pred[1, :, :, z]), levels=[0.5], colors="cyan", linewidths=1)
            ct_axis.set_title(f"{case} slice {z}: CT")
            map_axis.set_title("importance (1 - tolerance)")
            for axis in (ct_axis, map_axis):
                axis.axis("off")
        figure.colorbar(heat, ax=axes[1].tolist(), fraction=0.03, label="importance")
        figure.suptitle("U-Noise: CT (top) and importance map (bottom); cyan: utility segmentation; patient right on the left")
        path = self.output_dir / f"{case}_overlay.png"
        with atomic_path(path) as tmp:
            figure.savefig(tmp, dpi=90, format="png")
        plt.close(figure)
        return path


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
