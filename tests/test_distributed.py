"""Several processes, one run: rank helpers, metric reductions over gloo, and torchrun end to end (CPU)."""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events
from monai.bundle import ConfigParser

from pipeline.networks.checkpoints import load_checkpoint, load_network_weights
from pipeline.bundle import default_bundle_root
from pipeline.data import write_datalist
from pipeline.distributed import (
    BroadcastBuffers,
    NullSummaryWriter,
    build_summary_writer,
    cleanup,
    gather_objects,
    get_rank,
    get_world_size,
    init_distributed,
    is_main_process,
    quiet_other_ranks,
    sum_over_ranks,
)
from pipeline.rundir import prepare_run_dir
from pipeline.errors import ConfigError
from pipeline.handlers import CheckpointHandler, MetricsRecorder, OutputMean, VolumeDice
from pipeline.networks import build_unet
from pipeline.phantom import write_phantom_dataset

BUNDLE = default_bundle_root()
CONFIGS = BUNDLE / "configs"
TORCHRUN = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def no_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in TORCHRUN:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def rank_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process poses as rank 1 of 2 of a torchrun job whose process group is not initialised yet."""
    for name, value in {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(name, value)


# ---- rank helpers, single process ---------------------------------------------------------------


def test_a_plain_process_is_rank_zero_of_one(no_torchrun: None) -> None:
    assert (get_rank(), get_world_size(), is_main_process()) == (0, 1, True)
    assert gather_objects({"a": 1}) == [{"a": 1}]
    assert sum_over_ranks({"a": 1.5, "n": 3}) == {"a": 1.5, "n": 3}


def test_rank_comes_from_torchrun_before_the_process_group_exists(rank_one: None) -> None:
    assert (get_rank(), get_world_size(), is_main_process()) == (1, 2, False)


def test_a_lone_rank_variable_does_not_make_a_single_process_silent(no_torchrun: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "3")  # e.g. set by a cluster scheduler, no torchrun
    assert (get_rank(), get_world_size(), is_main_process()) == (0, 1, True)


def test_init_outside_torchrun_says_how_to_start(no_torchrun: None) -> None:
    with pytest.raises(ConfigError, match=r"MASTER_ADDR, MASTER_PORT missing\); start it with `torchrun --nproc_per_node N"):
        init_distributed("cpu")


def test_init_refuses_a_numbered_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in zip(TORCHRUN, ("0", "0", "1", "127.0.0.1", "29500")):
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match="choose the GPUs with CUDA_VISIBLE_DEVICES"):
        init_distributed("cuda:1")


def test_other_ranks_get_a_null_summary_writer(rank_one: None, tmp_path: Path) -> None:
    writer = build_summary_writer(tmp_path / "tb")
    assert isinstance(writer, NullSummaryWriter)
    writer.add_scalar("loss", 1.0, 1)
    writer.add_image("ct", torch.zeros(1, 4, 4), 1)
    from monai.visualize import plot_2d_or_3d_image

    plot_2d_or_3d_image(torch.rand(1, 1, 8, 8, 4), 1, writer, tag="volume")  # 3D: an animated GIF via _get_file_writer()
    writer.close()
    assert not (tmp_path / "tb").exists()


def test_rank_zero_gets_tensorboard(no_torchrun: None, tmp_path: Path) -> None:
    writer = build_summary_writer(tmp_path / "tb")
    writer.add_scalar("loss", 1.0, 1)
    writer.close()
    assert len(list((tmp_path / "tb").glob("events.out.tfevents.*"))) == 1


def test_other_ranks_check_the_run_folder_but_write_nothing(rank_one: None, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    assert prepare_run_dir(run_dir, False, {"epochs": 1}) == run_dir
    write_datalist({"training": [], "validation": []}, run_dir / "datalist.json")
    assert not run_dir.exists()
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"")
    with pytest.raises(ConfigError, match="already holds a run"):  # every rank fails alike, none waits forever
        prepare_run_dir(run_dir, False, {"epochs": 1})


def test_other_ranks_track_the_best_checkpoint_without_writing(rank_one: None, tmp_path: Path) -> None:
    network = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    trainer, evaluator = Engine(lambda e, b: None), Engine(lambda e, b: None)
    checkpoints = CheckpointHandler(tmp_path / "checkpoints", network, optimizer, evaluator, "val_dice_3d")
    checkpoints.attach(trainer)
    MetricsRecorder(tmp_path / "metrics.json", optimizer, evaluator).attach(trainer)
    trainer.state.epoch = evaluator.state.epoch = 1
    evaluator.state.metrics = {"val_dice_3d": 0.4}
    trainer.fire_event(Events.EPOCH_STARTED)
    trainer.fire_event(Events.EPOCH_COMPLETED)
    assert (checkpoints.best_metric, checkpoints.best_epoch) == (0.4, 1)
    assert list(tmp_path.iterdir()) == []


def test_quiet_other_ranks_keeps_warnings(rank_one: None) -> None:
    log = logging.getLogger("pipeline.test")
    try:
        quiet_other_ranks()
        assert not log.isEnabledFor(logging.INFO) and log.isEnabledFor(logging.WARNING)
    finally:
        logging.disable(logging.NOTSET)


# ---- reductions over two gloo processes ---------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _slices() -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """Eleven (case, pred, label) slices of three cases, binary (1, 6, 6), seeded."""
    generator = torch.Generator().manual_seed(0)
    cases = ["a", "a", "a", "a", "b", "b", "b", "c", "c", "c", "c"]
    masks = [(torch.rand(2, 1, 6, 6, generator=generator) > 0.55).float() for _ in cases]  # (pred, label) pairs
    return [(case, pred, label) for case, (pred, label) in zip(cases, masks)]


def _feed(metric: VolumeDice | OutputMean, slices: list[tuple[str, torch.Tensor, torch.Tensor]], batch_size: int = 2) -> float:
    """Run ``slices`` through ``metric`` in batches, as an evaluator does; return ``compute()``."""
    engine = Engine(lambda e, b: None)
    metric.reset()
    for start in range(0, len(slices), batch_size):
        batch = slices[start : start + batch_size]
        engine.state.batch = {"case": [case for case, _, _ in batch]}
        engine.state.output = [{"pred": pred, "label": label, "pred_tolerance": pred * 0.5} for _, pred, label in batch]
        if isinstance(metric, VolumeDice):
            metric.iteration_completed(engine)
        else:
            metric.update(engine.state.output)
    return metric.compute()


def _reduction_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)  # a forked child must not reuse the parent's OpenMP pool
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    try:
        init_distributed("cpu", timeout_minutes=1.0)
        share = _slices()[rank::world_size]  # DistributedSampler's split: a case's slices land on both ranks
        dice = VolumeDice()
        result = {"dice": _feed(dice, share), "per_case": dice.per_case, "mean": _feed(OutputMean(key="pred_tolerance"), share),
                  "sums": sum_over_ranks({"x": float(rank + 1), f"only_{rank}": 1.0}),
                  "gathered": [gather_objects(None if rank == 0 else 2.5), gather_objects(f"rank {rank}")]}
        norm = torch.nn.BatchNorm2d(2)
        norm.running_mean.fill_(float(rank + 1))
        BroadcastBuffers(norm)(None)
        result["running_mean"] = norm.running_mean.tolist()
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        cleanup()


@pytest.mark.skipif("fork" not in torch.multiprocessing.get_all_start_methods(), reason="forks two gloo processes")
def test_metrics_are_reduced_over_two_gloo_processes(no_torchrun: None, tmp_path: Path) -> None:
    """Each rank holds every other slice (DistributedSampler's split); every rank must get the full-set value."""
    single = VolumeDice()
    expected_dice = _feed(single, _slices())
    expected_mean = _feed(OutputMean(key="pred_tolerance"), _slices())
    # fork, not spawn: the children start in 0.1 s instead of re-importing MONAI for 10 s
    torch.multiprocessing.start_processes(_reduction_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True,
                                          start_method="fork")
    for rank in (0, 1):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["dice"] == pytest.approx(expected_dice, abs=1e-12), rank
        assert result["per_case"] == pytest.approx(single.per_case, abs=1e-12), rank
        assert result["mean"] == pytest.approx(expected_mean, abs=1e-12), rank
        assert result["sums"] == {"x": 3.0, "only_0": 1.0, "only_1": 1.0}
        assert result["gathered"] == [[None, 2.5], ["rank 0", "rank 1"]]  # any value, in rank order, as it went
        assert result["running_mean"] == [1.0, 1.0]  # rank 0's statistics everywhere


# ---- torchrun end to end ------------------------------------------------------------------------

TINY = {"preset": "small", "spatial_size": 32, "device": "cpu", "val_fraction": 0.34, "test_fraction": 0.0,
        "num_workers": 0, "other_fraction": 0.5, "seed": 0}
# 20 epochs at lr 0.01 without augmentation: both runs reach a 3D dice of about 0.4-0.6 on the phantoms
TRAIN = {**TINY, "epochs": 20, "learning_rate": 0.01, "aug_prob": 0.0}
PER_PROCESS_BATCH = 2


def _bundle_command(configs: list[str], overrides: dict[str, object], processes: int) -> list[str]:
    files = [str(CONFIGS / f"{name}.json") for name in ["common", *configs]]
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    return [*launcher, "-m", "monai.bundle", "run", "--config_file", str(files),
            "--meta_file", str(CONFIGS / "metadata.json"), "--logging_file", str(CONFIGS / "logging.conf"),
            "--bundle_root", str(BUNDLE)] + [arg for key, value in overrides.items() for arg in (f"--{key}", str(value))]


def _run(command: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in TORCHRUN:
        env.pop(name, None)
    result = subprocess.run(command, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=600, env=env)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("distributed")
    data = root / "phantom"
    write_phantom_dataset(data, cases=5, size=32, slices=12, seed=0)
    one, two = root / "one_process", root / "two_processes"
    _run(_bundle_command(["train_utility"], {**TRAIN, "dataset_dir": data, "output_dir": one,
                                             "batch_size": 2 * PER_PROCESS_BATCH}, processes=1))
    _run(_bundle_command(["train_utility", "multi_gpu_train"], {**TRAIN, "dataset_dir": data, "output_dir": two,
                                                                "batch_size": PER_PROCESS_BATCH}, processes=2))
    return {"data": data, "one": one, "two": two}


@pytest.mark.slow
def test_two_processes_write_one_run_folder(runs: dict[str, Path]) -> None:
    run = runs["two"]
    files = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())
    events = [name for name in files if name.startswith("tensorboard/")]
    assert len(events) == 1 and "events.out.tfevents." in events[0], files  # rank 0's event file alone
    assert [name for name in files if name not in events] == [
        "checkpoints/best.pt", "checkpoints/last.pt", "config.json", "datalist.json", "metrics.json"], files
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert not any(key.startswith("module.") for key in best["model"])  # the raw network, not the DDP wrapper
    load_network_weights(build_unet("small"), run / "checkpoints" / "best.pt", "small")
    assert load_checkpoint(run / "checkpoints" / "last.pt")["meta"]["epoch"] == TRAIN["epochs"]
    assert json.loads((run / "config.json").read_text())["world_size"] == 2  # the global batch is 2 x batch_size
    assert [r["epoch"] for r in json.loads((run / "metrics.json").read_text())["epochs"]] == list(range(1, TRAIN["epochs"] + 1))


@pytest.mark.slow
def test_two_process_dice_is_close_to_one_process(runs: dict[str, Path]) -> None:
    one = json.loads((runs["one"] / "metrics.json").read_text())["best"]["val_dice_3d"]
    two = json.loads((runs["two"] / "metrics.json").read_text())["best"]["val_dice_3d"]
    # measured (seeds 0/1/2): one process 0.53/0.55/0.42, two processes 0.47/0.57/0.42
    assert one > 0.3 and two > 0.3, (one, two)
    assert two == pytest.approx(one, abs=0.15), (one, two)


@pytest.mark.slow
def test_reduced_dice_equals_a_single_process_evaluation_of_the_checkpoint(runs: dict[str, Path]) -> None:
    """The 2-process metric covers every validation slice of every case, and best.pt is the model it scored."""
    run = runs["two"]
    metrics = json.loads((run / "metrics.json").read_text())
    record = metrics["epochs"][metrics["best"]["epoch"] - 1]
    validation = [entry["case"] for entry in json.loads((run / "datalist.json").read_text())["validation"]]
    assert sorted(record["val_dice_3d_per_case"]) == sorted(validation)

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "common.json"), str(CONFIGS / "train_utility.json")])
    parser.update({**TINY, "bundle_root": str(BUNDLE), "dataset_dir": str(runs["data"]), "batch_size": PER_PROCESS_BATCH,
                   "output_dir": str(run.parent / "rescore"), "validate#evaluator#val_handlers": None,
                   "validate#dataset#progress": False})
    network = parser.get_parsed_content("network")
    network.load_state_dict(load_checkpoint(run / "checkpoints" / "best.pt")["model"])
    evaluator = parser.get_parsed_content("validate#evaluator")
    evaluator.run()
    assert evaluator.state.metrics["val_dice_3d"] == pytest.approx(record["val_dice_3d"], abs=1e-6)
    assert parser.get_parsed_content("validate#volume_dice").per_case == pytest.approx(record["val_dice_3d_per_case"], abs=1e-6)
    assert evaluator.state.metrics["val_dice"] == pytest.approx(record["val_dice"], abs=1e-6)


