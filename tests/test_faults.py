"""Fault injection: bad files, wrong checkpoints, locked and half-written run folders, kill -9 drills.

Each case is pinned by its message. The full table against every command, in fresh processes, is
``scripts/hostile_inputs.py``; these are the properties behind it.
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import make_volume, write_dicom_series, write_nifti

from pipeline.networks.checkpoints import CheckpointError, check_kind, check_resume, load_checkpoint, load_network_from_checkpoint, reconcile_best
from pipeline.data import (
    DatasetSummary,
    LoadVolumed,
    check_batch_count,
    check_training_split,
    load_datalist,
    load_volume,
    validate_datalist,
)
from pipeline.data.validate import CaseSummary
from pipeline.rundir import prepare_output_dir, prepare_run_dir
from pipeline.errors import ConfigError, DataError
from pipeline.rundir import acquire_lock, release_lock

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- files


def _huge_header(path: Path) -> Path:
    header = nib.Nifti1Header()
    header.set_data_shape((2048, 2048, 1500))
    header.set_data_dtype(np.int16)
    header["vox_offset"] = 352
    with gzip.open(path, "wb") as stream:
        stream.write(header.binaryblock + b"\0" * 4 + np.zeros(30, np.int16).tobytes())
    return path


def test_a_header_claiming_billions_of_voxels_is_refused_before_any_allocation(tmp_path: Path) -> None:
    path = _huge_header(tmp_path / "huge.nii.gz")
    assert path.stat().st_size < 1000
    tracemalloc.start()
    with pytest.raises(DataError, match=r"huge.nii.gz: the header claims \(2048, 2048, 1500\) = 6,291,456,000 voxels, over the limit"):
        load_volume(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 20 * 2**20  # bytes allocated while refusing: far below the 12.6 GB the header claims


def test_a_header_that_does_not_fit_its_file_is_truncation(tmp_path: Path, affine: np.ndarray) -> None:
    image, _ = make_volume(0)
    plain = write_nifti(tmp_path / "plain.nii", image, affine)
    plain.write_bytes(plain.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"plain.nii: the file is truncated or its header is corrupt: .* needs 9,952 bytes, the file has 9,852"):
        load_volume(plain)
    packed = write_nifti(tmp_path / "packed.nii.gz", image, affine)
    packed.write_bytes(packed.read_bytes()[: packed.stat().st_size // 2])
    with pytest.raises(DataError, match=r"packed.nii.gz: (the file is truncated|not a readable NIfTI header)"):
        load_volume(packed)


def test_a_tiny_gzip_cannot_hold_a_header_that_wraps_around_4_gib(tmp_path: Path) -> None:
    header = nib.Nifti1Header()
    header.set_data_shape((1024, 1024, 1024))  # 2**32 bytes of int32: the trailer's size modulo 2**32 would match
    header.set_data_dtype(np.int32)
    header["vox_offset"] = 352
    path = tmp_path / "wrap.nii.gz"
    with gzip.open(path, "wb") as stream:
        stream.write(header.binaryblock + b"\0" * 4)
    with pytest.raises(DataError, match=r"wrap.nii.gz: the file is truncated or its header is corrupt: .* a gzip file of \d+ bytes holds at most"):
        load_volume(path)


def test_valid_gzip_variants_and_a_trailing_singleton_load(tmp_path: Path, affine: np.ndarray) -> None:
    image, _ = make_volume(0)
    raw = gzip.decompress(write_nifti(tmp_path / "one.nii.gz", image, affine).read_bytes())
    (tmp_path / "members.nii.gz").write_bytes(gzip.compress(raw[:400]) + gzip.compress(raw[400:]))  # as bgzip writes
    (tmp_path / "padded.nii.gz").write_bytes(gzip.compress(raw) + b"\0" * 32)
    for name in ("members.nii.gz", "padded.nii.gz"):
        assert np.array_equal(np.asarray(load_volume(tmp_path / name)), image)
    single = load_volume(write_nifti(tmp_path / "single.nii.gz", image[..., None], affine))
    assert tuple(single.shape) == image.shape


def test_a_split_of_a_dataset_whose_images_are_links_reads_back(tmp_path: Path, msd_dir: Path) -> None:
    from pipeline.data import split_datalist, write_datalist

    storage = tmp_path / "storage"
    (msd_dir / "imagesTr").rename(storage)
    (msd_dir / "imagesTr").symlink_to(storage)  # imagesTr on shared storage
    datalist = load_datalist(msd_dir)
    path = write_datalist(split_datalist(datalist, 0.4, 0.0, 0), msd_dir / "split.json")
    assert [e["image"] for e in load_datalist(path, "training")] == [e["image"] for e in split_datalist(datalist, 0.4, 0.0, 0)["training"]]


@pytest.mark.parametrize("content, message", [
    (b"", "the file is empty"),
    (b"\x1f\x8b" + os.urandom(200), "not a readable NIfTI header"),
    (os.urandom(500), "not a readable NIfTI header"),
])
def test_an_unreadable_nifti_is_one_error(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.nii.gz"
    path.write_bytes(content)
    with pytest.raises(DataError, match=f"bad.nii.gz: {message}"):
        load_volume(path)


def test_a_2d_image_is_not_a_volume(tmp_path: Path, affine: np.ndarray) -> None:
    image, _ = make_volume(0)
    with pytest.raises(DataError, match=r"flat.nii.gz: expected one 3D volume, the header says 2D .*export the whole 3D series"):
        load_volume(write_nifti(tmp_path / "flat.nii.gz", image[:, :, 0], affine))


def test_a_symlink_loop_is_named(tmp_path: Path) -> None:
    (tmp_path / "a.nii.gz").symlink_to("b.nii.gz")
    (tmp_path / "b.nii.gz").symlink_to("a.nii.gz")
    with pytest.raises(DataError, match=r"a.nii.gz: is a symlink loop"):
        load_volume(tmp_path / "a.nii.gz")


def test_a_dicom_folder_with_two_series_is_refused_with_both_listed_and_one_can_be_chosen(tmp_path: Path) -> None:
    folder = tmp_path / "study"
    image, _ = make_volume(0)
    write_dicom_series(folder, image[:, :, :8], np.diag([1.0, 1.0, 4.4, 1.0]), series_uid="1.2.3.1", prefix="a")
    from pipeline.dicom.ct_series import write_dicom_series as write_more

    write_more(folder, image[:, :, :6], np.diag([1.0, 1.0, 3.8, 1.0]), series_uid="1.2.3.2", prefix="b")
    with pytest.raises(DataError, match=r"study: holds 2 DICOM series, which would be merged.*1.2.3.1 \(8 files, 4.400 mm\); "
                                         r"1.2.3.2 \(6 files, 3.800 mm\); pick one with --series UID"):
        load_volume(folder)
    chosen = load_volume(folder, series="1.2.3.2")
    assert chosen.shape[2] == 6
    assert np.linalg.norm(np.asarray(chosen.affine)[:3, 2]) == pytest.approx(3.8, abs=1e-3)
    loaded = LoadVolumed("image")({"image": str(folder), "series": "1.2.3.1"})["image"]
    assert tuple(loaded.shape) == (1, 20, 24, 8)
    with pytest.raises(DataError, match=r"study: holds no series 9.9; it holds 1.2.3.1"):
        load_volume(folder, series="9.9")


def test_intensities_that_are_not_hu_warn_with_the_case_and_strict_refuses(tmp_path: Path, affine: np.ndarray,
                                                                              caplog: pytest.LogCaptureFixture) -> None:
    image, label = make_volume(0)
    unit = ((image - image.min()) / np.ptp(image)).astype(np.float32)
    entry = {"image": str(write_nifti(tmp_path / "mr.nii.gz", unit, affine)), "case": "mr"}
    summary = validate_datalist([entry], progress=False)
    assert "mr.nii.gz: intensity range 0..1 does not look like CT in HU" in summary.warnings[0]
    assert "does not look like CT" in caplog.text
    with pytest.raises(DataError, match=r"mr.nii.gz: intensity range 0..1 does not look like CT .* refused under --strict"):
        validate_datalist([entry], progress=False, strict=True)
    ct = {"image": str(write_nifti(tmp_path / "ct.nii.gz", image, affine)), "case": "ct"}
    assert validate_datalist([ct], progress=False, strict=True).warnings == []


def test_datalist_paths_stay_inside_the_dataset_folder(msd_dir: Path) -> None:
    content = json.loads((msd_dir / "dataset.json").read_text())
    content["training"][0]["label"] = "../../../etc/passwd"
    (msd_dir / "dataset.json").write_text(json.dumps(content))
    with pytest.raises(DataError, match=r"dataset.json: entry ../../../etc/passwd lies outside the dataset folder"):
        load_datalist(msd_dir)
    entries = load_datalist(msd_dir, allow_outside_paths=True)
    assert entries[0]["label"].endswith("etc/passwd")


def test_a_nifti_file_is_a_dataset_of_one_case(msd_dir: Path) -> None:
    (entry,) = load_datalist(msd_dir / "imagesTr" / "pancreas_000.nii.gz")
    assert entry["case"] == "pancreas_000" and "label" not in entry


# ---------------------------------------------------------------- splits a run would learn nothing from


def _summary(pancreas: dict[str, int]) -> DatasetSummary:
    cases = [CaseSummary(name, (4, 4, 4), (1.0, 1.0, 1.0), "RAS", (-1000.0, 100.0), {0: 1}, slices)
             for name, slices in pancreas.items()]
    return DatasetSummary(cases, (1, 2))


def test_a_validation_split_without_pancreas_is_refused() -> None:
    split = {"training": [{"case": "a"}], "validation": [{"case": "b"}, {"case": "c"}], "test": []}
    with pytest.raises(DataError, match=r"data: the validation split \(2 cases: b, c\) holds no pancreas voxel .*dice would be 1.0"):
        check_training_split(_summary({"a": 3, "b": 0, "c": 0}), split, "data")
    with pytest.raises(DataError, match=r"data: the training split \(1 cases: a\) holds no pancreas voxel"):
        check_training_split(_summary({"a": 0, "b": 2, "c": 0}), split, "data")
    with pytest.raises(DataError, match=r"data: the validation split is empty"):
        check_training_split(_summary({"a": 1}), {"training": [{"case": "a"}], "validation": []}, "data")
    check_training_split(_summary({"a": 1, "b": 1, "c": 0}), split, "data")


def test_a_training_set_smaller_than_one_batch_is_refused() -> None:
    with pytest.raises(DataError, match=r"data: the training split gives 3 slice\(s\), fewer than one batch of 8.*--batch-size 3"):
        check_batch_count(3, 8, "data")
    check_batch_count(8, 8, "data")


# ---------------------------------------------------------------- checkpoints


def test_checkpoint_kinds_are_refused_with_both_roles_named(tmp_path: Path) -> None:
    from pipeline.networks import build_unet

    network = build_unet("small")
    torch.save({"model": network.state_dict(), "meta": {"preset": "small", "perturbation": "replace", "utility_preset": "small"}},
               tmp_path / "noise.pt")
    with pytest.raises(CheckpointError, match=r"noise.pt: --utility takes a utility checkpoint \(the segmentation model, written by "
                                              r"train-utility\) but this is a noise checkpoint \(the U-Noise model"):
        load_network_from_checkpoint(tmp_path / "noise.pt", kind="utility", role="--utility")
    with pytest.raises(CheckpointError, match=r"u.pt: --noise takes a noise checkpoint .* but this is a utility checkpoint"):
        check_kind({"kind": "utility", "preset": "small"}, "u.pt", "noise", "--noise")
    load_network_from_checkpoint(tmp_path / "noise.pt", kind="noise")


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_hostile_pickle_never_runs_and_the_protection_is_never_offered_off(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    with open(path, "wb") as stream:
        pickle.dump({"model": _Payload(tmp_path / "PWNED")}, stream)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert "evil.pt: cannot be loaded (it holds Python objects beyond tensors" in message
    assert "weights_only=False" not in message and "\n" not in message
    assert not (tmp_path / "PWNED").exists()


def test_a_resume_with_another_network_names_the_difference() -> None:
    with pytest.raises(CheckpointError, match=r"last.pt: --resume would continue a different network \(preset 'small' in the run, "
                                              r"'medium' asked for\)"):
        check_resume({"kind": "utility", "preset": "small", "in_channels": 1}, {"kind": "utility", "preset": "medium", "in_channels": 1}, "last.pt")
    with pytest.raises(CheckpointError, match=r"kind 'noise' in the run, 'utility' asked for"):
        check_resume({"preset": "small", "utility_preset": "small"}, {"kind": "utility", "preset": "small"}, "last.pt")
    check_resume({"kind": "utility", "preset": "small"}, {"kind": "utility", "preset": "small", "window": "abdomen"}, "last.pt")


def test_best_is_rebuilt_from_last_after_a_crash_between_the_two_writes(tmp_path: Path) -> None:
    weights = {"w": torch.arange(3.0)}
    torch.save({"model": {"w": torch.zeros(3)}, "meta": {"epoch": 1}}, tmp_path / "best.pt")
    torch.save({"model": weights, "meta": {"epoch": 2, "best_epoch": 2, "best_metric": 0.9}}, tmp_path / "last.pt")
    assert reconcile_best(tmp_path)
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["meta"]["epoch"] == 2 and torch.equal(best["model"]["w"], weights["w"])
    assert not reconcile_best(tmp_path)  # consistent now: nothing to do


# ---------------------------------------------------------------- run folders


def test_a_resume_on_other_data_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"model": {}, "meta": {"kind": "utility", "preset": "small"}}, run / "checkpoints" / "last.pt")
    (run / "config.json").write_text(json.dumps({"config": "train_utility", "window": "pancreas", "seed": 0, "dataset_dir": "data/a"}))
    with pytest.raises(ConfigError, match=r"config.json: --resume would continue on other data \(window 'pancreas' in the run, "
                                          r"'abdomen' asked for; seed 0 in the run, 1 asked for\)"):
        prepare_run_dir(run, True, {"config": "train_utility", "window": "abdomen", "seed": 1, "dataset_dir": "data/a"})
    assert not (run / "config_resume.json").exists()
    (run / "metrics.json").write_text("{broken")
    with pytest.raises(ConfigError, match=r"metrics.json: cannot be read"):
        prepare_run_dir(run, True, {"config": "train_utility", "window": "pancreas", "seed": 0, "dataset_dir": "data/a"})


def test_nothing_is_created_when_a_check_fails(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match="does not exist; start a new run without --resume"):
        prepare_run_dir(run, True, {"config": "train_utility"})
    assert not run.exists()
    (tmp_path / "trained" / "checkpoints").mkdir(parents=True)
    (tmp_path / "trained" / "config.json").write_text(json.dumps({"config": "train_utility"}))
    before = sorted(p.name for p in (tmp_path / "trained").rglob("*"))
    with pytest.raises(ConfigError, match=r"trained: holds a train_utility run .*not a evaluate one"):
        prepare_run_dir(tmp_path / "trained", False, {"config": "evaluate"}, marker="evaluation.json", subfolders=())
    assert sorted(p.name for p in (tmp_path / "trained").rglob("*")) == before


def _hold_lock(folder: Path) -> subprocess.Popen:
    """Another process that takes ``folder``'s lock and keeps it until killed."""
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pipeline.rundir import acquire_lock; "
                               f"acquire_lock({str(folder)!r}); print('held', flush=True); time.sleep(120)"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_folder_in_use_is_refused_and_a_dead_owners_lock_is_taken_over(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run = tmp_path / "run"
    run.mkdir()
    holder = _hold_lock(run)
    try:
        with pytest.raises(ConfigError, match=r"run: in use by another run"):
            prepare_run_dir(run, False, {"config": "train_utility"})
        with pytest.raises(ConfigError, match=rf"run: in use by another run \(pid {holder.pid} on "):
            acquire_lock(run)
        assert sorted(p.name for p in run.iterdir()) == [".lock"]
    finally:
        holder.kill()  # kill -9: the lock file stays behind, its flock goes with the process
        holder.wait()
    assert json.loads((run / ".lock").read_text())["pid"] == holder.pid
    (run / "checkpoints").mkdir()
    leftovers = [run / "checkpoints" / ".tmp-0badc0de-last.pt", run / ".tmp-12345678-config.json"]
    kept = [run / "checkpoints" / ".tmp-notours.pt", run / "nested" / ".tmp-0badc0de-best.pt"]
    for path in leftovers + kept:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"partial")
    prepare_run_dir(run, False, {"config": "train_utility"})
    assert "taking over the stale lock of pid" in caplog.text
    assert json.loads((run / ".lock").read_text())["pid"] == os.getpid()
    assert not any(p.exists() for p in leftovers) and all(p.exists() for p in kept)  # ours, at the run's own levels only
    release_lock(run)
    assert not (run / ".lock").exists()


