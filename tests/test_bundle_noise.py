"""End to end: train_noise and inference bundle configs on a tiny phantom set (CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import write_dicom_series
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pipeline.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tiny_pair: dict[str, Path]) -> dict[str, Path]:
    return tiny_pair  # the suite's shared pair (conftest)


def test_noise_run_folder_and_metrics(runs: dict[str, Path]) -> None:
    run = runs["noise_run"]
    assert (run / "checkpoints" / "last.pt").is_file() and runs["noise"].is_file()
    record = json.loads((run / "metrics.json").read_text())["epochs"][0]
    for key in ("train_loss", "train_utility_loss", "train_noise_term", "train_mean_tolerance",
                "val_objective", "val_dice_perturbed", "val_dice_clean", "val_mean_tolerance"):
        assert key in record, key
    assert 0.0 < record["val_mean_tolerance"] < 1.0
    meta = torch.load(runs["noise"], weights_only=True)["meta"]
    assert meta["preset"] == "small" and meta["utility_preset"] == "small" and meta["spatial_size"] == 32


def test_noise_tensorboard_scalars_and_images(runs: dict[str, Path]) -> None:
    events = EventAccumulator(str(runs["noise_run"] / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    scalars, images = set(events.Tags()["scalars"]), set(events.Tags()["images"])
    assert {"train_loss", "train_utility_loss", "train_noise_term", "train_mean_tolerance", "val_dice_perturbed",
            "val_dice_clean", "val_mean_tolerance", "val_objective", "lr"} <= scalars, scalars
    assert {"ct", "label", "importance", "perturbed", "prediction_perturbed"} <= images, images


def test_init_from_a_checkpoint_of_another_shape_fails_clearly(runs: dict[str, Path], tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    code = main(["train-noise", "--dataset", str(runs["data"]), "--utility", str(runs["utility"]),
                 "--output", str(tmp_path / "n"), "--init-from", str(runs["utility"]), "--noise_preset", "medium",
                 "--epochs", "1", "--device", "cpu", "--spatial_size", "32"])
    err = capsys.readouterr().err
    assert code == 2 and "weights do not fit the 'medium' network (trained as small" in err, err


def _explain(runs: dict[str, Path], inputs: list[str], output: Path, *extra: str) -> int:
    return main(["explain", "--input", *inputs, "--output", str(output), "--noise", str(runs["noise"]),
                 "--utility", str(runs["utility"]), "--device", "cpu", *extra])


def test_explain_keeps_the_geometry_of_an_lps_anisotropic_input(runs: dict[str, Path], tmp_path: Path) -> None:
    source = runs["data"] / "imagesTr" / "pancreas_001.nii.gz"  # odd case: stored LPS, anisotropic
    original = nib.load(source)
    assert "".join(nib.aff2axcodes(original.affine)) == "LPS"
    assert _explain(runs, [str(source)], tmp_path / "out", "--overlay") == 0
    for name in ("importance", "seg"):
        written = nib.load(tmp_path / "out" / f"pancreas_001_{name}.nii.gz")
        assert written.shape == original.shape
        np.testing.assert_allclose(written.affine, original.affine, atol=1e-5)
    importance = nib.load(tmp_path / "out" / "pancreas_001_importance.nii.gz")
    assert importance.get_data_dtype() == np.float32
    values = np.asarray(importance.dataobj)
    assert values.min() >= 0.0 and values.max() <= 1.0
    assert (tmp_path / "out" / "pancreas_001_overlay.png").stat().st_size > 1000


def test_explain_a_dicom_series_keeps_its_geometry_and_drops_patient_fields(runs: dict[str, Path], tmp_path: Path) -> None:
    source = nib.load(runs["data"] / "imagesTr" / "pancreas_000.nii.gz")
    series = write_dicom_series(tmp_path / "Series 1", np.asarray(source.dataobj), source.affine)
    assert _explain(runs, [str(series)], tmp_path / "out") == 0
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(series)))
    dicom = reader.Execute()
    for name in ("importance", "seg"):
        path = tmp_path / "out" / f"Series_1_{name}.nii.gz"
        written = sitk.ReadImage(str(path))
        assert written.GetSize() == dicom.GetSize()
        np.testing.assert_allclose(written.GetSpacing(), dicom.GetSpacing(), atol=1e-4)
        np.testing.assert_allclose(written.GetOrigin(), dicom.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(written.GetDirection(), dicom.GetDirection(), atol=1e-6)
        raw = nib.load(path).header.binaryblock + path.read_bytes()
        assert b"Doe" not in raw and b"PID-0001" not in raw


def test_explain_does_not_overwrite_outputs(runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    inputs = [str(runs["data"] / "imagesTs")]
    assert _explain(runs, inputs, tmp_path / "out") == 0
    before = (tmp_path / "out" / "pancreas_005_importance.nii.gz").read_bytes()
    capsys.readouterr()
    assert _explain(runs, inputs, tmp_path / "out") == 0  # the same models and settings: done, skipped
    assert "0 volume(s), 1 skipped (done before)" in capsys.readouterr().out
    (tmp_path / "out" / "manifest.json").unlink()  # outputs nobody can vouch for are never overwritten
    assert _explain(runs, inputs, tmp_path / "out") == 2
    assert "already exist" in capsys.readouterr().err
    assert (tmp_path / "out" / "pancreas_005_importance.nii.gz").read_bytes() == before
    assert _explain(runs, inputs, tmp_path / "out", "--overwrite") == 0


def test_the_python_chain_is_the_json_preprocessing_so_an_edit_there_reaches_it(runs: dict[str, Path], tmp_path: Path) -> None:
    from pipeline.data import build_volume_transforms, load_datalist
    from pipeline.locations import COMMON_CONFIG, default_bundle_root

    entry = load_datalist(runs["data"])[1]  # the LPS, anisotropic case
    shipped = build_volume_transforms("pancreas", 24)(dict(entry))
    assert {"image", "label", "body"} <= set(shipped) and tuple(shipped["image"].shape[1:3]) == (24, 24)
    config = json.loads((default_bundle_root() / "configs" / COMMON_CONFIG).read_text())
    steps = config["preprocessing"]["transforms"]  # a user adds a step in the JSON: here, a zoom of the volume
    steps.insert(2, {"_target_": "Zoomd", "keys": "$@image_keys + @mask_keys", "zoom": 0.5, "keep_size": False,
                     "allow_missing_keys": True})
    edited = tmp_path / COMMON_CONFIG
    edited.write_text(json.dumps(config))
    zoomed = build_volume_transforms("pancreas", None, config_file=edited)(dict(entry))
    plain = build_volume_transforms("pancreas", None)(dict(entry))
    assert zoomed["image"].shape[-1] == round(plain["image"].shape[-1] * 0.5)  # the JSON's step, not a Python copy


def test_a_spacing_step_added_in_json_is_inverted_on_the_way_out(runs: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    from pipeline.bundle import default_bundle_root

    bundle = tmp_path / "bundle"
    shutil.copytree(default_bundle_root() / "configs", bundle / "configs")
    common = json.loads((bundle / "configs" / "common.json").read_text())
    common["preprocessing"]["transforms"].insert(2, {
        "_target_": "Spacingd", "keys": "$@image_keys + @mask_keys", "pixdim": [1.7, 1.7, -1], "allow_missing_keys": True,
        "mode": "$['bilinear'] * len(@image_keys) + ['nearest'] * len(@mask_keys)"})
    (bundle / "configs" / "common.json").write_text(json.dumps(common))
    source = runs["data"] / "imagesTr" / "pancreas_001.nii.gz"
    assert main(["--bundle-root", str(bundle), "explain", "--input", str(source), "--output", str(tmp_path / "out"),
                 "--noise", str(runs["noise"]), "--utility", str(runs["utility"]), "--device", "cpu"]) == 0
    original, written = nib.load(source), nib.load(tmp_path / "out" / "pancreas_001_importance.nii.gz")
    assert written.shape == original.shape
    np.testing.assert_allclose(written.affine, original.affine, atol=1e-5)