@pytest.mark.slow
def test_noise_model_trains_over_two_processes(runs: dict[str, Path]) -> None:
    run = runs["two"].parent / "noise_two_processes"
    overrides = {**{k: v for k, v in TINY.items() if k != "preset"}, "noise_preset": "small", "dataset_dir": runs["data"],
                 "output_dir": run, "utility_checkpoint": runs["one"] / "checkpoints" / "best.pt",
                 "batch_size": PER_PROCESS_BATCH, "epochs": 1}
    _run(_bundle_command(["train_noise", "multi_gpu_train"], overrides, processes=2))
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert {p.name for p in (run / "checkpoints").iterdir()} == {"best.pt", "last.pt"}
    record = json.loads((run / "metrics.json").read_text())["epochs"][0]
    for key in ("train_loss", "train_utility_loss", "train_mean_tolerance", "val_objective", "val_dice_clean",
                "val_mean_tolerance", "val_ring_ratio"):
        assert key in record, key
    load_network_weights(build_unet("small"), run / "checkpoints" / "best.pt", "small")


@pytest.mark.parametrize("config", ["train_utility", "train_noise"])
def test_multi_gpu_config_layers_over_each_train_config(config: str) -> None:
    merged = ConfigParser.load_config_files([CONFIGS / "common.json", CONFIGS / f"{config}.json", CONFIGS / "multi_gpu_train.json"])
    parser = ConfigParser(merged)
    assert parser["train_network"]["_target_"] == "torch.nn.parallel.DistributedDataParallel"
    assert parser["train#trainer#network"] == "@train_network"
    assert parser["validate#evaluator#network"] != "@train_network"  # validation never goes through DDP
    saved = next(h for h in parser["train#handlers"] if h.get("_target_") == "pipeline.handlers.CheckpointHandler")["network"]
    assert saved == ("@network" if config == "train_utility" else "@noise_net")
    assert parser["train#dataloader#sampler"] == "@train#sampler" and parser["train#dataloader#shuffle"] is False
    assert parser["validate#dataloader#sampler"] == "@validate#sampler"
    assert parser["initialize"][0] == "$monai.utils.set_determinism(seed=@seed)"  # the train config's own steps stay
    assert parser["initialize"][-1] == "$pipeline.distributed.barrier(@run_device)"
    assert parser["validate#handlers"][-1]["_target_"] == "pipeline.distributed.BroadcastBuffers"


