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

import torch
from ignite.engine import Engine, Events
from ignite.metrics import Metric
from monai.handlers import CheckpointLoader, from_engine

from pipeline.checkpoints import load_checkpoint, save_atomic
from pipeline.fileio import write_json_atomic

logger = logging.getLogger(__name__)


class VolumeDice(Metric):
    """Dice per patient in 3D: slice predictions are summed back into their volume, then averaged over cases.

    Reads ``engine.state.output`` (decollated dicts with binary ``pred`` and ``label``, each (1, H, W))
    and the case names from ``engine.state.batch["case"]``. The 3D dice of a case is
    2 |P ∩ L| / (|P| + |L|) over all its validated slices (1.0 when both are empty). Per-case values are
    kept in ``per_case`` after ``compute()``.

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
        if not self._sums:
            raise RuntimeError("VolumeDice needs at least one validated slice before compute().")
        self.per_case = {
            case: (2 * inter / (p + lab) if p + lab > 0 else 1.0) for case, (inter, p, lab) in sorted(self._sums.items())
        }
        return sum(self.per_case.values()) / len(self.per_case)


class CheckpointHandler:
    """Best and last checkpoints of a run, atomic and resumable; the best survives a resume.

    After each trainer epoch, ``last.pt`` gets model, optimizer, scheduler and trainer state; when the
    evaluator ran this epoch and its ``metric_name`` beat the best so far, ``best.pt`` gets the model.
    With ``resume``, MONAI's ``CheckpointLoader`` restores ``last.pt`` when the trainer starts and the best
    score is read back from it, so a worse epoch after the resume does not replace ``best.pt``.

    Args:
        save_dir: ``RUN_DIR/checkpoints``.
        network, optimizer, scheduler: the objects to save (scheduler may be None).
        evaluator: the validation engine whose metric picks the best model.
        metric_name: key in ``evaluator.state.metrics`` (higher is better).
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
    ) -> None:
        self.save_dir = Path(save_dir)
        self.network, self.optimizer, self.scheduler, self.evaluator = network, optimizer, scheduler, evaluator
        self.metric_name = metric_name
        self.meta = dict(meta or {})
        self.resume = resume
        self.map_location = map_location
        self.best_metric = float("-inf")
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
            self.best_metric = float(meta.get("best_metric", float("-inf")))
            self.best_epoch = int(meta.get("best_epoch", 0))
            CheckpointLoader(load_path=str(self.last_path), load_dict=self._objects(engine),
                             map_location=self.map_location).attach(engine)
            logger.info("resuming from %s (best %s %.4f at epoch %d)", self.last_path, self.metric_name, self.best_metric, self.best_epoch)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        meta = {**self.meta, "epoch": epoch, "metric_name": self.metric_name}
        validated = self.evaluator.state.epoch == epoch and self.metric_name in self.evaluator.state.metrics
        if validated:
            metric = float(self.evaluator.state.metrics[self.metric_name])
            meta["metric"] = metric
            if metric > self.best_metric:
                self.best_metric, self.best_epoch = metric, epoch
                save_atomic({"model": self.network.state_dict(), "meta": {**meta, "best_metric": metric, "best_epoch": epoch}},
                            self.best_path)
                logger.info("epoch %d: new best %s %.4f -> %s", epoch, self.metric_name, metric, self.best_path)
        state = {name: obj.state_dict() for name, obj in self._objects(engine).items()}
        state["meta"] = {**meta, "best_metric": self.best_metric, "best_epoch": self.best_epoch}
        save_atomic(state, self.last_path)


class MetricsRecorder:
    """Write ``RUN_DIR/metrics.json``: one record per epoch (train loss, lr, validation metrics, seconds).

    Also sets ``engine.state.lr`` each iteration, so ``TensorBoardStatsHandler(state_attributes=["lr"])``
    can plot it. On a resume, records of epochs after the resumed one are dropped and new ones appended.

    Args:
        path: the JSON file.
        optimizer: whose first parameter group's learning rate is recorded.
        evaluator: validation engine; its metrics are recorded in the epochs where it ran.
        loss_transform: takes ``engine.state.output`` to the batch loss.
        per_case: ``{name: VolumeDice}`` metrics of the evaluator whose per-case values to record.
    """

    def __init__(
        self,
        path: str | Path,
        optimizer: torch.optim.Optimizer,
        evaluator: Engine | None = None,
        loss_transform: Callable[[Any], Any] = from_engine(["loss"], first=True),
        per_case: dict[str, VolumeDice] | None = None,
    ) -> None:
        self.path = Path(path)
        self.optimizer, self.evaluator = optimizer, evaluator
        self.loss_transform = loss_transform
        self.per_case = dict(per_case or {})
        self.records: list[dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _started(self, engine: Engine) -> None:
        if self.path.exists():  # resumed run: keep the epochs before the resume point
            previous = json.loads(self.path.read_text()).get("epochs", [])
            self.records = [r for r in previous if r["epoch"] <= engine.state.epoch]

    def _epoch_started(self, engine: Engine) -> None:
        self._losses: list[float] = []
        self._start = time.perf_counter()

    def _iteration_completed(self, engine: Engine) -> None:
        engine.state.lr = float(self.optimizer.param_groups[0]["lr"])
        loss = self.loss_transform(engine.state.output)
        self._losses.append(float(loss[0] if isinstance(loss, (list, tuple)) else loss))

    def __call__(self, engine: Engine) -> None:
        record: dict[str, Any] = {
            "epoch": engine.state.epoch,
            "train_loss": sum(self._losses) / max(1, len(self._losses)),
            "lr": float(self.optimizer.param_groups[0]["lr"]),
            "seconds": round(time.perf_counter() - self._start, 3),
        }
        if self.evaluator is not None and self.evaluator.state.epoch == engine.state.epoch:
            record.update({k: float(v) for k, v in self.evaluator.state.metrics.items() if isinstance(v, (int, float))})
            for name, metric in self.per_case.items():
                record[f"{name}_per_case"] = dict(metric.per_case)
        self.records.append(record)
        validated = [r for r in self.records if any(k.startswith("val_") for k in r)]
        summary = {"epochs": self.records}
        if validated:
            key = next((k for k in ("val_dice_3d", "val_dice") if k in validated[-1]), None)
            if key:
                best = max(validated, key=lambda r: r[key])
                summary["best"] = {"epoch": best["epoch"], key: best[key]}
        write_json_atomic(summary, self.path)
