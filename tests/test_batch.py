"""Batches that survive a bad case: explain skips it (file and reason in the summary and manifest.json), the rest
finish, the exit status says so; a re-run skips what is done; --on_error stop refuses before writing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
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


def test_torchrun_shards_the_cases_over_two_processes_into_one_manifest(tiny_pair: dict[str, Path], batch: Path,
                                                                        tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    import nibabel as nib

    for name in ("d_case", "e_case"):  # 4 good cases and the broken one: both ranks get good and the broken one a rank
        shutil.copy(batch / "a_case.nii.gz", batch / f"{name}.nii.gz")
    env = {key: value for key, value in os.environ.items() if key not in ("RANK", "LOCAL_RANK", "WORLD_SIZE",
                                                                          "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"

    def torchrun(inputs: Path) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                   "pipeline.cli", "explain", "--input", str(inputs), "--output", str(tmp_path / "sharded"),
                   "--noise", str(tiny_pair["noise"]), "--utility", str(tiny_pair["utility"]), "--device", "cpu",
                   "--spatial_size", "32"]
        return subprocess.run(command, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=600,
                              env=env)

    result = torchrun(batch)
    assert result.returncode == 1, (result.stdout[-2000:], result.stderr[-2000:])  # one case failed
    assert result.stdout.count("explained 4 volume(s), 0 skipped (done before), 1 failed") == 1  # rank 0 reports
    manifest = json.loads((tmp_path / "sharded" / "manifest.json").read_text())
    status = {case["case"]: case["status"] for case in manifest["cases"]}
    assert status == {"a_case": "done", "b_broken": "failed", "c_case": "done", "d_case": "done", "e_case": "done"}
    assert {case["run"] for case in manifest["cases"]} == {0} and manifest["run"]["processes"] == 2
    assert not list((tmp_path / "sharded").glob("manifest.rank*.json"))  # merged, the parts gone
    assert not list((tmp_path / "sharded").glob("b_broken*"))

    assert _explain(tiny_pair, batch / "a_case.nii.gz", tmp_path / "single") == 0  # the same maps as one process
    single = np.asarray(nib.load(str(tmp_path / "single" / "a_case_importance.nii.gz")).dataobj)
    for case in ("a_case", "c_case", "d_case", "e_case"):
        sharded = np.asarray(nib.load(str(tmp_path / "sharded" / f"{case}_importance.nii.gz")).dataobj)
        assert np.allclose(sharded, single, atol=1e-6), case

    (batch / "b_broken.nii.gz").unlink()
    again = torchrun(batch)  # the same command: every case done before, whichever rank did it
    assert again.returncode == 0, (again.stdout[-2000:], again.stderr[-2000:])
    assert "explained 0 volume(s), 4 skipped (done before), 0 failed" in again.stdout


def test_inspect_reports_a_corrupt_case_summarises_the_others_and_exits_1(batch: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["inspect", "--dataset", str(batch)]) == 1
    out = capsys.readouterr().out
    assert "1 of 3 case(s) failed" in out and "cases: 2 (0 with label)" in out
    assert "b_broken: " in out and "b_broken.nii.gz" in out and "truncated" in out  # the file and the reason
    assert main(["inspect", "--dataset", str(batch), "--on_error", "stop"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0  # stop: the one-line refusal, as before


def test_evaluate_leaves_a_corrupt_case_out_says_so_and_exits_1(tiny_pair: dict[str, Path], tmp_path: Path) -> None:
    from pipeline.evaluation.settings import load_split

    data = tmp_path / "phantom"
    shutil.copytree(tiny_pair["data"], data)
    split = {"--val_fraction": "0.34", "--test_fraction": "0.0"}
    cases = load_split(str(data), "training", 0.34, 0.0, 0, "validation", False)["validation"]
    assert len(cases) == 2
    broken = Path(cases[0]["image"])
    broken.write_bytes(broken.read_bytes()[:300])
    args = ["evaluate", "--dataset", str(data), "--utility", str(tiny_pair["utility"]), "--noise", str(tiny_pair["noise"]),
            "--output", str(tmp_path / "evaluation"), *[a for pair in split.items() for a in pair], "--split", "validation",
            "--sanity", "false", "--baselines", "['random', 'segmentation']", "--slices_per_case", "1", "--bootstrap", "20",
            "--device", "cpu"]
    assert main(args) == 1
    result = json.loads((tmp_path / "evaluation" / "evaluation.json").read_text())
    [failed] = result["failed_cases"]
    assert failed["case"] == cases[0]["case"] and str(broken) in failed["error"]
    assert set(result["cases"]) == {cases[1]["case"]}  # the figures are the other case's alone
    assert "failed their checks" in (tmp_path / "evaluation" / "report" / "report.html").read_text()


def test_records_an_interrupted_torchrun_run_left_are_counted_and_folded_into_the_manifest(tmp_path: Path) -> None:
    from pipeline.batch import finished_cases, merge_shards
    from pipeline.handlers import ImportanceExporter

    run = {"started": "2026-12-01T10:00:00+00:00", "checkpoints": {"noise": {"sha256": "ab"}}, "config": {"window": "pancreas"}}
    older = {**run, "started": "2026-12-01T09:00:00+00:00", "config": {"window": "liver"}}
    out = tmp_path / "maps"
    out.mkdir()
    for name in ("a_case", "b_case"):
        for suffix in ("_importance.nii.gz", "_seg.nii.gz"):
            (out / f"{name}{suffix}").write_bytes(b"x")
    outputs = lambda name: [f"{name}_importance.nii.gz", f"{name}_seg.nii.gz"]  # noqa: E731
    record = lambda name, index: {"case": name, "input": name, "outputs": outputs(name), "status": "done",  # noqa: E731
                                  "error": None, "seconds": 1.0, "run": index}
    # manifest.json: both cases from an older run with other settings; rank 1's part: b_case redone by the newer run
    (out / "manifest.json").write_text(json.dumps({"run": older, "runs": [older], "cases": [record("a_case", 0), record("b_case", 0)]}))
    (out / "manifest.rank1.json").write_text(json.dumps({"run": run, "runs": [run], "cases": [record("b_case", 0)]}))
    datalist = [{"case": "a_case", "image": "a"}, {"case": "b_case", "image": "b"}]
    assert finished_cases(out, datalist, run, ["_importance.nii.gz", "_seg.nii.gz"]) == ["b_case"]  # the newest record wins

    exporter = ImportanceExporter(out, provenance={**run, "started": "2026-12-01T11:00:00+00:00"})
    exporter.record("a_case", "a", "failed", "unreadable", 0.5)
    merge_shards(exporter, datalist)  # a single process: the part's records are in the manifest now, the part goes
    manifest = json.loads((out / "manifest.json").read_text())
    assert not list(out.glob("manifest.rank*.json"))
    kept = {case["case"]: (case["status"], manifest["runs"][case["run"]]["started"]) for case in manifest["cases"]}
    assert kept == {"a_case": ("failed", "2026-12-01T11:00:00+00:00"), "b_case": ("done", "2026-12-01T10:00:00+00:00")}


def test_a_later_refused_case_does_not_roll_back_dicom_outputs_written_before(tiny_pair: dict[str, Path], tmp_path: Path) -> None:

    from pipeline.dicom.ct_series import write_dicom_series

    inbox = tmp_path / "inbox"
    source = np.random.default_rng(3).integers(-1000, 400, size=(32, 32, 10)).astype(np.int16)
    affine = np.diag([1.0, 1.0, 2.5, 1.0])
    write_dicom_series(inbox / "a_good", source, affine, series_uid="1.2.3.9.1")
    gap = write_dicom_series(inbox / "b_gap", source, affine, series_uid="1.2.3.9.2")
    sorted(gap.glob("*.dcm"))[4].unlink()  # resampled on request: no DICOM output can be made of it
    code = _explain(tiny_pair, inbox, tmp_path / "maps", "--output-format", "dicom", "--resample_uneven", "true",
                    "--on_error", "stop")
    assert code == 2
    assert sorted(p.name for p in (tmp_path / "maps").iterdir() if not p.name.startswith(".")) == [
        "a_good_importance.dcm", "a_good_seg.dcm", "manifest.json"]  # the first case stays written