@pytest.mark.slow
def test_3d_utility_and_noise_train_over_two_processes(runs: dict[str, Path]) -> None:
    """The 3D overlays (patches, sliding-window validation) under torchrun, as the 2D configs."""
    root = runs["two"].parent
    tiny_3d = {**{k: v for k, v in TINY.items() if k not in ("spatial_size", "other_fraction")}, "dataset_dir": runs["data"],
               "roi_size": "[32, 32, 8]", "samples_per_volume": 2, "batch_size": 1, "epochs": 2}
    utility = root / "utility_3d_two_processes"
    _run(_bundle_command(["train_utility", "train_3d", "multi_gpu_train"], {**tiny_3d, "output_dir": utility}, processes=2))
    noise = root / "noise_3d_two_processes"
    _run(_bundle_command(["train_noise", "train_noise_3d", "multi_gpu_train"], {
        **{k: v for k, v in tiny_3d.items() if k not in ("preset", "roi_size")}, "noise_preset": "small",
        "utility_checkpoint": utility / "checkpoints" / "best.pt", "output_dir": noise}, processes=2))
    for run, kind in ((utility, "utility"), (noise, "noise")):
        assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1, run  # rank 0 alone writes
        meta = load_checkpoint(run / "checkpoints" / "last.pt")["meta"]
        assert (meta["kind"], meta["spatial_dims"], meta["roi_size"], meta["epoch"]) == (kind, 3, [32, 32, 8], 2)
        assert json.loads((run / "config.json").read_text())["world_size"] == 2
        record = json.loads((run / "metrics.json").read_text())["epochs"][-1]
        validation = [entry["case"] for entry in json.loads((run / "datalist.json").read_text())["validation"]]
        if kind == "utility":  # whole validation volumes by sliding window, gathered over both ranks
            assert sorted(record["val_dice_3d_per_case"]) == sorted(validation)
        else:
            assert math.isfinite(record["val_agreement"])
