"""Benchmarks are not tests; this only proves they run and write their JSON at toy size."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def test_bench_data_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, str(SCRIPTS / "bench_data.py"), "--cases", "2", "--size", "32",
                             "--slices", "8", "--repeats", "1", "--output", str(out)],
                            capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(out.read_text())
    for key in ("phantom_cases_per_s", "load_window_volumes_per_s", "cached_slices_per_s_memory", "cached_slices_per_s_disk"):
        assert figures[key] > 0, key
    assert figures["machine"]["cpu_count"] >= 1


def test_noise_settings_trains_evaluates_and_tabulates_every_setting(tmp_path: Path) -> None:
    from pipeline.bundle import run_bundle
    from pipeline.phantom import write_phantom_dataset

    data = tmp_path / "phantom"
    write_phantom_dataset(data, cases=6, size=32, slices=10, seed=3)
    split = {"val_fraction": 0.34, "test_fraction": 0.17, "seed": 0}
    run_bundle("train_utility", {**split, "preset": "small", "spatial_size": 32, "batch_size": 4, "epochs": 1,
                                 "device": "cpu", "dataset_dir": str(data), "output_dir": str(tmp_path / "utility")})
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps([{"name": "a", "overrides": {"noise_preset": "small", "noise_weight": 0.03}},
                                {"name": "b", "overrides": {"noise_preset": "small", "perturbation": "additive", "objective": "blend",
                                                            "baseline": 0.0, "max_scale": 0.4, "deletion_weight": 0.0}},
                                {"name": "c", "overrides": {"noise_preset": "small", "objective": "curves", "deletion_weight": 1.0,
                                                            "baseline": ["blur", "mean", "noise", "floor"]}}]))
    out = tmp_path / "settings.json"
    result = subprocess.run([sys.executable, str(SCRIPTS / "noise_settings.py"), "--dataset", str(data), "--utility",
                             str(tmp_path / "utility" / "checkpoints" / "best.pt"), "--work-dir", str(tmp_path / "work"),
                             "--output", str(out), "--grid", str(grid), "--epochs", "1", "--val-fraction", "0.34",
                             "--test-fraction", "0.17", "--slices-per-case", "2", "--device", "cpu"],
                            capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads(out.read_text())
    assert record["split"] == "validation" and [row["name"] for row in record["settings"]] == ["a", "b", "c"]
    assert set(record["baselines"]) == {"occlusion", "segmentation", "random", "occlusion_mean", "occlusion_noise",
                                        "occlusion_floor", "occlusion_blur:8"}  # occlusion once per infill
    judged = record["settings"][2]["verdicts"]["occlusion_deletion_auc"]["infills"]
    assert [(v["infill"], v["against"]) for v in judged] == [("blur", "occlusion"), ("mean", "occlusion_mean"),
                                                              ("noise", "occlusion_noise"), ("floor", "occlusion_floor")]
    assert set(record["settings"][2]["infills"]) == {"blur", "mean", "noise", "floor", "road", "blur:8"}
    assert "| a |" in result.stdout and "| c |" in result.stdout and "| occlusion (baseline) |" in result.stdout


def test_hostile_inputs_refuses_the_header_only_file_everywhere_in_little_memory(tmp_path: Path) -> None:
    out = tmp_path / "hostile.json"
    result = subprocess.run([sys.executable, str(SCRIPTS / "hostile_inputs.py"), "--work", str(tmp_path / "work"), "--output",
                             str(out), "--only", "header claims 6.3 G voxels"],
                            capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    record = json.loads(out.read_text())
    commands = {row["command"] for row in record["rows"]}
    assert commands == {"inspect", "train-utility", "train-noise", "evaluate", "explain"}
    refusals = [row for row in record["rows"] if row["expect"] == "refused"]
    assert len(refusals) == 5 and all(row["outcome"] == "refused" and row["names"] for row in refusals)
    isolated = [row for row in record["rows"] if row["expect"] == "isolated"]  # inspect / evaluate: the batch goes on
    assert {row["command"] for row in isolated} == {"inspect", "evaluate"}
    assert all(row["outcome"] == "isolated" and row["names"] for row in isolated), isolated
    assert record["summary"]["tracebacks"] == 0 and record["summary"]["failed"] == []
    assert record["summary"]["peak_mb_header_only_file"] < 500


def test_gpu_check_says_so_and_exits_0_without_cuda(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("on a GPU machine the check is `make gpu-check` itself, minutes long")
    out = tmp_path / "gpu.json"
    result = subprocess.run([sys.executable, str(SCRIPTS / "gpu_check.py"), "--output", str(out), "--work", str(tmp_path / "w")],
                            capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=120)
    assert result.returncode == 0 and "no CUDA device" in result.stdout and not out.exists()


def test_foreign_bundle_study_writes_agreement_and_paired_visibility(tmp_path: Path) -> None:
    """scripts/foreign_bundle.py at toy size: a bundle trained with plain torch, two settings, the record's fields."""
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps([{"name": "defaults", "overrides": {"noise_preset": "small"}},
                                    {"name": "target", "overrides": {"noise_preset": "small", "agreement_target": 0.9}}]))
    out = tmp_path / "foreign.json"
    result = subprocess.run([sys.executable, str(SCRIPTS / "foreign_bundle.py"), "--work-dir", str(tmp_path / "work"),
                             "--output", str(out), "--settings", str(settings), "--cases", "4", "--eval-cases", "3",
                             "--size", "32", "--slices", "8", "--bundle-epochs", "1", "--epochs", "1",
                             "--slices-per-case", "1", "--bootstrap", "50", "--device", "cpu"],
                            capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads(out.read_text())
    rows = {row["name"]: row for row in record["settings"]}
    assert set(rows) == {"defaults", "target"} and set(record["nulls"]) == {"segmentation", "random"}
    fixed, adapted = rows["defaults"]["training"]["train_area_weight"], rows["target"]["training"]["train_area_weight"]
    assert fixed["last_epoch"] == pytest.approx(0.01)  # the default weight does not move
    assert adapted["last_epoch"] != pytest.approx(0.01)  # the target moves it
    assert all(row["minus_segmentation"][spec]["n"] == 3 for row in rows.values() for spec in row["visibility"])