def test_an_empty_lock_file_of_a_live_owner_is_not_taken(tmp_path: Path) -> None:
    holder = _hold_lock(tmp_path)
    try:
        (tmp_path / ".lock").write_text("")  # as if the owner had not written its pid yet
        with pytest.raises(ConfigError, match="in use by another run"):
            acquire_lock(tmp_path)
    finally:
        holder.kill()
        holder.wait()


def test_explain_output_folder_is_locked_and_cleaned(tmp_path: Path) -> None:
    out = tmp_path / "maps"
    out.mkdir()
    (out / ".tmp-12345678-a_importance.nii.gz").write_bytes(b"partial")
    prepare_output_dir(out, [{"case": "a"}], ["_importance.nii.gz"])
    assert (out / ".lock").exists() and not list(out.glob(".tmp-*"))
    release_lock(out)
    assert not (out / ".lock").exists()


def test_a_refused_run_is_rolled_back_but_never_another_runs_folder(tmp_path: Path) -> None:
    from pipeline.rundir import forget_created, record_created, roll_back

    fresh, trained, shared = tmp_path / "fresh", tmp_path / "trained", tmp_path / "shared"
    prepare_run_dir(fresh, False, {"config": "train_utility"})
    (trained / "checkpoints").mkdir(parents=True)
    prepare_run_dir(trained, False, {"config": "train_utility"}, marker="checkpoints/none.pt")
    (trained / "checkpoints" / "best.pt").write_bytes(b"weights")
    (shared / "other_run").mkdir(parents=True)
    (shared / "other_run" / ".lock").write_text("{}")
    record_created(shared, True, [])
    removed = roll_back()
    assert fresh in removed and not fresh.exists()  # created by the refused run, nothing of value: gone
    assert (trained / "checkpoints" / "best.pt").exists() and (trained / "config.json").exists()  # results: untouched
    assert (shared / "other_run" / ".lock").exists()  # another run inside: untouched
    forget_created()
    from pipeline.rundir import release_all

    release_all()


