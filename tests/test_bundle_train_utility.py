"""End to end: the train_utility bundle config on a tiny phantom set (CPU, seconds)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pipeline.networks.checkpoints import CheckpointError, load_network_weights
from pipeline.bundle import check_override_keys, default_bundle_root, run_bundle
from pipeline.cli import main
from pipeline.errors import ConfigError
from pipeline.networks import build_unet
from pipeline.phantom import write_phantom_dataset

pytestmark = pytest.mark.slow
BUNDLE = default_bundle_root()
TINY = {"preset": "small", "spatial_size": 32, "batch_size": 4, "device": "cpu", "val_fraction": 0.34,
        "test_fraction": 0.0, "num_workers": 0, "other_fraction": 0.5}


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("phantom")
    write_phantom_dataset(root, cases=5, size=32, slices=12, seed=0)
    return root


@pytest.fixture(scope="module")
def one_epoch_run(phantom: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("run") / "utility"
    run_bundle("train_utility", {**TINY, "dataset_dir": str(phantom), "output_dir": str(run_dir), "epochs": 1})
    return run_dir


def test_run_folder_is_complete(one_epoch_run: Path) -> None:
    for name in ("checkpoints/best.pt", "checkpoints/last.pt", "metrics.json", "config.json", "datalist.json"):
        assert (one_epoch_run / name).is_file(), name
    config = json.loads((one_epoch_run / "config.json").read_text())
    assert config["preset"] == "small" and config["epochs"] == 1 and config["spatial_size"] == 32
    metrics = json.loads((one_epoch_run / "metrics.json").read_text())
    assert [r["epoch"] for r in metrics["epochs"]] == [1]
    assert {"train_loss", "lr", "val_dice", "val_iou", "val_dice_3d", "val_dice_3d_per_case"} <= set(metrics["epochs"][0])
    split = json.loads((one_epoch_run / "datalist.json").read_text())
    assert len(split["validation"]) == 2 and len(split["training"]) == 3


def test_config_json_and_the_meta_record_every_setting_with_the_runs_values(one_epoch_run: Path) -> None:
    from monai.bundle import ConfigParser

    from pipeline.bundle import config_files, default_bundle_root, setting_names
    from pipeline.networks.checkpoints import load_checkpoint

    names = setting_names(ConfigParser.load_config_files([str(f) for f in config_files(default_bundle_root(), "train_utility")]))
    assert {"epochs", "learning_rate", "preset", "dataset_dir", "output_dir"} <= set(names)  # paths in the bundle count too
    recorded = json.loads((one_epoch_run / "config.json").read_text())
    assert set(names) <= set(recorded) and recorded["epochs"] == 1 and recorded["config"] == "train_utility"  # the override
    meta = load_checkpoint(one_epoch_run / "checkpoints" / "last.pt")["meta"]
    assert set(names) <= set(meta) and (meta["kind"], meta["epochs"], meta["preset"]) == ("utility", 1, "small")


def test_tensorboard_holds_scalars_and_images(one_epoch_run: Path) -> None:
    events = EventAccumulator(str(one_epoch_run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train_loss", "lr", "val_dice", "val_iou", "val_dice_3d"} <= scalars, scalars
    images = events.Tags()["images"]
    assert len(images) >= 3, images  # image, label, prediction


def test_resume_continues_with_the_saved_optimizer_state(one_epoch_run: Path, phantom: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "resumed"
    import shutil

    shutil.copytree(one_epoch_run, run_dir)
    first = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    steps_per_epoch = int(next(iter(first["optimizer"]["state"].values()))["step"])
    run_bundle("train_utility", {**TINY, "dataset_dir": str(phantom), "output_dir": str(run_dir), "epochs": 2, "resume": True})
    second = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert second["meta"]["epoch"] == 2
    assert second["trainer"]["iteration"] == 2 * first["trainer"]["iteration"]  # epoch 2 ran once, after epoch 1
    # Adam's step count carries on from epoch 1: the optimizer state was restored, not restarted
    assert int(next(iter(second["optimizer"]["state"].values()))["step"]) == 2 * steps_per_epoch
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [r["epoch"] for r in metrics["epochs"]] == [1, 2]
    best = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)["meta"]
    assert best["best_metric"] == max(r["val_dice_3d"] for r in metrics["epochs"])


def test_truncated_last_checkpoint_stops_resume_with_its_name(one_epoch_run: Path, phantom: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    import shutil

    run_dir = tmp_path / "broken"
    shutil.copytree(one_epoch_run, run_dir)
    last = run_dir / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:2048])
    code = main(["train-utility", "--dataset", str(phantom), "--output", str(run_dir), "--resume",
                 "--epochs", "2", "--preset", "small", "--spatial_size", "32", "--device", "cpu"])
    assert code == 2
    assert f"{last}: cannot be loaded" in capsys.readouterr().err
    assert (run_dir / "checkpoints" / "best.pt").is_file()  # nothing else touched


def test_existing_run_is_not_overwritten(one_epoch_run: Path, phantom: Path, capsys: pytest.CaptureFixture) -> None:
    before = (one_epoch_run / "checkpoints" / "best.pt").read_bytes()
    code = main(["train-utility", "--dataset", str(phantom), "--output", str(one_epoch_run), "--epochs", "1"])
    assert code == 2 and "already holds a run" in capsys.readouterr().err
    assert (one_epoch_run / "checkpoints" / "best.pt").read_bytes() == before


def test_checkpoint_of_another_preset_is_refused(one_epoch_run: Path) -> None:
    with pytest.raises(CheckpointError, match="holds a 'small' network but preset 'large' was expected"):
        load_network_weights(build_unet("large"), one_epoch_run / "checkpoints" / "best.pt", "large")


def test_unknown_config_key_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown config key 'epoch' for train_utility.json; did you mean --epochs"):
        check_override_keys(BUNDLE / "configs" / "train_utility.json", {"epoch": 2})


def test_monai_bundle_run_command(phantom: Path, tmp_path: Path) -> None:
    configs = BUNDLE / "configs"
    layered = str([str(configs / "common.json"), str(configs / "train_utility.json")])  # as the bundle docs write it
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", layered,
               "--meta_file", str(configs / "metadata.json"), "--logging_file", str(configs / "logging.conf"),
               "--bundle_root", str(BUNDLE), "--dataset_dir", str(phantom), "--output_dir", str(tmp_path / "run"),
               "--epochs", "1"] + [arg for key, value in TINY.items() for arg in (f"--{key}", str(value))]
    result = subprocess.run(command, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / "checkpoints" / "best.pt").is_file()


def test_bad_value_inside_the_config_is_one_line(phantom: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["train-utility", "--dataset", str(phantom), "--output", str(tmp_path / "run"), "--preset", "tiny",
                 "--epochs", "1", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "error: unknown network preset 'tiny'" in err and "Traceback" not in err, err
