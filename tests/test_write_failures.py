"""A write that fails (disk full, quota, no permission, read-only) is one line naming the file, the cause and how to
go on; the file it would have replaced stays whole and no temporary file is left."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.errors import WriteError
from pipeline.fileio import atomic_path, save_nifti, write_json_atomic
from pipeline.networks.checkpoints import load_checkpoint, save_atomic
from pipeline.outputs.maps import write_case_outputs

TINY = ["--preset", "small", "--spatial_size", "32", "--batch_size", "4", "--device", "cpu", "--val_fraction", "0.34",
        "--test_fraction", "0.0", "--train_slices", "all", "--val_slices", "all"]


def _fail_replace(number: int):
    def replace(src, dst):  # the write itself succeeded; the disk refuses at the last step, as a full disk can
        raise OSError(number, os.strerror(number), str(dst))
    return replace


@pytest.mark.parametrize("number, cause", [(errno.ENOSPC, "no space left on the device"), (errno.EDQUOT, "disk quota exceeded"),
                                           (errno.EACCES, "permission denied"), (errno.EROFS, "the file system is read-only")])
def test_a_failed_write_names_the_file_and_the_cause_and_keeps_the_old_file(tmp_path: Path, monkeypatch, number: int,
                                                                           cause: str) -> None:
    path = write_json_atomic({"epoch": 1}, tmp_path / "metrics.json")
    monkeypatch.setattr(os, "replace", _fail_replace(number))
    with pytest.raises(WriteError) as caught:
        write_json_atomic({"epoch": 2}, path)
    message = str(caught.value)
    assert message.startswith(f"{path}: could not be written: {cause};") and "\n" not in message
    assert json.loads(path.read_text()) == {"epoch": 1}  # the previous file, whole
    assert not list(tmp_path.glob(".tmp-*"))


def test_torch_saves_disk_full_error_is_a_write_error_and_other_errors_are_not(tmp_path: Path) -> None:
    path = save_atomic({"model": {"w": torch.ones(2)}}, tmp_path / "last.pt")
    with pytest.raises(WriteError, match=r"last.pt: could not be written: .*--resume"):
        with atomic_path(path):  # what torch.save's C++ writer raises when the disk fills mid-write
            raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file "
                               "data/0: file write failed")
    with pytest.raises(RuntimeError, match="a bug"):  # anything else keeps its own type and traceback
        with atomic_path(path):
            raise RuntimeError("a bug")
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(2))
    assert not list(tmp_path.glob(".tmp-*"))


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs a user that folder permissions apply to")
def test_a_read_only_folder_is_a_write_error(tmp_path: Path) -> None:
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(WriteError, match="permission denied"):
            save_nifti(np.zeros((2, 2, 2), np.float32), np.eye(4), folder / "a.nii.gz")
    finally:
        folder.chmod(0o700)


def test_a_case_whose_second_map_fails_leaves_none_of_its_maps(tmp_path: Path, monkeypatch) -> None:
    maps = {"importance": np.zeros((4, 4, 2), np.float32), "seg": np.zeros((4, 4, 2), np.uint8)}
    calls = {"n": 0}
    real = os.replace

    def second_fails(src, dst):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        real(src, dst)

    monkeypatch.setattr(os, "replace", second_fails)
    with pytest.raises(WriteError, match="case_seg.nii.gz: could not be written: no space left"):
        write_case_outputs(tmp_path, "case", maps, np.eye(4), "case.nii.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # the importance map written first went too


def _unoise(*args: str, full: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNOISE_FAULT")}
    if full:
        env["UNOISE_FAULT_FULL"] = full
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, encoding="utf-8",
                          errors="replace", env=env, timeout=600)


@pytest.mark.slow
def test_training_on_a_disk_that_fills_ends_in_one_line_and_resumes(tiny_pair: dict[str, Path], tmp_path: Path) -> None:
    run = tmp_path / "run"
    train = ["train-utility", "--dataset", str(tiny_pair["data"]), "--output", str(run), *TINY, "--epochs", "2"]
    full = _unoise(*train, full="last.pt:2")  # the second epoch's last.pt finds the disk full
    assert full.returncode == 2, full.stderr[-2000:]
    last_line = full.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"error: {run / 'checkpoints' / 'last.pt'}: could not be written: no space left on the device;")
    assert "--resume" in last_line and "Traceback" not in full.stderr
    assert load_checkpoint(run / "checkpoints" / "last.pt")["meta"]["epoch"] == 1  # the first epoch's, whole
    assert not list(run.rglob(".tmp-*")) and not (run / ".lock").exists()
    resumed = _unoise(*train, "--resume")  # space freed
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert load_checkpoint(run / "checkpoints" / "last.pt")["meta"]["epoch"] == 2


@pytest.mark.slow
def test_explain_on_a_disk_that_fills_stops_in_one_line_and_leaves_no_half_case(tiny_pair: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "maps"
    images = sorted((tiny_pair["data"] / "imagesTs").glob("*.nii.gz"))
    first = images[0].name.removesuffix(".nii.gz")
    result = _unoise("explain", "--input", str(tiny_pair["data"] / "imagesTs"), "--output", str(out), "--noise",
                     str(tiny_pair["noise"]), "--utility", str(tiny_pair["utility"]), "--device", "cpu", "--spatial_size", "32",
                     full=f"{first}_seg.nii.gz")  # the first case's second map finds the disk full
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {out / (first + '_seg.nii.gz')}: could not be written")
    assert "Traceback" not in result.stderr
    assert not list(out.glob(f"{first}_*.nii.gz")) and not list(out.glob(".tmp-*"))  # none of the case, no temporary
