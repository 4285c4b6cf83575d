"""Hostile inputs: every bad input we know of, run against every command that reads it, as a user would.

Each case builds its own damaged copy of a tiny phantom set (or a damaged checkpoint, a locked folder...)
in ``--work`` and runs ``python -m pipeline ...`` in a fresh process. The outcome is classified:

- ``refused``: exit status 2 and exactly one line ``error: ...`` on stderr, the last one, naming the
  file (or the setting) that is wrong; no traceback;
- ``warned``: exit 0 with a warning naming the case (non-CT intensities without ``--strict``);
- ``accepted``: exit 0 (right for the positive controls: a chosen DICOM series, a stale lock...);
- ``isolated``: exit 1, the bad case reported naming its file and the others finished (``inspect`` and
  ``evaluate`` over a dataset, whose default ``--on_error auto`` skips a bad case of a batch; the refusal
  rows run them with ``--on_error stop``);
- ``traceback``: anything else.

It also checks that a refused run left its ``--output`` exactly as it found it (absent, or the same
files with the same sizes and times), and records each process's peak memory (``wait4``).

Usage::

    python scripts/hostile_inputs.py --work /tmp/hostile --output hostile_inputs.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.phantom import write_phantom_dataset  # noqa: E402
from pipeline.dicom.ct_series import write_dicom_series  # noqa: E402

SPLIT = ["--val_fraction", "0.34", "--test_fraction", "0.34"]
TRAIN = ["--preset", "small", "--spatial_size", "32", "--batch_size", "4", "--epochs", "1", "--device", "cpu",
         "--other_fraction", "0.5", *SPLIT]
NOISE = ["--noise_preset", "small", "--batch_size", "4", "--epochs", "1", "--device", "cpu", "--other_fraction", "0.5", *SPLIT]
EVALUATE = ["--device", "cpu", *SPLIT, "--slices_per_case", "1", "--sanity", "false", "--baselines", "['random']",
            "--bootstrap", "50"]
TARGET = "pancreas_004"  # a case of the test split under SPLIT and seed 0: every command reads it


@dataclass
class Case:
    """One hostile input against one command."""

    name: str
    command: str
    argv: Callable[[Path], list[str]]  # work folder -> arguments after `python -m pipeline`
    names: str  # what the error line must name (a file name or a setting)
    expect: str = "refused"  # refused | warned | accepted | isolated
    output: Callable[[Path], Path] | None = None  # the --output to check for half-writes
    after: Callable[[Path], str | None] | None = None  # extra check; returns a problem or None
    setup: Callable[[Path], None] | None = None
    outcome: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- data faults


def _nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, str(path))


def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(str(path))
    return np.asarray(image.dataobj), image.affine


def _image(d: Path) -> Path:
    return d / "imagesTr" / f"{TARGET}.nii.gz"


def _label(d: Path) -> Path:
    return d / "labelsTr" / f"{TARGET}.nii.gz"


def _edit_datalist(d: Path, edit: Callable[[dict], None]) -> None:
    content = json.loads((d / "dataset.json").read_text())
    edit(content)
    (d / "dataset.json").write_text(json.dumps(content))


def _huge_header(path: Path) -> None:
    """A 416-byte NIfTI whose header claims 2048 x 2048 x 1500 int16 voxels."""
    header = nib.Nifti1Header()
    header.set_data_shape((2048, 2048, 1500))
    header.set_data_dtype(np.int16)
    header["vox_offset"] = 352
    block = header.binaryblock + b"\0" * 4 + np.zeros(30, np.int16).tobytes()
    with gzip.open(path, "wb") as stream:
        stream.write(block)


def _wrap_header(path: Path) -> None:
    """A 63-byte NIfTI whose header claims 1024^3 int32 voxels: 2**32 bytes, a gzip trailer's 0 modulo 2**32."""
    header = nib.Nifti1Header()
    header.set_data_shape((1024, 1024, 1024))
    header.set_data_dtype(np.int32)
    header["vox_offset"] = 352
    with gzip.open(path, "wb") as stream:
        stream.write(header.binaryblock + b"\0" * 4)


def _as_float(d: Path, scale: Callable[[np.ndarray], np.ndarray]) -> None:
    array, affine = _load(_image(d))
    _nifti(_image(d), scale(array.astype(np.float32)), affine)


def _with_voxel(value: float) -> Callable[[Path], None]:
    def damage(d: Path) -> None:
        array, affine = _load(_image(d))
        array = array.astype(np.float32)
        array[3, 3, 3] = value
        _nifti(_image(d), array, affine)
    return damage


def _label_edit(edit: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]) -> Callable[[Path], None]:
    def damage(d: Path) -> None:
        array, affine = _load(_label(d))
        array, affine = edit(array, affine)
        _nifti(_label(d), array, affine)
    return damage


def _outside_dataset(d: Path) -> None:
    outside = d.parent / f"{d.name}_elsewhere.nii.gz"
    shutil.copy(_image(d), outside)
    _edit_datalist(d, lambda c: c["training"][4].update(image=f"../{outside.name}"))


def _absolute_outside(d: Path) -> None:
    outside = d.parent / f"{d.name}_abs.nii.gz"
    shutil.copy(_image(d), outside)
    _edit_datalist(d, lambda c: c["training"][4].update(image=str(outside)))


def _symlink_loop(d: Path) -> None:
    target = _image(d)
    target.unlink()
    (d / "imagesTr" / "loop_b.nii.gz").symlink_to(target.name)
    target.symlink_to("loop_b.nii.gz")


def _all_labels_empty(d: Path) -> None:
    for path in (d / "labelsTr").glob("*.nii.gz"):
        array, affine = _load(path)
        _nifti(path, np.zeros_like(array), affine)


