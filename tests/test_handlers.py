"""Handlers on bare Ignite engines with hand-set state (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events

from pipeline.networks.checkpoints import load_checkpoint
from pipeline.handlers import CheckpointHandler, MetricsRecorder, VolumeDice


def _slice(value: list[list[int]]) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float32)[None]  # (1, H, W)


def test_volume_dice_sums_slices_per_case() -> None:
    metric = VolumeDice()
    engine = Engine(lambda e, b: None)
    metric.reset()
    # case a: two slices; pred covers 2 of 3 label pixels plus 1 false positive -> 2*2 / (3 + 3)
    engine.state.batch = {"case": ["a", "a", "b"]}
    engine.state.output = [
        {"pred": _slice([[1, 1], [0, 0]]), "label": _slice([[1, 1], [0, 0]])},
        {"pred": _slice([[1, 0], [0, 0]]), "label": _slice([[0, 0], [0, 1]])},
        {"pred": _slice([[0, 0], [0, 0]]), "label": _slice([[0, 0], [0, 0]])},  # case b: both empty -> 1
    ]
    metric.iteration_completed(engine)
    assert metric.compute() == pytest.approx((4 / 6 + 1.0) / 2)
    assert metric.per_case == pytest.approx({"a": 4 / 6, "b": 1.0})


def test_volume_dice_needs_decollated_output() -> None:
    engine = Engine(lambda e, b: None)
    engine.state.batch = {"case": ["a"]}
    engine.state.output = {"pred": torch.zeros(1, 1, 2, 2)}
    metric = VolumeDice()
    metric.reset()
    with pytest.raises(TypeError, match="decollated engine output"):
        metric.iteration_completed(engine)


def _run_epoch(trainer: Engine, evaluator: Engine, epoch: int, metric: float) -> None:
    trainer.state.epoch = epoch
    evaluator.state.epoch = epoch
    evaluator.state.metrics = {"val_dice_3d": metric}
    trainer.fire_event(Events.EPOCH_COMPLETED)


def test_best_checkpoint_survives_a_resume(tmp_path: Path) -> None:
    network = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    evaluator = Engine(lambda e, b: None)
    trainer = Engine(lambda e, b: None)
    CheckpointHandler(tmp_path, network, optimizer, evaluator, "val_dice_3d", meta={"preset": "x"}).attach(trainer)
    _run_epoch(trainer, evaluator, 1, 0.5)
    best_bytes = (tmp_path / "best.pt").read_bytes()
    assert load_checkpoint(tmp_path / "best.pt")["meta"]["best_epoch"] == 1

    resumed = Engine(lambda e, b: None)  # a new process: the handler reads the best score back
    CheckpointHandler(tmp_path, network, optimizer, evaluator, "val_dice_3d", resume=True).attach(resumed)
    _run_epoch(resumed, evaluator, 2, 0.3)  # worse: best.pt must stay
    assert (tmp_path / "best.pt").read_bytes() == best_bytes
    assert load_checkpoint(tmp_path / "last.pt")["meta"]["best_metric"] == 0.5
    _run_epoch(resumed, evaluator, 3, 0.7)  # better: best.pt moves on
    assert load_checkpoint(tmp_path / "best.pt")["meta"]["best_epoch"] == 3


def test_last_checkpoint_holds_resumable_state(tmp_path: Path) -> None:
    network = torch.nn.Linear(2, 1)
    optimizer = torch.optim.Adam(network.parameters())
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)
    evaluator, trainer = Engine(lambda e, b: None), Engine(lambda e, b: None)
    CheckpointHandler(tmp_path, network, optimizer, evaluator, "val_dice_3d", scheduler=scheduler).attach(trainer)
    trainer.state.max_epochs = 5
    _run_epoch(trainer, evaluator, 1, 0.1)
    content = torch.load(tmp_path / "last.pt", weights_only=True)
    assert set(content) == {"model", "optimizer", "scheduler", "trainer", "meta"}
    assert content["meta"]["epoch"] == 1 and content["trainer"]["max_epochs"] == 5


def test_metrics_recorder_writes_one_record_per_epoch(tmp_path: Path) -> None:
    network = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.25)
    evaluator = Engine(lambda e, b: None)
    trainer = Engine(lambda e, b: [{"loss": torch.tensor(2.0)}])

    @trainer.on(Events.EPOCH_COMPLETED)  # attached first: runs before the recorder, as ValidationHandler does
    def validate(engine: Engine) -> None:
        evaluator.state.epoch = engine.state.epoch
        evaluator.state.metrics = {"val_dice_3d": 0.1 * engine.state.epoch}

    MetricsRecorder(tmp_path / "metrics.json", optimizer, evaluator).attach(trainer)
    trainer.run([0, 1], max_epochs=3)
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert [r["epoch"] for r in summary["epochs"]] == [1, 2, 3]
    assert summary["epochs"][0]["train_loss"] == 2.0 and summary["epochs"][0]["lr"] == 0.25
    assert summary["best"] == {"epoch": 3, "val_dice_3d": pytest.approx(0.3)}
