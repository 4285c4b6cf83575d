"""Checkpoints and metrics.json of a training run: last before best, resumable, crash-consistent.

Each handler has MONAI's shape: ``attach(engine)`` registers it, ``__call__(engine)`` does the work.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader, from_engine

from pipeline.networks.checkpoints import load_checkpoint, save_atomic
from pipeline.distributed import is_main_process, sum_over_ranks
from pipeline.fileio import write_json_atomic

if TYPE_CHECKING:  # for the annotation only
    from pipeline.handlers.metrics import VolumeDice

logger = logging.getLogger(__name__)


class CheckpointHandler:
    """Best and last checkpoints of a run, atomic and resumable; the best survives a resume.

    After each trainer epoch, ``last.pt`` gets model, optimizer, scheduler and trainer state; when the
    evaluator ran this epoch and its ``metric_name`` beat the best so far, ``best.pt`` then gets the model.
    Last is written before best, so a crash between the two is repaired on the resume
    (:func:`pipeline.networks.checkpoints.reconcile_best`); attach :class:`MetricsRecorder` before this handler so
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
        meta: written into every checkpoint (preset, channels...; see :mod:`pipeline.networks.checkpoints`).
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
        # pipeline.networks.checkpoints.reconcile_best rewrites best.pt from it on the resume.
        state = {name: obj.state_dict() for name, obj in self._objects(engine).items()}
        state["meta"] = {**meta, "best_metric": self.best_metric, "best_epoch": self.best_epoch}
        save_atomic(state, self.last_path)
        if improved:
            save_atomic({"model": state["model"], "meta": state["meta"]}, self.best_path)
            logger.debug("epoch %d: new best %s %.4f -> %s", epoch, self.metric_name, self.best_metric, self.best_path)

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


__all__ = ["CheckpointHandler", "MetricsRecorder"]
