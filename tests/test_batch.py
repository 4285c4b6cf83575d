"""Batches that survive a bad case: explain skips it (file and reason in the summary and manifest.json), the rest
finish, the exit status says so; a re-run skips what is done; --on_error stop refuses before writing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipeline.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture()
def batch(tiny_pair: dict[str, Path], tmp_path: Path) -> Path:
    folder = tmp_path / "inbox"
    folder.mkdir()
    source = next((tiny_pair["data"] / "imagesTs").glob("*.nii.gz"))
    for name in ("a_case", "c_case"):
        shutil.copy(source, folder / f"{name}.nii.gz")
    (folder / "b_broken.nii.gz").write_bytes(source.read_bytes()[:300])  # a truncated download
    return folder


def _explain(tiny_pair: dict[str, Path], inputs: Path, output: Path, *extra: str) -> int:
    return main(["explain", "--input", str(inputs), "--output", str(output), "--noise", str(tiny_pair["noise"]),
                 "--utility", str(tiny_pair["utility"]), "--device", "cpu", "--spatial_size", "32", *extra])


def test_a_corrupt_case_is_skipped_and_reported_and_the_others_finish(tiny_pair: dict[str, Path], batch: Path,
                                                                      tmp_path: Path, capsys) -> None:
    out = tmp_path / "maps"
    assert _explain(tiny_pair, batch, out) == 1  # one case failed
    printed = capsys.readouterr().out
    assert "explained 2 volume(s), 0 skipped (done before), 1 failed" in printed
    assert "b_broken" in printed and "b_broken.nii.gz" in printed.split("b_broken", 1)[1]  # the file is named
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert names == ["a_case_importance.nii.gz", "a_case_seg.nii.gz", "c_case_importance.nii.gz", "c_case_seg.nii.gz",
                     "manifest.json"]  # nothing of the broken case
    manifest = json.loads((out / "manifest.json").read_text())
    status = {c["case"]: (c["status"], c["error"]) for c in manifest["cases"]}
    assert status["a_case"] == ("done", None) and status["c_case"] == ("done", None)
    assert status["b_broken"][0] == "failed" and "b_broken.nii.gz" in status["b_broken"][1]

    written = {p.name: p.stat().st_mtime_ns for p in out.glob("*_case_*.nii.gz")}
    assert _explain(tiny_pair, batch, out) == 1  # again: the finished cases are skipped, the broken one fails again
    assert "explained 0 volume(s), 2 skipped (done before), 1 failed" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*_case_*.nii.gz")} == written
    assert _explain(tiny_pair, batch, out) == 1  # and again: still done (a skip keeps the case done)
    assert "explained 0 volume(s), 2 skipped (done before), 1 failed" in capsys.readouterr().out
    skipped = {c["case"]: c for c in json.loads((out / "manifest.json").read_text())["cases"]}["a_case"]
    assert skipped["status"] == "skipped" and skipped["outputs"] == ["a_case_importance.nii.gz", "a_case_seg.nii.gz"]

    assert _explain(tiny_pair, batch, out, "--overwrite") == 1  # --overwrite redoes them
    assert "explained 2 volume(s), 0 skipped" in capsys.readouterr().out

    other = tmp_path / "other_model_maps"  # the same folder with other settings is not "done"
    shutil.copytree(out, other)
    assert _explain(tiny_pair, batch, other, "--window", "[-100, 240]") == 2
    assert "already exist" in capsys.readouterr().err


def test_on_error_stop_refuses_the_batch_before_writing(tiny_pair: dict[str, Path], batch: Path, tmp_path: Path,
                                                       capsys) -> None:
    out = tmp_path / "stopped"
    assert _explain(tiny_pair, batch, out, "--on_error", "stop") == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "b_broken.nii.gz" in error[0], error
    assert not out.exists()  # every case is checked first: nothing written, the folder rolled back


def test_a_failure_inside_the_run_is_isolated_and_its_half_written_output_removed(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from pipeline.batch import run_cases
    from pipeline.handlers import ImportanceExporter

    exporter = ImportanceExporter(tmp_path)

    class Evaluator:  # stands in for the SupervisedEvaluator: writes a case's first output, then may fail
        state = SimpleNamespace(iteration=0, epoch=0, epoch_length=0)

        def run(self) -> None:
            [batch] = list(self.data_loader)
            case = batch["case"][0]
            (tmp_path / f"{case}_importance.nii.gz").write_text("half")
            if case == "bad":
                raise RuntimeError("out of memory in the utility\nsecond line")
            exporter.cases.append({"case": case, "status": "done"})

    entries = [{"case": c, "image": f"{c}.nii.gz"} for c in ("one", "bad", "two")]
    suffixes = ["_importance.nii.gz", "_seg.nii.gz"]
    counts = run_cases(Evaluator(), entries, None, exporter, "skip", suffixes=suffixes)
    assert counts == {"done": 2, "skipped": 0, "failed": 1}
    failed = next(c for c in exporter.cases if c["case"] == "bad")
    assert failed["error"] == "RuntimeError: out of memory in the utility" and failed["input"] == "bad.nii.gz"
    assert sorted(p.name for p in tmp_path.glob("*.nii.gz")) == ["one_importance.nii.gz", "two_importance.nii.gz"]
    with pytest.raises(RuntimeError, match="out of memory"):  # stop: the batch ends there, earlier cases stay
        run_cases(Evaluator(), entries, None, ImportanceExporter(tmp_path / "stop"), "stop", suffixes=suffixes)