# ---------------------------------------------------------------- kill -9 drills (fresh processes)

TINY = ["--preset", "small", "--spatial_size", "32", "--batch_size", "4", "--device", "cpu", "--val_fraction", "0.34",
        "--test_fraction", "0.0", "--other_fraction", "0.5"]


def _unoise(*args: str, fault: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("UNOISE_FAULT_KILL", None)
    if fault:
        env["UNOISE_FAULT_KILL"] = fault
    return subprocess.Popen([sys.executable, "-m", "pipeline", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace")


def _epochs(run: Path) -> list[int]:
    return [record["epoch"] for record in json.loads((run / "metrics.json").read_text())["epochs"]]


@pytest.fixture(scope="module")
def drill_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pipeline.phantom import write_phantom_dataset

    data = tmp_path_factory.mktemp("drill") / "phantom"
    write_phantom_dataset(data, cases=4, size=32, slices=10, seed=2, test_cases=1)
    return data


@pytest.mark.slow
@pytest.mark.parametrize("fault, kept", [("best.pt:1", 1), ("last.pt:2", 1)])
def test_kill_at_a_checkpoint_write_then_resume(drill_data: Path, tmp_path: Path, fault: str, kept: int) -> None:
    run = tmp_path / "run"
    killed = _unoise("train-utility", "--dataset", str(drill_data), "--output", str(run), *TINY, "--epochs", "3", fault=fault)
    killed.communicate(timeout=300)
    assert killed.returncode == -signal.SIGKILL
    assert list(run.rglob(".tmp-*")) and (run / ".lock").exists()  # what a power cut leaves
    assert load_checkpoint(run / "checkpoints" / "last.pt")["meta"]["epoch"] == kept  # lost at most the epoch being written
    assert (run / "checkpoints" / "best.pt").exists() == (fault != "best.pt:1")
    resumed = _unoise("train-utility", "--dataset", str(drill_data), "--output", str(run), *TINY, "--epochs", "3", "--resume")
    out, err = resumed.communicate(timeout=300)
    assert ("best.pt rebuilt from last.pt" in out + err) == (fault == "best.pt:1")  # logs: stderr
    assert resumed.returncode == 0, err[-2000:]
    assert _epochs(run) == [1, 2, 3]
    assert not list(run.rglob(".tmp-*")) and not (run / ".lock").exists()
    last, best = (load_checkpoint(run / "checkpoints" / name)["meta"] for name in ("last.pt", "best.pt"))
    assert last["epoch"] == 3 and best["epoch"] == last["best_epoch"]


@pytest.mark.slow
def test_kill_mid_epoch_then_resume(drill_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    process = _unoise("train-utility", "--dataset", str(drill_data), "--output", str(run), *TINY, "--epochs", "4")
    deadline = time.time() + 300
    while not (run / "checkpoints" / "last.pt").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)  # inside the next epoch
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    done = load_checkpoint(run / "checkpoints" / "last.pt")["meta"]["epoch"]
    resumed = _unoise("train-utility", "--dataset", str(drill_data), "--output", str(run), *TINY, "--epochs", "4", "--resume")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-2000:]
    assert done >= 1 and _epochs(run) == [1, 2, 3, 4]
    assert not list(run.rglob(".tmp-*"))


@pytest.fixture(scope="module")
def drill_pair(drill_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 1-epoch utility and noise model on the drill data, trained as a user would (once for the module)."""
    root = tmp_path_factory.mktemp("drill_pair")
    utility, noise = root / "utility", root / "noise"
    for args in (["train-utility", "--dataset", str(drill_data), "--output", str(utility), *TINY, "--epochs", "1"],
                 ["train-noise", "--dataset", str(drill_data), "--utility", str(utility / "checkpoints" / "best.pt"), "--output",
                  str(noise), "--noise_preset", "small", "--batch_size", "4", "--device", "cpu", "--val_fraction", "0.34",
                  "--test_fraction", "0.0", "--other_fraction", "0.5", "--epochs", "1"]):
        process = _unoise(*args)
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-2000:]
    return utility, noise


@pytest.mark.slow
def test_kill_explain_then_rerun(drill_data: Path, drill_pair: tuple[Path, Path], tmp_path: Path) -> None:
    utility, noise = drill_pair
    explain = ["explain", "--input", str(drill_data / "imagesTs"), "--output", str(tmp_path / "maps"), "--noise",
               str(noise / "checkpoints" / "best.pt"), "--utility", str(utility / "checkpoints" / "best.pt"), "--device", "cpu"]
    killed = _unoise(*explain, fault="pancreas_004_importance.nii.gz")
    killed.communicate(timeout=300)
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "maps" / "pancreas_004_importance.nii.gz").exists()  # never half-written under its name
    assert list((tmp_path / "maps").glob(".tmp-*"))
    again = _unoise(*explain)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-2000:]
    assert nib.load(str(tmp_path / "maps" / "pancreas_004_importance.nii.gz")).shape == (32, 32, 10)
    assert not list((tmp_path / "maps").glob(".tmp-*")) and not (tmp_path / "maps" / ".lock").exists()


def _cases(folder: Path) -> dict[str, tuple]:
    """Per case of ``manifest.json``: done (a case the re-run found done earlier with the same models and settings
    is recorded as skipped, with that reason) or failed, its outputs, and whether it failed with a reason."""
    cases = json.loads((folder / "manifest.json").read_text())["cases"]
    return {c["case"]: ("done" if c["status"] == "skipped" else c["status"], sorted(c["outputs"]), c["status"] == "failed"
                        and bool(c["error"])) for c in cases}


@pytest.mark.slow
def test_explain_with_a_corrupt_case_killed_mid_case_then_rerun_ends_as_an_uninterrupted_run(
        drill_data: Path, drill_pair: tuple[Path, Path], tmp_path: Path) -> None:
    utility, noise = drill_pair
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    shutil.copy(drill_data / "imagesTs" / "pancreas_004.nii.gz", inputs / "a_case.nii.gz")
    (inputs / "b_broken.nii.gz").write_bytes(b"not a NIfTI at all")
    shutil.copy(drill_data / "imagesTr" / "pancreas_000.nii.gz", inputs / "c_case.nii.gz")

    def explain(out: Path) -> list[str]:
        return ["explain", "--input", str(inputs), "--output", str(out), "--noise", str(noise / "checkpoints" / "best.pt"),
                "--utility", str(utility / "checkpoints" / "best.pt"), "--device", "cpu"]

    killed = _unoise(*explain(tmp_path / "maps"), fault="c_case_importance.nii.gz")  # killed inside the last case
    killed.communicate(timeout=300)
    assert killed.returncode == -signal.SIGKILL
    again = _unoise(*explain(tmp_path / "maps"))
    _, err = again.communicate(timeout=300)
    assert again.returncode == 1, err[-2000:]  # the corrupt case fails again, the others are done
    whole = _unoise(*explain(tmp_path / "whole"))
    _, err = whole.communicate(timeout=300)
    assert whole.returncode == 1, err[-2000:]
    resumed, uninterrupted = (sorted(p.name for p in (tmp_path / name).iterdir()) for name in ("maps", "whole"))
    assert resumed == uninterrupted and not any(name.startswith((".tmp-", ".lock")) for name in resumed)
    assert _cases(tmp_path / "maps") == _cases(tmp_path / "whole")
    assert _cases(tmp_path / "whole")["b_broken"][0] == "failed" and _cases(tmp_path / "whole")["c_case"][0] == "done"

