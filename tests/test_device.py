"""Where the networks run: the CPU bf16 switch and the loader's worker count."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import SimpleInferer

import pipeline.device as device
from pipeline.device import AutocastInferer, build_inferer, resolve_workers
from pipeline.errors import ConfigError

CPU = torch.device("cpu")


@pytest.mark.parametrize("has_bf16", [True, False])
def test_cpu_bf16_auto_follows_the_cpu(monkeypatch: pytest.MonkeyPatch, has_bf16: bool) -> None:
    monkeypatch.setattr(device, "cpu_has_bf16", lambda: has_bf16)
    assert isinstance(build_inferer(CPU, "auto"), AutocastInferer if has_bf16 else SimpleInferer)
    assert isinstance(build_inferer(CPU, True), AutocastInferer) and isinstance(build_inferer(CPU, False), SimpleInferer)


def test_cpu_bf16_refuses_other_values() -> None:
    with pytest.raises(ConfigError, match="cpu_bf16 must be true, false or 'auto'"):
        build_inferer(CPU, "yes")


def test_autocast_inferer_returns_float32_logits() -> None:
    conv = torch.nn.Conv2d(1, 1, 3, padding=1)
    logits = AutocastInferer("cpu")(torch.rand(1, 1, 8, 8), conv)
    assert logits.dtype == torch.float32


def test_workers_auto_is_none_on_the_cpu_and_shares_the_cpus_between_gpu_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_workers("auto", CPU) == 0 and resolve_workers(3, CPU) == 3
    monkeypatch.setattr(device.os, "cpu_count", lambda: 16)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert resolve_workers("auto", torch.device("cuda")) == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")  # 8 GPU processes on a 16-core node
    assert resolve_workers("auto", torch.device("cuda")) == 1
    with pytest.raises(ConfigError, match="num_workers must be 'auto' or an integer >= 0"):
        resolve_workers(-1, CPU)


def test_a_schedule_no_training_can_run_is_refused_naming_the_setting() -> None:
    from pipeline.engines import check_schedule

    check_schedule(1, 0.001, 0.0)
    for args, setting in (((0, 0.001, 0.0), "epochs"), ((2, 0.0, 0.0), "learning_rate"), ((2, 0.001, 0.01), "min_lr")):
        with pytest.raises(ConfigError, match=f"^{setting} must be"):
            check_schedule(*args)
