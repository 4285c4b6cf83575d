"""The denoiser's three training modes end to end (`unoise train-denoiser`), and `unoise audit-dose`'s JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.cli import main
from pipeline.data import build_volume_transforms, load_datalist, split_datalist
from pipeline.engines import DenoiseStep, build_denoise_loss
from pipeline.errors import ConfigError, UNoiseError
from pipeline.networks.checkpoints import load_checkpoint, load_denoiser
from pipeline.phantom import write_phantom_dataset

SPLIT = ["--val-fraction", "0.25", "--test-fraction", "0.25", "--seed", "0"]
NOISE = ["--dose-noise-model", "image", "--dose-noise-settings", "{'full_dose_std': 40.0}"]  # fast, and loud enough to learn
TRAIN = [*SPLIT, *NOISE, "--device", "cpu", "--batch-size", "4", "--learning-rate", "0.01", "--denoiser-channels", "[8, 16, 32]",
         "--denoise-doses", "[0.25]"]


def test_nes_rounds_split_the_epochs_and_the_losses_are_named():
    step = DenoiseStep("nes", rounds=3)
    assert [step.nes_round(epoch, 9) for epoch in range(1, 10)] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert DenoiseStep("nes", rounds=5).nes_round(2, 2) == 2  # more rounds than epochs: every epoch its own
    assert isinstance(build_denoise_loss("l1"), torch.nn.L1Loss)
    with pytest.raises(ConfigError, match="denoise_loss"):
        build_denoise_loss("huber")
    with pytest.raises(ConfigError, match="denoise_mode"):
        DenoiseStep("n2s")


@pytest.fixture(scope="module")
def denoisers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("denoise")
    data = root / "data"
    write_phantom_dataset(data, cases=8, size=64, slices=8, seed=2)
    runs = {"data": data}
    for mode in ("n2c", "n2n", "nes"):
        assert main(["train-denoiser", "--dataset", str(data), "--mode", mode, "--output", str(root / mode), *TRAIN,
                     "--epochs", "30", "--nes-rounds", "2"]) == 0
        runs[mode] = root / mode / "checkpoints" / "last.pt"
    return runs


def _mae(denoiser: Path | None, entries: list, dose: float = 0.25) -> float:
    """Mean absolute error (HU) against the full-dose scan of the held-out cases at ``dose``, with or without a denoiser."""
    settings = {"dose_noise_model": "image", "dose_noise_settings": {"full_dose_std": 40.0}, "data_window": [0.0, 1.0],
                "window_clip": False, "dose_seed": 11}
    errors = []
    for entry in entries:
        clean = build_volume_transforms(settings=settings)(dict(entry))["image"]
        lower = {**settings, "dose": dose, "denoiser_checkpoint": str(denoiser) if denoiser else None}
        out = build_volume_transforms(settings=lower)(dict(entry))["image"]
        errors.append(float((out - clean).abs().mean()))
    return float(np.mean(errors))


@pytest.mark.slow
def test_each_mode_lowers_the_error_on_held_out_phantoms(denoisers):
    test = split_datalist(load_datalist(denoisers["data"]), 0.25, 0.25, 0)["test"]
    noisy = _mae(None, test)
    assert noisy > 20.0  # the noise the denoisers face: about 0.8 x its std of 40 * sqrt(3) HU
    for mode in ("n2c", "n2n", "nes"):
        denoised = _mae(denoisers[mode], test)
        assert denoised < 0.85 * noisy, (mode, denoised, noisy)
    meta = load_checkpoint(denoisers["n2n"])["meta"]
    assert meta["kind"] == "denoiser" and meta["denoise_mode"] == "n2n" and meta["hu_scale"] == 1000.0
    assert meta["dose_noise_model"] == "image"
    network, _ = load_denoiser(denoisers["nes"])
    assert not network.training


@pytest.mark.slow
def test_a_utility_checkpoint_is_refused_as_a_denoiser(denoisers, tiny_pair):
    with pytest.raises(UNoiseError, match="takes a denoiser checkpoint"):
        build_volume_transforms(settings={"dose": 0.5, "denoiser_checkpoint": str(tiny_pair["utility"])})


@pytest.mark.slow
def test_audit_dose_writes_its_json_figure_and_denoise_summary(denoisers, tmp_path: Path, capsys):
    data = denoisers["data"]
    utility = tmp_path / "utility"
    assert main(["train-utility", "--dataset", str(data), "--output", str(utility), *SPLIT, "--preset", "small",
                 "--spatial-size", "64", "--epochs", "1", "--batch-size", "8", "--device", "cpu"]) == 0
    out = tmp_path / "audit"
    assert main(["audit-dose", "--dataset", str(data), "--utility", str(utility / "checkpoints" / "last.pt"), "--output", str(out),
                 "--denoiser", *(f"{m}={denoisers[m]}" for m in ("n2c", "n2n", "nes")), *SPLIT,
                 "--doses", "[1, 0.5, 0.25]", "--noise-settings", "{'image': {'full_dose_std': 40.0}, 'projection': {'views': 60}}",
                 "--bootstrap", "200"]) == 0
    result = json.loads((out / "dose_audit.json").read_text())
    assert result["doses"] == [1.0, 0.5, 0.25] and result["noise_models"] == ["image", "projection"]
    assert result["denoise_with"] == "n2n" and result["cases"] == len(result["per_case"]) > 0
    rows = result["levels"]
    assert [(r["model"], r["dose"]) for r in rows] == [(m, d) for m in ("image", "projection") for d in (1.0, 0.5, 0.25)]
    for row in rows:
        assert set(row["psnr"]) == set(row["ssim"]) == {"noisy", "n2c", "n2n", "nes"}
        assert set(row["dice"]) == {"without", "with"} and set(row["dice"]["with"]) == {"label", "full_dose"}
        assert len(row["dice"]["without"]["label"]["ci95"]) == 2
    full = next(r for r in rows if r["dose"] == 1.0)
    assert full["dice"]["without"]["full_dose"]["mean"] == pytest.approx(1.0)  # the full-dose prediction against itself
    check = result["noise_check"]["image"]["levels"]
    assert [c["dose"] for c in check] == [0.5, 0.25]
    for level in check:  # measured against the stated model, not against itself
        assert 0.85 < level["measured_std_hu"] / (40.0 * (1 / level["dose"] - 1) ** 0.5) < 1.15
    assert result["recovery"]["image"]["dose"] == 0.25 and "ci95" in result["recovery"]["image"]["dice_won_back"]
    assert set(result["n2n_vs_n2c"]["image"]) == {"0.5", "0.25"}
    gain = result["gain_over_noisy"]["n2n"]["psnr"]["image"]["0.25"]  # paired over the same cases
    assert gain["n"] == result["cases"] and gain["ci95"][0] <= gain["mean"] <= gain["ci95"][1]
    summary = json.loads((out / "denoise.json").read_text())
    assert summary["noise_model"] == "image"  # the noise the n2n denoiser was trained on
    assert set(summary["levels"]) == {"1", "0.5", "0.25"}
    assert set(summary["levels"]["0.25"]["dice"]) == {"without", "with"}
    assert set(summary["gain_over_noisy"]) == {"n2c", "n2n", "nes"}
    assert (out / "report" / "dose.png").stat().st_size > 1000 and "dose.png" in (out / "report" / "report.html").read_text()
    assert "won back" in capsys.readouterr().out


@pytest.mark.slow
def test_denoise_writes_volumes_on_the_input_grid_with_a_manifest(denoisers, tmp_path: Path):
    import nibabel as nib

    from pipeline.data import LoadVolumed

    data = tmp_path / "inputs"
    write_phantom_dataset(data, cases=1, size=32, slices=8, seed=4, test_cases=1)
    from pipeline.dicom.ct_series import write_dicom_copies

    write_dicom_copies(data / "imagesTs", data / "dicomTs")
    out = tmp_path / "denoised"
    assert main(["denoise", "--input", str(data / "imagesTs"), str(data / "dicomTs"), "--denoiser", str(denoisers["n2n"]),
                 "--output", str(out), "--output-format", "both"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert [c["status"] for c in manifest["cases"]] == ["done", "done"]
    assert manifest["run"]["checkpoints"]["denoiser"]["sha256"]
    source = next((data / "imagesTs").glob("*.nii.gz"))
    written = nib.load(str(out / source.name.replace(".nii.gz", "_denoised.nii.gz")))
    original = nib.load(str(source))
    assert written.shape == original.shape and np.allclose(written.affine, original.affine)
    assert 1.0 < float(np.abs(written.get_fdata() - original.get_fdata()).mean()) < 100.0  # changed, and still the same CT
    dicom_case = next(c for c in manifest["cases"] if c["input"].endswith(tuple(p.name for p in (data / "dicomTs").iterdir())))
    series = out / f"{dicom_case['case']}_denoised"
    reread = LoadVolumed("image")({"image": str(series)})["image"]
    from_nifti = LoadVolumed("image")({"image": str(out / f"{dicom_case['case']}_denoised.nii.gz")})["image"]
    assert reread.shape == from_nifti.shape and np.allclose(reread.affine, from_nifti.affine, atol=1e-3)
    assert float((reread - from_nifti).abs().max()) <= 0.51  # the DICOM stores the same HU, rounded
    assert main(["denoise", "--input", str(data / "imagesTs"), "--denoiser", str(denoisers["n2n"]), "--output", str(out)]) == 0
    assert json.loads((out / "manifest.json").read_text())["cases"][0]["status"] == "skipped"  # a re-run keeps what is done


@pytest.mark.slow
def test_a_denoiser_run_resumes(denoisers, tmp_path: Path):
    run = tmp_path / "n2n"
    args = ["train-denoiser", "--dataset", str(denoisers["data"]), "--mode", "nes", "--output", str(run), *TRAIN, "--nes-rounds", "2"]
    assert main([*args, "--epochs", "1"]) == 0
    assert main([*args, "--epochs", "2", "--resume"]) == 0
    epochs = [r["epoch"] for r in json.loads((run / "metrics.json").read_text())["epochs"]]
    assert epochs == [1, 2] and load_checkpoint(run / "checkpoints" / "last.pt")["meta"]["epoch"] == 2
