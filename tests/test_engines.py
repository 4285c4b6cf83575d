"""Engine pieces chosen by name: the CPU bf16 switch and the loader's worker count."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import SimpleInferer

import pipeline.engines as engines
from pipeline.engines import AutocastInferer, build_inferer, resolve_workers
from pipeline.errors import ConfigError

CPU = torch.device("cpu")


@pytest.mark.parametrize("has_bf16", [True, False])
def test_cpu_bf16_auto_follows_the_cpu(monkeypatch: pytest.MonkeyPatch, has_bf16: bool) -> None:
    monkeypatch.setattr(engines, "cpu_has_bf16", lambda: has_bf16)
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
    monkeypatch.setattr(engines.os, "cpu_count", lambda: 16)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert resolve_workers("auto", torch.device("cuda")) == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")  # 8 GPU processes on a 16-core node
    assert resolve_workers("auto", torch.device("cuda")) == 1
    with pytest.raises(ConfigError, match="num_workers must be 'auto' or an integer >= 0"):
        resolve_workers(-1, CPU)