def _empty_labels(*cases: str) -> Callable[[Path], None]:
    def damage(d: Path) -> None:
        for case in cases:
            path = d / "labelsTr" / f"{case}.nii.gz"
            array, affine = _load(path)
            _nifti(path, np.zeros_like(array), affine)
    return damage


def _rater_list(second: Callable[[Path], str]) -> Callable[[Path], None]:
    """The target case's label becomes a list of two raters' files: its own label and ``second(d)``'s."""
    def damage(d: Path) -> None:
        other = second(d)

        def edit(content: dict) -> None:
            for entry in content["training"]:
                if entry["image"].endswith(f"{TARGET}.nii.gz"):
                    entry["label"] = [entry["label"], other]
        _edit_datalist(d, edit)
    return damage


def _shifted_rater(d: Path) -> str:
    array, affine = _load(_label(d))
    _nifti(d / "labelsTr" / f"{TARGET}_rater1.nii.gz", array, affine @ np.diag([1.0, 1.0, 2.0, 1.0]))
    return f"./labelsTr/{TARGET}_rater1.nii.gz"


def _no_raters(d: Path) -> None:
    def edit(content: dict) -> None:
        content["training"][0]["label"] = []
    _edit_datalist(d, edit)


DATA_FAULTS: dict[str, tuple[Callable[[Path], None], str]] = {
    # name: (damage to a copy of the phantom set, what the error must name)
    "image missing": (lambda d: _image(d).unlink(), f"{TARGET}.nii.gz"),
    "image zero bytes": (lambda d: _image(d).write_bytes(b""), f"{TARGET}.nii.gz"),
    "image truncated": (lambda d: _image(d).write_bytes(_image(d).read_bytes()[: _image(d).stat().st_size // 2]), f"{TARGET}.nii.gz"),
    "image not gzip": (lambda d: _image(d).write_bytes(os.urandom(4000)), f"{TARGET}.nii.gz"),
    "image 2D": (lambda d: _nifti(_image(d), _load(_image(d))[0][:, :, 0], _load(_image(d))[1]), f"{TARGET}.nii.gz"),
    "image 4D": (lambda d: _nifti(_image(d), np.stack([_load(_image(d))[0]] * 2, -1), _load(_image(d))[1]), f"{TARGET}.nii.gz"),
    "image NaN voxels": (_with_voxel(float("nan")), f"{TARGET}.nii.gz"),
    "image inf voxels": (_with_voxel(float("inf")), f"{TARGET}.nii.gz"),
    "image header claims 6.3 G voxels": (lambda d: _huge_header(_image(d)), f"{TARGET}.nii.gz"),
    "image header wraps around 4 GiB": (lambda d: _wrap_header(_image(d)), f"{TARGET}.nii.gz"),
    "image symlink loop": (_symlink_loop, f"{TARGET}.nii.gz"),
    "image path outside the dataset (..)": (_outside_dataset, "dataset.json"),
    "image path absolute, outside": (_absolute_outside, "dataset.json"),
    "label missing": (lambda d: _label(d).unlink(), f"labelsTr/{TARGET}.nii.gz"),
    "label truncated": (lambda d: _label(d).write_bytes(_label(d).read_bytes()[: _label(d).stat().st_size // 2]), f"labelsTr/{TARGET}.nii.gz"),
    "label of another shape": (_label_edit(lambda a, f: (a[:-2], f)), f"labelsTr/{TARGET}.nii.gz"),
    "label of another affine": (_label_edit(lambda a, f: (a, f @ np.diag([1.0, 1.0, 2.0, 1.0]))), f"labelsTr/{TARGET}.nii.gz"),
    "label unknown values": (_label_edit(lambda a, f: (np.where(a > 0, 5, 0).astype(np.uint8), f)), f"labelsTr/{TARGET}.nii.gz"),
    "label non-integer values": (_label_edit(lambda a, f: (a.astype(np.float32) * 0.5, f)), f"labelsTr/{TARGET}.nii.gz"),
    "label NaN": (_label_edit(lambda a, f: (np.where(a > 0, np.nan, 0).astype(np.float32), f)), f"labelsTr/{TARGET}.nii.gz"),
    "label 4D": (_label_edit(lambda a, f: (np.stack([a, a], -1), f)), f"labelsTr/{TARGET}.nii.gz"),
    "second rater's label of another affine": (_rater_list(_shifted_rater), f"labelsTr/{TARGET}_rater1.nii.gz"),
    "second rater's label missing": (_rater_list(lambda d: f"./labelsTr/{TARGET}_rater9.nii.gz"), f"{TARGET}_rater9.nii.gz"),
    "empty list of raters' labels": (_no_raters, "dataset.json"),
    "dataset.json not JSON": (lambda d: (d / "dataset.json").write_text("{not json"), "dataset.json"),
    "dataset.json without training list": (lambda d: _edit_datalist(d, lambda c: c.pop("training")), "dataset.json"),
    "dataset.json entry not a dict": (lambda d: _edit_datalist(d, lambda c: c["training"].append("imagesTr/x.nii.gz")), "dataset.json"),
    "dataset.json empty training list": (lambda d: _edit_datalist(d, lambda c: c.update(training=[])), "dataset.json"),
}
TRAIN_FAULTS: dict[str, tuple[Callable[[Path], None], str, tuple[str, ...]]] = {
    # name: (damage, what the error must name, the commands it concerns)
    "every label empty": (_all_labels_empty, "holds no pancreas", ("train-utility", "train-noise", "evaluate")),
    "no pancreas in the validation split": (_empty_labels("pancreas_002", "pancreas_003"), "the validation split",
                                            ("train-utility", "train-noise")),  # the split under SPLIT, seed 0
    "no pancreas in the test split": (_empty_labels("pancreas_004", "pancreas_005"), "the test split", ("evaluate",)),
}
INTENSITY_FAULTS: dict[str, tuple[Callable[[Path], None], str]] = {
    "intensities 0..1 (not HU)": (lambda d: _as_float(d, lambda a: (a - a.min()) / (a.max() - a.min())), f"{TARGET}.nii.gz"),
    "intensities 0..4000 (MRI-like)": (lambda d: _as_float(d, lambda a: (a - a.min()) / (a.max() - a.min()) * 4000), f"{TARGET}.nii.gz"),
}


# ----------------------------------------------------------------------------- checkpoints


class _Payload:
    """A pickle that would create a file if it were ever unpickled."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _bad_checkpoints(work: Path) -> dict[str, Path]:
    import torch

    folder = work / "checkpoints"
    folder.mkdir(exist_ok=True)
    noise = work / "noise" / "checkpoints" / "best.pt"
    paths = {name: folder / f"{name}.pt" for name in ("truncated", "empty", "random", "hostile", "plain", "other_utility", "record")}
    paths["truncated"].write_bytes(noise.read_bytes()[: noise.stat().st_size // 2])
    paths["empty"].write_bytes(b"")
    paths["random"].write_bytes(os.urandom(5000))
    with open(paths["hostile"], "wb") as stream:
        pickle.dump({"model": _Payload(str(work / "PWNED"))}, stream)
    content = torch.load(noise, weights_only=True)
    torch.save(content["model"], paths["plain"])
    torch.save({"model": content["model"], "meta": {**content["meta"], "utility_preset": "medium"}}, paths["other_utility"])
    record = {"target": "os.system", "args": {"command": f"touch {work / 'PWNED'}"}}  # a record naming code, not a network
    torch.save({"model": content["model"], "meta": {**content["meta"], "network_config": record}}, paths["record"])
    return paths


# ----------------------------------------------------------------------------- the table


def _copy_phantom(work: Path, name: str) -> Path:
    target = work / "cases" / name.replace(" ", "_").replace("/", "_").replace("(", "").replace(")", "").replace(".", "")
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(work / "phantom", target, symlinks=True)
    return target


def _out(work: Path, name: str) -> Path:
    return work / "outputs" / name.replace(" ", "_").replace("/", "_")


HOLDERS: list[subprocess.Popen] = []  # the lock holders of the locked-folder cases, alive until the table ends


def build_cases(work: Path) -> list[Case]:
    """The whole table: data faults against every command, checkpoints, settings, run folders, DICOM."""
    utility = str(work / "utility" / "checkpoints" / "best.pt")
    noise = str(work / "noise" / "checkpoints" / "best.pt")
    cases: list[Case] = []

    def dataset_case(fault: str, damage: Callable[[Path], None], names: str, command: str, expect: str = "refused",
                     extra: tuple[str, ...] = ()) -> Case:
        key = f"{fault} [{command}{' ' + ' '.join(extra) if extra else ''}]"
        def data(w: Path, k: str = key) -> Path:
            return w / "cases" / k.replace(" ", "_").replace("/", "_").replace("(", "").replace(")", "").replace(".", "")

        def out(w: Path, k: str = key) -> Path:
            return _out(w, k)

        stop = ("--on_error", "stop") if expect == "refused" else ()  # refused: the batch stops at the bad case
        argv = {
            "inspect": lambda w: ["inspect", "--dataset", str(data(w)), *stop, *extra],
            "train-utility": lambda w: ["train-utility", "--dataset", str(data(w)), "--output", str(out(w)), *TRAIN, *extra],
            "train-noise": lambda w: ["train-noise", "--dataset", str(data(w)), "--utility", utility, "--output", str(out(w)), *NOISE, *extra],
            "evaluate": lambda w: ["evaluate", "--dataset", str(data(w)), "--utility", utility, "--noise", noise,
                                   "--output", str(out(w)), *EVALUATE, *stop, *extra],
        }[command]

        def setup(w: Path, k: str = key) -> None:
            damage(_copy_phantom(w, k))

        return Case(key, command, argv, names, expect, None if command == "inspect" else out, setup=setup)

    for fault, (damage, names) in DATA_FAULTS.items():
        for command in ("inspect", "train-utility", "evaluate"):
            cases.append(dataset_case(fault, damage, names, command))
    for fault in ("image truncated", "label of another affine", "image header claims 6.3 G voxels", "image path outside the dataset (..)"):
        damage, names = DATA_FAULTS[fault]
        cases.append(dataset_case(fault, damage, names, "train-noise"))
    for fault, (damage, names, commands) in TRAIN_FAULTS.items():
        for command in commands:
            cases.append(dataset_case(fault, damage, names, command))
    for fault, (damage, names) in INTENSITY_FAULTS.items():
        cases.append(dataset_case(fault, damage, names, "inspect", expect="warned"))
        cases.append(dataset_case(fault, damage, names, "inspect", extra=("--strict",)))
        cases.append(dataset_case(fault, damage, names, "evaluate", extra=("--strict",)))
    cases.append(dataset_case("image path outside the dataset (..)", _outside_dataset, "", "inspect", expect="accepted",
                              extra=("--allow-outside-paths",)))
    for fault in ("image truncated", "label of another affine", "image header claims 6.3 G voxels", "image NaN voxels"):
        damage, names = DATA_FAULTS[fault]  # the default for a batch: the bad case reported, the others summarised
        for command in ("inspect", "evaluate"):
            cases.append(dataset_case(f"{fault} (batch goes on)", damage, names, command, expect="isolated"))

    # inputs given to explain directly
    def explain_case(fault: str, make_input: Callable[[Path], Path], names: str, expect: str = "refused",
                     extra: tuple[str, ...] = (), after: Callable[[Path], str | None] | None = None,
                     noise_path: str | None = None, utility_path: str | None = None) -> Case:
        key = f"{fault} [explain{' ' + ' '.join(extra) if extra else ''}]"
        inputs = work / "inputs"
        return Case(key, "explain", lambda w: ["explain", "--input", str(make_input(inputs)), "--output", str(_out(w, key)),
                                               "--noise", noise_path or noise, "--utility", utility_path or utility,
                                               "--device", "cpu", *extra],
                    names, expect, lambda w, k=key: _out(w, k), after)

    test_image = work / "phantom" / "imagesTs" / "pancreas_006.nii.gz"
    source, affine = _load(test_image)

    def written(name: str, fn: Callable[[Path], None]) -> Callable[[Path], Path]:
        def make(folder: Path) -> Path:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / name
            if not path.exists() and not path.is_symlink():
                fn(path)
            return path
        return make

    explain_inputs = {
        "image missing": (written("missing.nii.gz", lambda p: None), "missing.nii.gz"),
        "image zero bytes": (written("empty.nii.gz", lambda p: p.write_bytes(b"")), "empty.nii.gz"),
        "image truncated": (written("truncated.nii.gz", lambda p: p.write_bytes(test_image.read_bytes()[:700])), "truncated.nii.gz"),
        "image not gzip": (written("random.nii.gz", lambda p: p.write_bytes(os.urandom(3000))), "random.nii.gz"),
        "image 2D": (written("flat.nii.gz", lambda p: _nifti(p, source[:, :, 0], affine)), "flat.nii.gz"),
        "image 4D": (written("four.nii.gz", lambda p: _nifti(p, np.stack([source] * 2, -1), affine)), "four.nii.gz"),
        "image NaN voxels": (written("nan.nii.gz", lambda p: _nifti(p, np.where(source > 200, np.nan, source).astype(np.float32), affine)),
                             "nan.nii.gz"),
        "image header claims 6.3 G voxels": (written("huge.nii.gz", _huge_header), "huge.nii.gz"),
        "image header wraps around 4 GiB": (written("wrap.nii.gz", _wrap_header), "wrap.nii.gz"),
        "image symlink loop": (written("loop.nii.gz", lambda p: (p.with_name("loop2.nii.gz").symlink_to(p.name), p.symlink_to("loop2.nii.gz"))),
                               "loop.nii.gz"),
        "not an image (a text file)": (written("notes.txt", lambda p: p.write_text("hello")), "notes.txt"),
    }
    for fault, (make, names) in explain_inputs.items():
        cases.append(explain_case(fault, make, names))
    cases.append(explain_case("intensities 0..1 (not HU)", written("unit.nii.gz", lambda p: _nifti(
        p, ((source - source.min()) / np.ptp(source)).astype(np.float32), affine)), "unit.nii.gz", expect="warned"))
    cases.append(explain_case("intensities 0..1 (not HU)", written("unit.nii.gz", lambda p: None), "unit.nii.gz",
                              extra=("--strict",)))

    # DICOM: a folder holding two series (4.4 mm and 3.8 mm), and the choice of one
    def two_series(folder: Path) -> Path:
        path = folder / "two_series"
        if not path.exists():
            write_dicom_series(path, source[:, :, :8], np.diag([1.0, 1.0, 4.4, 1.0]), series_uid="1.2.3.4.1", prefix="a",
                               description="venous")
            write_dicom_series(path, source[:, :, :8], np.diag([1.0, 1.0, 3.8, 1.0]) @ np.eye(4), series_uid="1.2.3.4.2",
                               prefix="b", description="arterial")
        return path

    def chosen_grid(w: Path) -> str | None:
        out = _out(w, "DICOM folder, --series chooses one [explain --series 1.2.3.4.2]")
        maps = list(out.glob("*_importance.nii.gz"))
        if not maps:
            return "no importance map written"
        zooms = nib.load(str(maps[0])).header.get_zooms()
        shape = nib.load(str(maps[0])).shape
        return None if shape[2] == 8 and abs(zooms[2] - 3.8) < 1e-3 else f"map on {shape} at {zooms}, not the chosen series' 8 slices at 3.8 mm"

    cases.append(explain_case("DICOM folder with two series", two_series, "two_series"))
    cases.append(Case("DICOM folder with two series [inspect]", "inspect", lambda w: ["inspect", "--dataset", str(two_series(w / "inputs"))],
                      "two_series"))
    cases.append(explain_case("DICOM folder, unknown --series", two_series, "holds no series 9.9", extra=("--series", "9.9")))
    cases.append(explain_case("DICOM folder, --series chooses one", two_series, "", expect="accepted",
                              extra=("--series", "1.2.3.4.2"), after=chosen_grid))
    def gap_series(folder: Path) -> Path:  # a series with its 5th slice missing
        path = folder / "gap_series"
        if not path.exists():
            write_dicom_series(path, source[:, :, :10], np.diag([1.0, 1.0, 2.5, 1.0]), series_uid="1.2.3.4.3")
            sorted(path.glob("*.dcm"))[4].unlink()
        return path

    def even_grid(w: Path) -> str | None:
        maps = list(_out(w, "DICOM series with a missing slice, resampled [explain --resample_uneven true]").glob("*_importance.nii.gz"))
        if not maps:
            return "no importance map written"
        image = nib.load(str(maps[0]))
        return None if image.shape[2] == 10 and abs(image.header.get_zooms()[2] - 2.5) < 1e-3 else f"map on {image.shape}"

    cases.append(explain_case("DICOM series with a missing slice", gap_series, "uneven slice spacing"))
    cases.append(explain_case("DICOM series with a missing slice, resampled", gap_series, "", expect="accepted",
                              extra=("--resample_uneven", "true"), after=even_grid))
    cases.append(explain_case("DICOM series with a missing slice, resampled, DICOM out", gap_series,
                              "resampled onto an even grid", extra=("--resample_uneven", "true", "--output_format", "dicom")))
    cases.append(Case("one NIfTI file as --dataset [inspect]", "inspect", lambda w: ["inspect", "--dataset", str(test_image)], "",
                      expect="accepted"))

    # checkpoints
    bad = {name: str(work / "checkpoints" / f"{name}.pt") for name in ("truncated", "empty", "random", "hostile", "plain", "other_utility", "record")}
    no_pwned = lambda w: "the hostile pickle ran" if (w / "PWNED").exists() else None  # noqa: E731
    for name in ("truncated", "empty", "random", "hostile", "plain"):
        cases.append(explain_case(f"noise checkpoint {name}", written("ok.nii.gz", lambda p: shutil.copy(test_image, p)),
                                  f"{name}.pt", noise_path=bad[name], after=no_pwned))
    cases.append(explain_case("noise checkpoint whose network record names os.system", written("ok.nii.gz", lambda p: shutil.copy(test_image, p)),
                              "record.pt", noise_path=bad["record"], after=no_pwned))
    cases.append(explain_case("utility checkpoint hostile pickle", written("ok.nii.gz", lambda p: shutil.copy(test_image, p)),
                              "hostile.pt", utility_path=bad["hostile"], after=no_pwned))
    cases.append(explain_case("noise checkpoint missing", written("ok.nii.gz", lambda p: shutil.copy(test_image, p)),
                              "nowhere.pt", noise_path=str(work / "nowhere.pt")))
    cases.append(explain_case("noise checkpoint as --utility", written("ok.nii.gz", lambda p: shutil.copy(test_image, p)),
                              "--utility takes a utility checkpoint", utility_path=noise))
    cases.append(explain_case("utility checkpoint as --noise", written("ok.nii.gz", lambda p: shutil.copy(test_image, p)),
                              "--noise takes a noise checkpoint", noise_path=utility))
    cases.append(explain_case("noise model of another utility", written("ok.nii.gz", lambda p: shutil.copy(test_image, p)),
                              "other_utility.pt", noise_path=bad["other_utility"]))
    data = str(work / "phantom")
    cases.append(Case("noise checkpoint as --utility [train-noise]", "train-noise",
                      lambda w: ["train-noise", "--dataset", data, "--utility", noise, "--output", str(_out(w, "tn_noise_as_utility")), *NOISE],
                      "--utility takes a utility checkpoint", output=lambda w: _out(w, "tn_noise_as_utility")))
    cases.append(Case("noise checkpoint as --utility [evaluate]", "evaluate",
                      lambda w: ["evaluate", "--dataset", data, "--utility", noise, "--noise", noise,
                                 "--output", str(_out(w, "ev_noise_as_utility")), *EVALUATE],
                      "--utility takes a utility checkpoint", output=lambda w: _out(w, "ev_noise_as_utility")))
    cases.append(Case("utility checkpoint as --noise [evaluate]", "evaluate",
                      lambda w: ["evaluate", "--dataset", data, "--utility", utility, "--noise", utility,
                                 "--output", str(_out(w, "ev_utility_as_noise")), *EVALUATE],
                      "--noise takes a noise checkpoint", output=lambda w: _out(w, "ev_utility_as_noise")))
    cases.append(Case("truncated utility [train-noise]", "train-noise",
                      lambda w: ["train-noise", "--dataset", data, "--utility", bad["truncated"], "--output", str(_out(w, "tn_truncated")), *NOISE],
                      "truncated.pt", output=lambda w: _out(w, "tn_truncated")))

    # settings
    def setting(name: str, command: str, extra: list[str], names: str) -> Case:
        key = f"{name} [{command}]"
        base = {
            "train-utility": lambda w: ["train-utility", "--dataset", data, "--output", str(_out(w, key)), *TRAIN],
            "train-noise": lambda w: ["train-noise", "--dataset", data, "--utility", utility, "--output", str(_out(w, key)), *NOISE],
            "evaluate": lambda w: ["evaluate", "--dataset", data, "--utility", utility, "--noise", noise, "--output", str(_out(w, key)), *EVALUATE],
            "explain": lambda w: ["explain", "--input", str(test_image), "--output", str(_out(w, key)), "--noise", noise, "--utility", utility],
            "train-denoiser": lambda w: ["train-denoiser", "--dataset", data, "--output", str(_out(w, key)), "--epochs", "1",
                                         "--batch-size", "4", "--device", "cpu", "--denoiser-channels", "[4, 8]", *SPLIT],
            "audit-dose": lambda w: ["audit-dose", "--dataset", data, "--utility", utility, "--output", str(_out(w, key)),
                                     "--max-cases", "1", "--noise-models", "['image']", *SPLIT],
            "denoise": lambda w: ["denoise", "--input", str(test_image), "--output", str(_out(w, key))],
        }[command]
        return Case(key, command, lambda w: [*base(w), *extra], names, output=lambda w, k=key: _out(w, k))

    cases += [
        setting("--slices_per_case 0", "evaluate", ["--slices_per_case", "0"], "slices_per_case"),
        setting("--slices_per_case -1", "evaluate", ["--slices_per_case", "-1"], "slices_per_case"),
        setting("--slices_per_case abc", "evaluate", ["--slices_per_case", "abc"], "slices_per_case"),
        setting("fewer slices than one batch", "train-utility", ["--batch_size", "512"], "fewer than one batch"),
        setting("empty validation split", "train-utility", ["--val_fraction", "0"], "validation split is empty"),
        setting("unknown config key", "train-utility", ["--epochz", "2"], "epochz"),
        setting("unknown config key", "evaluate", ["--infil", "['blur']"], "infil"),
        setting("unknown preset", "train-utility", ["--preset", "huge"], "huge"),
        setting("epochs 0", "train-utility", ["--epochs", "0"], "epochs"),
        setting("unknown infill", "evaluate", ["--infills", "['zeros']"], "zeros"),
        setting("fractions without a reported share", "evaluate", ["--fractions", "[0, 0.05, 0.1, 0.5, 1]"], "fractions"),
        setting("unknown volume protocol", "evaluate", ["--volume-protocol", "slab"], "volume_protocol"),
        setting("unknown training infill", "train-noise", ["--baseline", "['blur', 'zeros']"], "zeros"),
        setting("CUDA asked for, none here", "explain", ["--device", "cuda"], "cuda"),
        setting("uncertainty of a deterministic utility", "train-noise", ["--utility-output", "uncertainty"],
                "needs a Probabilistic U-Net"),
        setting("uncertainty of a deterministic utility", "explain", ["--utility-output", "uncertainty"],
                "needs a Probabilistic U-Net"),
        setting("unknown utility output", "train-noise", ["--utility-output", "variance"], "utility_output"),
        setting("a deterministic utility beside a deterministic one", "evaluate", ["--deterministic-utility", utility],
                "beside a probabilistic utility"),
        setting("an uncertainty noise model of a deterministic utility", "evaluate", ["--uncertainty-noise", noise],
                "is not a Probabilistic U-Net"),
        setting("a probabilistic utility in 3D", "train-utility", ["--kind", "probabilistic", "--spatial-dims", "3"],
                "--kind probabilistic trains on 2D slices"),
    ]

    # dose and denoising: the noise models' settings, the denoisers given to the audit and to denoise
    cases += [
        setting("unknown dose noise model", "train-denoiser", ["--dose-noise-model", "poisson"], "unknown dose noise model"),
        setting("a dose above 1", "train-denoiser", ["--denoise-doses", "[1.5]"], "dose fraction"),
        setting("training doses without a lower dose", "train-denoiser", ["--denoise-doses", "[1.0]"], "below 1"),
        setting("unknown denoising loss", "train-denoiser", ["--denoise-loss", "huber"], "denoise_loss"),
        setting("negative photon count", "train-denoiser", ["--dose-noise-settings", "{'photons': -1}"], "photons"),
        setting("a setting the noise model lacks", "train-denoiser", ["--dose-noise-settings", "{'photon': 1e5}"], "photon"),
        setting("a dose of 0", "audit-dose", ["--doses", "[1, 0]"], "dose fraction"),
        setting("a denoiser without a name", "audit-dose", ["--denoiser", noise], "NAME=CHECKPOINT"),
        setting("a denoiser that is not there", "audit-dose", ["--denoiser", f"n2n={work / 'nowhere.pt'}"], "nowhere.pt"),
        setting("a utility checkpoint as a denoiser", "audit-dose", ["--denoiser", f"n2n={utility}"], "takes a denoiser checkpoint"),
        setting("denoise_with names no denoiser", "audit-dose", ["--denoise-with", "n2c"], "denoise_with"),
        setting("a utility checkpoint as the denoiser", "denoise", ["--denoiser", utility], "takes a denoiser checkpoint"),
        setting("a truncated denoiser", "denoise", ["--denoiser", bad["truncated"]], "truncated.pt"),
    ]

    # run folders
    def copy_run(name: str) -> Callable[[Path], None]:
        def make(w: Path) -> None:
            target = _out(w, name)
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(w / "utility", target)
        return make

    def locked(alive: bool) -> Callable[[Path], None]:
        """A folder whose lock a live process holds, or the lock file a killed owner left."""
        def make(w: Path) -> None:
            target = _out(w, f"locked_{alive}")
            if target.exists():
                shutil.rmtree(target)
            target.mkdir(parents=True)
            # it holds the lock until its stdin closes: killed at the table's end, or gone with this script, however
            # long the other cases take (a timed sleep ran out once on a busy machine)
            holder = subprocess.Popen([sys.executable, "-c", "import sys; from pipeline.rundir import acquire_lock; "
                                       f"acquire_lock({str(target)!r}); print('held', flush=True); sys.stdin.read()"],
                                      cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            holder.stdout.readline()
            HOLDERS.append(holder)  # a reference keeps its stdin open
            if alive:
                (w / "holder.pid").write_text(str(holder.pid))
            else:
                holder.kill()  # kill -9: its lock file stays, its flock goes
                holder.wait()
        return make

    def lock_cleared(w: Path) -> str | None:
        target = _out(w, "locked_False")
        if (target / ".lock").exists():
            return "the stale lock is still there after the run"
        return None if (target / "checkpoints" / "last.pt").exists() else "the run wrote no checkpoint"

    def temporaries_gone(w: Path) -> str | None:
        target = _out(w, "resume_with_leftovers")
        left = list(target.rglob(".tmp-*"))
        epochs = [r["epoch"] for r in json.loads((target / "metrics.json").read_text())["epochs"]]
        if left:
            return f"{len(left)} .tmp-* file(s) left"
        return None if epochs == sorted(set(epochs)) == [1, 2] else f"metrics.json epochs {epochs}"

    def leftovers(w: Path) -> None:
        copy_run("resume_with_leftovers")(w)
        (_out(w, "resume_with_leftovers") / "checkpoints" / ".tmp-dead0001-last.pt").write_bytes(b"partial")

    cases += [
        Case("evaluate --output is a training run", "evaluate",
             lambda w: ["evaluate", "--dataset", data, "--utility", utility, "--noise", noise, "--output", str(_out(w, "eval_into_run")), *EVALUATE],
             "holds a train_utility run", output=lambda w: _out(w, "eval_into_run"), setup=copy_run("eval_into_run")),
        Case("explain --output is a training run", "explain",
             lambda w: ["explain", "--input", str(test_image), "--output", str(_out(w, "explain_into_run")), "--noise", noise, "--utility", utility],
             "holds a train_utility run", output=lambda w: _out(w, "explain_into_run"), setup=copy_run("explain_into_run")),
        Case("train-noise --resume in a utility run", "train-noise",
             lambda w: ["train-noise", "--dataset", data, "--utility", utility, "--output", str(_out(w, "noise_resume_utility")), "--resume", *NOISE],
             "holds a train_utility run", output=lambda w: _out(w, "noise_resume_utility"), setup=copy_run("noise_resume_utility")),
        Case("existing run without --resume", "train-utility",
             lambda w: ["train-utility", "--dataset", data, "--output", str(_out(w, "existing_run")), *TRAIN],
             "already holds a run", output=lambda w: _out(w, "existing_run"), setup=copy_run("existing_run")),
        Case("--resume with another preset", "train-utility",
             lambda w: ["train-utility", "--dataset", data, "--output", str(_out(w, "resume_preset")), "--resume", *TRAIN, "--preset", "medium"],
             "preset 'small' in the run, 'medium' asked for", output=lambda w: _out(w, "resume_preset"), setup=copy_run("resume_preset")),
        Case("--resume on other data (another window)", "train-utility",
             lambda w: ["train-utility", "--dataset", data, "--output", str(_out(w, "resume_window")), "--resume", *TRAIN, "--window", "abdomen"],
             "window 'pancreas' in the run, 'abdomen' asked for", output=lambda w: _out(w, "resume_window"), setup=copy_run("resume_window")),
        Case("--resume with nothing to resume", "train-utility",
             lambda w: ["train-utility", "--dataset", data, "--output", str(_out(w, "resume_nothing")), "--resume", *TRAIN],
             "does not exist", output=lambda w: _out(w, "resume_nothing")),
        Case("--output is a file", "train-utility",
             lambda w: ["train-utility", "--dataset", data, "--output", str(w / "phantom" / "dataset.json"), *TRAIN],
             "is not a folder", output=lambda w: w / "phantom" / "dataset.json"),
        Case("folder locked by a live run", "train-utility",
             lambda w: ["train-utility", "--dataset", data, "--output", str(_out(w, "locked_True")), *TRAIN],
             "in use by another run", output=lambda w: _out(w, "locked_True"), setup=locked(True)),
        Case("stale lock of a killed run", "train-utility",
             lambda w: ["train-utility", "--dataset", data, "--output", str(_out(w, "locked_False")), *TRAIN],
             "", expect="accepted", setup=locked(False), after=lock_cleared),
        Case("resume after kill -9 left .tmp-* files", "train-utility",
             lambda w: ["train-utility", "--dataset", data, "--output", str(_out(w, "resume_with_leftovers")), "--resume", *TRAIN, "--epochs", "2"],
             "", expect="accepted", setup=leftovers, after=temporaries_gone),
    ]
    return cases


# ----------------------------------------------------------------------------- running


def _snapshot(path: Path | None) -> object:
    if path is None or not path.exists():
        return None
    if path.is_file():
        stat = path.stat()
        return ("file", stat.st_size, stat.st_mtime_ns)
    return sorted((str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*") if p.is_file())


def _measured(argv: list[str], timeout: float = 600) -> tuple[int, str, str, float, float]:
    """``python -m pipeline argv`` in a fresh process; (status, stdout, stderr, seconds, its own peak MB from ``wait4``)."""
    started = time.perf_counter()
    with open(os.devnull, "rb") as stdin:
        with tempfile.TemporaryFile() as out_file, tempfile.TemporaryFile() as err_file:  # one pair per case and thread
            process = subprocess.Popen([sys.executable, "-m", "pipeline", *argv], cwd=ROOT, stdin=stdin, stdout=out_file,
                                       stderr=err_file, env={**os.environ, "PYTHONWARNINGS": "ignore"})
            deadline = started + timeout
            while True:
                pid, status, usage = os.wait4(process.pid, os.WNOHANG)
                if pid:
                    break
                if time.perf_counter() > deadline:
                    process.kill()
                    pid, status, usage = os.wait4(process.pid, 0)
                    break
                time.sleep(0.05)
            process.returncode = os.waitstatus_to_exitcode(status)
            out_file.seek(0)
            err_file.seek(0)
            out, err = out_file.read().decode(errors="replace"), err_file.read().decode(errors="replace")
    return process.returncode, out, err, time.perf_counter() - started, usage.ru_maxrss / 1024.0


def concurrent_runs(work: Path) -> dict:
    """Two ``train-utility`` processes started together into one new folder: one runs, the other is refused."""
    target = work / "outputs" / "concurrent"
    argv = [sys.executable, "-m", "pipeline", "train-utility", "--dataset", str(work / "phantom"), "--output", str(target), *TRAIN]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    started = time.perf_counter()
    processes = [subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read().decode(errors="replace")) for p in processes]
    statuses = sorted(status for status, _ in results)
    refusal = next((err.strip().splitlines()[-1] for status, err in results if status == 2), "")
    epochs = [r["epoch"] for r in json.loads((target / "metrics.json").read_text())["epochs"]] if (target / "metrics.json").exists() else []
    ok = statuses == [0, 2] and "in use by another run" in refusal and epochs == [1] \
        and not (target / ".lock").exists()
    return {"case": "two runs into one folder at once [train-utility]", "command": "train-utility", "expect": "one runs, one refused",
            "status": statuses, "seconds": round(time.perf_counter() - started, 1), "peak_mb": None,
            "outcome": "refused" if ok else "mixed", "error": refusal.removeprefix("error: "), "names": ok,
            "output_untouched": None, "problem": None if ok else f"statuses {statuses}, epochs {epochs}", "ok": ok}


def classify(case: Case, status: int, stderr: str, stdout: str = "") -> dict:
    """The outcome of one case (see the module docstring); warnings may be logged to either stream."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    logged = lines + [line for line in stdout.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    if "Traceback (most recent call last)" in stderr or status not in (0, 1, 2):
        kind = "traceback"
    elif status == 2:
        kind = "refused" if len(errors) == 1 and lines[-1] == errors[0] else "traceback"
    elif status == 1:
        kind = "isolated" if not errors else "traceback"
        named = [line for line in logged if case.names and case.names in line and "fail" in line.lower()]
        return {"outcome": kind, "error": named[0][:300] if named else "", "names": bool(named),
                "last_stderr": lines[-1][:300] if lines else ""}
    else:
        kind = "warned" if any("does not look like CT" in line for line in logged) else "accepted"
    message = errors[0][len("error: "):] if errors else ""
    return {"outcome": kind, "error": message, "names": bool(case.names) and case.names in message,
            "last_stderr": lines[-1][:300] if lines else ""}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (emptied first)")
    parser.add_argument("--output", type=Path, default=Path("hostile_inputs.json"))
    parser.add_argument("--only", default=None, help="run only cases whose name holds this text")
    parser.add_argument("--jobs", type=int, default=2, help="cases run at once (default 2)")
    args = parser.parse_args()
    work = args.work.resolve()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    print("setting up: phantoms, a tiny utility and noise model ...", flush=True)
    write_phantom_dataset(work / "phantom", cases=6, size=32, slices=12, seed=1, test_cases=1)
    for argv in (["train-utility", "--dataset", str(work / "phantom"), "--output", str(work / "utility"), *TRAIN],
                 ["train-noise", "--dataset", str(work / "phantom"), "--utility", str(work / "utility" / "checkpoints" / "best.pt"),
                  "--output", str(work / "noise"), *NOISE]):
        status, _, err, _, _ = _measured(argv)
        if status != 0:
            print(err[-3000:], file=sys.stderr)
            return 1
    _bad_checkpoints(work)
    cases = [c for c in build_cases(work) if args.only is None or args.only in c.name]
    prepared = []
    for case in cases:  # every setup first, in order: they write the damaged copies and inputs
        if case.setup is not None:
            case.setup(work)
        output = case.output(work) if case.output else None
        prepared.append((case, case.argv(work), output, _snapshot(output)))

    def run_one(item: tuple) -> dict:
        case, argv, output, before = item
        status, stdout, stderr, seconds, peak = _measured(argv)
        row = {"case": case.name, "command": case.command, "expect": case.expect, "status": status, "seconds": round(seconds, 1),
               "peak_mb": round(peak, 1), **classify(case, status, stderr, stdout)}
        row["output_untouched"] = None if output is None or row["outcome"] != "refused" else _snapshot(output) == before
        row["problem"] = case.after(work) if case.after else None
        row["ok"] = (row["outcome"] == case.expect and (case.expect not in ("refused", "isolated") or row["names"])
                     and row["output_untouched"] is not False and row["problem"] is None)
        return row

    rows = []
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:  # each case is its own process and folder
        for index, row in enumerate(pool.map(run_one, prepared), 1):
            rows.append(row)
            mark = "ok  " if row["ok"] else "FAIL"
            print(f"[{index:3d}/{len(cases)}] {mark} {row['case']:70s} {row['outcome']:9s} {row['peak_mb']:6.0f} MB  "
                  f"{row['error'][:110]}", flush=True)
            if row["problem"]:
                print(f"        problem: {row['problem']}")
    if args.only is None or args.only in "two runs into one folder at once":
        row = concurrent_runs(work)
        rows.append(row)
        print(f"[  +] {'ok  ' if row['ok'] else 'FAIL'} {row['case']:70s} {row['outcome']:9s}          {row['error'][:110]}", flush=True)
    holder = work / "holder.pid"
    if holder.exists():
        try:
            os.kill(int(holder.read_text()), 9)
        except ProcessLookupError:
            pass
    refuse = [r for r in rows if r["expect"] == "refused"]
    huge = [r["peak_mb"] for r in rows if "6.3 G voxels" in r["case"] or "wraps around 4 GiB" in r["case"]]
    summary = {
        "cases": len(rows),
        "expected_refusals": len(refuse),
        "refused_with_one_line_naming_it": sum(r["outcome"] == "refused" and r["names"] for r in refuse),
        "isolated_naming_the_file": f"{sum(r['ok'] for r in rows if r['expect'] == 'isolated')}/"
                                    f"{sum(r['expect'] == 'isolated' for r in rows)}",
        "tracebacks": sum(r["outcome"] == "traceback" for r in rows),
        "silent_acceptances": sum(r["outcome"] in ("accepted", "warned") and r["expect"] == "refused" for r in rows)
                              + sum(r["outcome"] == "accepted" and r["expect"] == "warned" for r in rows),
        "half_written_or_mixed_outputs": sum(r["output_untouched"] is False or r["outcome"] == "mixed" for r in rows),
        "positive_controls_ok": f"{sum(r['ok'] for r in rows if r['expect'] in ('accepted', 'warned'))}/"
                                f"{sum(r['expect'] in ('accepted', 'warned') for r in rows)}",
        "failed": [r["case"] for r in rows if not r["ok"]],
        "peak_mb_header_only_file": max(huge) if huge else None,
        "peak_mb_any_refusal": max((r["peak_mb"] for r in refuse), default=None),
    }
    args.output.write_text(json.dumps({"summary": summary, "rows": rows}, indent=2))
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.output}")
    return 0 if not summary["failed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
