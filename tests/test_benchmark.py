"""The benchmark: its measuring tools on known work, and `unoise benchmark` end to end at toy size."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine

from pipeline.benchmark import format_table
from pipeline.benchmark.measure import count_flops, peak_memory, time_runs
from pipeline.benchmark.training import TrainerTimer
from pipeline.cli import main
from pipeline.device import cpu_has_bf16

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
TOY = ["--spatial-size", "32", "--batch-size", "2", "--utility-preset", "small", "--noise-preset", "small",
       "--repeats", "1", "--warmup", "0", "--cases", "4", "--slices", "8", "--device", "cpu"]


def test_count_flops_of_a_convolution_matches_the_formula() -> None:
    conv = torch.nn.Conv2d(2, 3, kernel_size=3, padding=1, bias=False)
    image = torch.rand(1, 2, 8, 8)
    assert count_flops(lambda: conv(image)) == 2 * (2 * 3 * 9) * 64  # 2 FLOPs per multiply-add, 64 outputs


def test_time_runs_counts_only_the_timed_calls() -> None:
    calls = []
    times = time_runs(lambda: calls.append(time.sleep(0.01)), repeats=3, warmup=2, device=torch.device("cpu"))
    assert len(calls) == 5 and len(times) == 3 and all(t >= 0.009 for t in times)
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        time_runs(lambda: None, repeats=0, warmup=0, device=torch.device("cpu"))


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="peak resident memory is read from Linux /proc")
def test_peak_memory_sees_a_large_allocation() -> None:
    with peak_memory(torch.device("cpu")) as small:
        torch.ones(1024)
    with peak_memory(torch.device("cpu")) as large:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        del block
    assert large["peak_mb"] - large["start_mb"] >= 60
    assert small["peak_mb"] - small["start_mb"] < 30


def test_trainer_timer_measures_the_data_wait() -> None:
    def slow_batches():
        for _ in range(6):
            time.sleep(0.02)  # the loader
            yield 0

    engine = Engine(lambda e, b: time.sleep(0.02))  # the step
    timer = TrainerTimer(warmup=1, device=torch.device("cpu"))
    timer.attach(engine)
    engine.run(slow_batches(), max_epochs=1, epoch_length=6)
    assert len(timer.iteration_s) == 5 and len(timer.wait_s) == 5
    # sleeps last at least what they ask for (never less): lower bounds hold on any machine, ratios need not
    assert all(wait >= 0.019 for wait in timer.wait_s)
    assert all(total >= wait + 0.019 for total, wait in zip(timer.iteration_s, timer.wait_s))  # the step on top


@pytest.fixture(scope="module")
def toy_utility(tiny_pair: dict[str, Path]) -> dict[str, Path]:
    return tiny_pair  # the suite's shared pair (conftest)


@pytest.mark.slow
def test_benchmark_script_writes_the_record_and_the_table(tmp_path: Path, toy_utility: dict[str, Path]) -> None:
    out = tmp_path / "benchmark.json"
    command = [sys.executable, str(SCRIPTS / "benchmark.py"), *TOY, "--output", str(out), "--utility",
               str(toy_utility["utility"]), "--dataset", str(toy_utility["data"]), "--dice-epochs", "1",
               "--val_fraction", "0.34", "--test_fraction", "0.0"]
    result = subprocess.run(command, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(out.read_text())

    step = record["train_noise_step"]
    for key in ("fp32_slices_per_s", "fast_slices_per_s", "plain_loop_slices_per_s"):
        assert step[key] > 0, key
    assert isinstance(step["dice_delta"], float)  # the dice check ran (None when it could not)
    assert record["dice_check"]["fp32"]["val_dice_clean"] >= 0.0
    assert record["dice_check"]["within_tolerance"] == (abs(step["dice_delta"]) <= 0.01
                                                        and abs(record["dice_check"]["clean_dice_delta"]) <= 0.01)
    fp32, fast = step["pipeline"]["fp32"]["effective"], step["pipeline"]["fast"]["effective"]
    assert (fp32["inferer"], fp32["autocast"], fp32["channels_last"]) == ("SimpleInferer", False, False)  # truly fp32
    assert fast["channels_last"] and fast["autocast"] == cpu_has_bf16()  # the configs' defaults on this CPU
    assert record["settings"]["numerics"]["tf32"] is False

    explain = record["explain"]
    for key in ("unoise_small_ms", "unoise_medium_ms", "unoise_large_ms", "gradcam_ms", "occlusion_ms"):
        assert explain[key] > 0, key
    assert explain["occlusion"]["windows"] == 100 and explain["occlusion"]["extrapolated"]  # (32 - 15) / 2 + 1 = 9 (+1 border)
    assert record["data"]["loader_slices_per_s"] > 0
    assert record["machine"]["cpu_count"] >= 1 and record["train_utility_step"]["fp32"]["peak_memory_mb"] is not None

    table = format_table(record)
    assert table in result.stdout  # the command prints the table it was given
    assert f"**{step['speedup']:.2f}x**" in table and f"delta {step['dice_delta']:+.4f}" in table


def test_benchmark_refuses_to_overwrite_and_prints_a_table(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "benchmark.json"
    out.write_text("{}")
    assert main(["benchmark", *TOY, "--output", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and out.read_text() == "{}"
    assert main(["benchmark", *TOY, "--output", str(tmp_path / "b.json"), "--utility", "x.pt"]) == 2
    assert "needs both --utility" in capsys.readouterr().err
    assert main(["benchmark", *TOY, "--output", str(tmp_path / "b.json"), "--val_fraction", "0.2"]) == 2
    assert "need --utility and --dataset" in capsys.readouterr().err
    assert main(["benchmark", *TOY, "--output", str(tmp_path / "b.json"), "--batch-size", "0"]) == 2
    assert "--batch-size must be an integer >= 1" in capsys.readouterr().err
    assert main(["benchmark", *TOY, "--output", str(tmp_path / "b.json"), "--utility", str(tmp_path / "no.pt"),
                 "--dataset", str(tmp_path)]) == 2
    assert "no.pt: not found" in capsys.readouterr().err
    assert main(["benchmark", "--table", str(out)]) == 2  # "{}" is no benchmark record
    assert f"{out}: not a benchmark.json" in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists()
