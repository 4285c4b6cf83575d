"""The ``unoise`` command as a user runs it: exit codes and one-line errors that name the file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import make_volume, write_nifti

from pipeline.cli import main, parse_value


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """Run ``python -m pipeline`` in a subprocess, as the console script would."""
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=300)


@pytest.mark.parametrize(("text", "value"), [("2", 2), ("0.5", 0.5), ("[7]", [7]), ("null", None), ("true", True), ("cpu", "cpu")])
def test_values_parse_like_monai_bundle(text: str, value: object) -> None:
    assert parse_value(text) == value


def test_inspect_prints_a_summary(msd_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["inspect", "--dataset", str(msd_dir)]) == 0
    out = capsys.readouterr().out
    assert "cases: 5 (5 with label)" in out and "with pancreas: 20" in out


def test_inspect_json(msd_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["inspect", "--dataset", str(msd_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cases"] == 5


@pytest.mark.parametrize("problem", ["four_d", "truncated", "label_shape"])
def test_bad_dataset_exits_nonzero_with_one_line_naming_the_file(msd_dir: Path, affine: np.ndarray, problem: str, capsys) -> None:
    image, label = make_volume(0)
    if problem == "four_d":
        bad = write_nifti(msd_dir / "imagesTr" / "pancreas_002.nii.gz", np.stack([image] * 3, -1), affine)
    elif problem == "truncated":
        bad = msd_dir / "imagesTr" / "pancreas_002.nii.gz"
        bad.write_bytes(bad.read_bytes()[:300])
    else:
        bad = write_nifti(msd_dir / "labelsTr" / "pancreas_002.nii.gz", label[:-2], affine)
    capsys.readouterr()
    assert main(["inspect", "--dataset", str(msd_dir)]) == 1  # default for several cases: report it, go on, exit 1
    out = capsys.readouterr().out
    assert "1 of 5 case(s) failed" in out and str(bad) in out, out
    assert main(["inspect", "--dataset", str(msd_dir), "--on_error", "stop"]) == 2  # (the entry point as a process: the phantom test)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and "Warning" not in line and "warn" not in line]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and str(bad) in errors[0], err
    assert "Traceback" not in err


def test_pancreas_labels_override(tmp_path: Path, affine: np.ndarray, capsys: pytest.CaptureFixture) -> None:
    image, label = make_volume(0)
    write_nifti(tmp_path / "imagesTr" / "a.nii.gz", image, affine)
    write_nifti(tmp_path / "labelsTr" / "a.nii.gz", np.where(label > 0, 7, 0).astype(np.uint8), affine)
    (tmp_path / "list.json").write_text(json.dumps([{"image": "imagesTr/a.nii.gz", "label": "labelsTr/a.nii.gz"}]))
    assert main(["inspect", "--dataset", str(tmp_path / "list.json")]) == 2
    assert "outside the configured set" in capsys.readouterr().err
    assert main(["inspect", "--dataset", str(tmp_path / "list.json"), "--pancreas_labels", "[7]"]) == 0


def test_split_writes_a_datalist(msd_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "split.json"
    assert main(["split", "--dataset", str(msd_dir), "--output", str(out), "--val", "0.2", "--test", "0.2"]) == 0
    content = json.loads(out.read_text())
    assert [len(content[k]) for k in ("training", "validation", "test")] == [3, 1, 1]


def test_phantom_twice_gives_identical_volumes_that_inspect_accepts(tmp_path: Path) -> None:
    for name in ("a", "b"):
        result = run_cli("phantom", "--out", str(tmp_path / name), "--cases", "2", "--size", "64", "--slices", "16", "--seed", "3")
        assert result.returncode == 0, result.stderr
    for sub in ("imagesTr/pancreas_000.nii.gz", "labelsTr/pancreas_001.nii.gz"):
        first, second = (np.asarray(nib.load(tmp_path / n / sub).dataobj) for n in ("a", "b"))
        assert np.array_equal(first, second)
    assert main(["inspect", "--dataset", str(tmp_path / "a")]) == 0


def test_override_keys_take_hyphens_or_underscores() -> None:
    from pipeline.cli import parse_overrides

    assert parse_overrides(["--noise-preset", "small", "--held_out_infills", "['road']", "--val-fraction=0.2"]) == {
        "noise_preset": "small", "held_out_infills": ["road"], "val_fraction": 0.2}


def test_help_shows_one_spelling_and_the_underscore_form_still_works(msd_dir: Path, capsys: pytest.CaptureFixture) -> None:
    import re

    from pipeline.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # every subcommand's help, as `unoise X --help` prints it
    for name, command in {"": parser, **commands}.items():
        options = re.findall(r"(?<![\w-])--[a-z][a-z0-9_-]*", command.format_help())
        assert [option for option in options if "_" in option] == [], name
    assert main(["inspect", "--dataset", str(msd_dir), "--pancreas_labels", "[1, 2]", "--on_error", "stop"]) == 0
    assert main(["inspect", "--dataset", str(msd_dir), "--pancreas-labels=[1, 2]", "--on-error=stop"]) == 0


@pytest.mark.parametrize("spelling", ["--bundle-root", "--bundle_root"])
def test_bundle_root_after_the_subcommand_is_the_option_not_a_config_key(spelling: str, tmp_path: Path, capsys) -> None:
    status = main(["train-utility", "--dataset", str(tmp_path), "--output", str(tmp_path / "run"), spelling,
                   str(tmp_path / "no_bundle")])
    error = capsys.readouterr().err.strip()
    assert status == 2 and error.count("\n") == 0 and "no_bundle" in error, error
