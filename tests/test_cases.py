"""The case-by-case evaluation of ``explain`` without a trained model: a case that fails to load, to run or to be
written is recorded with its reason, exactly the files it wrote go, the next case runs (skip) or the run ends
there (stop); a case done before is recorded as skipped with the files it kept."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import DataLoader, MetaTensor
from monai.inferers import SimpleInferer

from pipeline.engines import CaseDataset, CaseEvaluator, collate_cases
from pipeline.errors import DataError
from pipeline.handlers import ImportanceExporter

CASES = ["one", "unreadable", "too_bright", "half_written", "two"]


def _load(entry: dict) -> dict:
    if entry["case"] == "unreadable":
        raise DataError(f"{entry['image']}: not a NIfTI file (truncated?); re-export it.")
    value = 10.0 if entry["case"] == "too_bright" else 0.5
    meta = {"original_affine": np.eye(4), "spatial_shape": (4, 4, 2), "filename_or_obj": entry["image"]}
    return {"case": entry["case"], "image": MetaTensor(torch.full((1, 4, 4, 2), value), meta=meta)}


class _Network(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.max() >= 10:
            raise RuntimeError("input out of range")
        return torch.cat([x, x], dim=1)


def _run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, on_error: str, done: tuple = ()) -> ImportanceExporter:
    def overlay(self: ImportanceExporter, case: str, item: dict) -> Path:
        if case == "half_written":  # after its NIfTI maps are written
            raise OSError("cannot draw the overlay")
        path = self.output_dir / f"{case}_overlay.png"
        path.write_bytes(b"png")
        return path

    monkeypatch.setattr(ImportanceExporter, "_write_overlay", overlay)
    entries = [{"case": case, "image": f"{case}.nii.gz"} for case in CASES]
    loader = DataLoader(CaseDataset(entries, _load, done=done), batch_size=1, collate_fn=collate_cases)
    exporter = ImportanceExporter(tmp_path, overlay=True, provenance={"checkpoints": {}}, on_error=on_error)
    evaluator = CaseEvaluator(device=torch.device("cpu"), val_data_loader=loader, network=_Network(),
                              inferer=SimpleInferer(), val_handlers=[exporter])
    evaluator.run()
    return exporter


def test_skip_records_each_failure_removes_its_files_and_runs_the_rest(tmp_path: Path, monkeypatch) -> None:
    exporter = _run(tmp_path, monkeypatch, "skip")
    assert exporter.counts() == {"done": 2, "skipped": 0, "failed": 3}
    records = {c["case"]: c for c in json.loads((tmp_path / "manifest.json").read_text())["cases"]}
    assert [records[case]["status"] for case in CASES] == ["done", "failed", "failed", "failed", "done"]
    assert records["unreadable"]["error"] == "unreadable.nii.gz: not a NIfTI file (truncated?); re-export it."
    assert records["too_bright"]["error"].startswith("RuntimeError") and "out of range" in records["too_bright"]["error"]
    assert records["half_written"]["error"] == "OSError: cannot draw the overlay"
    assert records["too_bright"]["input"] == "too_bright.nii.gz" and records["half_written"]["input"] == "half_written.nii.gz"
    # the half-written case's maps, written before its overlay failed, went with it: tracked, not guessed by time
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "manifest.json", "one_importance.nii.gz", "one_overlay.png", "one_seg.nii.gz",
        "two_importance.nii.gz", "two_overlay.png", "two_seg.nii.gz"]


def test_stop_ends_the_run_at_the_first_failure_with_its_own_error(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(DataError, match="unreadable.nii.gz: not a NIfTI file"):
        _run(tmp_path, monkeypatch, "stop")
    records = json.loads((tmp_path / "manifest.json").read_text())["cases"]
    assert [(c["case"], c["status"]) for c in records] == [("one", "done"), ("unreadable", "failed")]
    assert sorted(p.name for p in tmp_path.glob("*.nii.gz")) == ["one_importance.nii.gz", "one_seg.nii.gz"]


def test_a_case_done_before_is_not_loaded_and_keeps_its_files(tmp_path: Path, monkeypatch) -> None:
    _run(tmp_path, monkeypatch, "skip")
    exporter = _run(tmp_path, monkeypatch, "skip", done=("one", "two", "unreadable"))  # unreadable: never loaded
    records = {c["case"]: c for c in exporter.cases}
    assert records["one"]["status"] == records["two"]["status"] == records["unreadable"]["status"] == "skipped"
    assert records["one"]["outputs"] == ["one_importance.nii.gz", "one_seg.nii.gz", "one_overlay.png"]
    assert exporter.counts() == {"done": 0, "skipped": 3, "failed": 2}


def test_one_case_per_batch() -> None:
    from pipeline.errors import ConfigError

    loader = DataLoader(CaseDataset([], _load), batch_size=2, collate_fn=collate_cases)
    with pytest.raises(ConfigError, match="one case per batch"):
        CaseEvaluator(device=torch.device("cpu"), val_data_loader=loader, network=_Network(), inferer=SimpleInferer())
