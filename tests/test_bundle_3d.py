"""3D: a volumetric utility trained on random patches and validated by sliding window (configs/train_3d.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipeline.bundle import run_bundle
from pipeline.networks.checkpoints import load_network_from_checkpoint
from pipeline.data import build_patch_dataset, build_volume_transforms, load_datalist
from pipeline.errors import ConfigError
from pipeline.phantom import write_phantom_dataset

pytestmark = pytest.mark.slow
ROI = [32, 32, 8]
TINY_3D = {"preset": "small", "roi_size": ROI, "samples_per_volume": 2, "batch_size": 2, "device": "cpu",
           "val_fraction": 0.34, "test_fraction": 0.0, "epochs": 1}


@pytest.fixture(scope="module")
def volumes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("volumes3d") / "phantom"
    write_phantom_dataset(data, cases=5, size=32, slices=12, seed=4, test_cases=1)
    return data


def test_patches_are_3d_of_the_roi_and_centred_on_the_label_when_asked(volumes: Path) -> None:
    entries = load_datalist(volumes)[:2]
    dataset = build_patch_dataset(entries, build_volume_transforms(), ROI, samples_per_volume=3, pos=1.0, neg=0.0,
                                  progress=False)
    patches = dataset[0]
    assert len(dataset) == 2 and len(patches) == 3
    for patch in patches:
        assert tuple(patch["image"].shape) == (1, *ROI) and tuple(patch["label"].shape) == (1, *ROI)
        assert float(patch["label"].sum()) > 0  # pos only: every patch holds pancreas
    unlabelled = build_patch_dataset(entries, build_volume_transforms(), ROI, 2,
                                     use_labels=False, progress=False)
    assert all("label" not in p and tuple(p["image"].shape) == (1, *ROI) for p in unlabelled[1])
    with pytest.raises(ConfigError, match="roi_size is a 3D patch size"):
        build_patch_dataset(entries, build_volume_transforms(), [32, 32], progress=False)


@pytest.fixture(scope="module")
def utility_3d(volumes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("u3d") / "run"
    run_bundle("train_utility", {**TINY_3D, "dataset_dir": str(volumes), "output_dir": str(run)}, overlays=["train_3d"])
    return run


def test_a_3d_utility_trains_on_patches_and_validates_whole_volumes(utility_3d: Path) -> None:
    checkpoint = utility_3d / "checkpoints" / "best.pt"
    network, meta = load_network_from_checkpoint(checkpoint, kind="utility")
    assert meta["spatial_dims"] == 3 and meta["roi_size"] == ROI and meta["network_config"]["args"]["spatial_dims"] == 3
    assert network(torch.zeros(1, 1, *ROI)).shape == (1, 1, *ROI)  # a 3D network
    record = json.loads((utility_3d / "metrics.json").read_text())["epochs"][0]
    validation = [e["case"] for e in json.loads((utility_3d / "datalist.json").read_text())["validation"]]
    assert sorted(record["val_dice_3d_per_case"]) == sorted(validation)  # whole validation volumes, by sliding window


def test_a_3d_training_step_leaves_the_frozen_utility_unchanged() -> None:
    from pipeline.networks import build_unet
    from pipeline.noise import UNoiseLoss, UNoiseModel

    torch.manual_seed(0)
    utility, noise = build_unet("small", spatial_dims=3), build_unet("small", spatial_dims=3)
    before = {k: v.clone() for k, v in utility.state_dict().items()}
    noise_before = {k: v.clone() for k, v in noise.state_dict().items()}
    model = UNoiseModel(noise, utility, min_scale=0.0, max_scale=0.0, baseline="blur", blur_sigma=1.5)
    optimizer = torch.optim.Adam(noise.parameters(), lr=0.01)
    image = torch.rand(2, 1, *ROI)
    outputs = model(image)
    assert outputs.shape == (2, 5, *ROI)
    loss = UNoiseLoss(noise_weight=0.06, target="prediction", tv_weight=0.1)(outputs)
    loss.backward()
    optimizer.step()
    assert all(torch.equal(before[k], v) for k, v in utility.state_dict().items())  # weights and BatchNorm statistics
    assert any(not torch.equal(noise_before[k], v) for k, v in noise.state_dict().items())


@pytest.fixture(scope="module")
def noise_3d(volumes: Path, utility_3d: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("n3d") / "run"
    run_bundle("train_noise", {**{k: v for k, v in TINY_3D.items() if k not in ("preset", "roi_size")}, "noise_preset": "small",
                               "dataset_dir": str(volumes), "utility_checkpoint": str(utility_3d / "checkpoints" / "best.pt"),
                               "output_dir": str(run)}, overlays=["train_noise_3d"])
    return run


def test_3d_noise_training_and_sliding_window_explain_keep_the_lps_input_grid(volumes: Path, utility_3d: Path, noise_3d: Path,
                                                                              tmp_path: Path) -> None:
    import nibabel as nib
    import numpy as np

    utility = utility_3d / "checkpoints" / "best.pt"
    noise = noise_3d / "checkpoints" / "best.pt"
    network, meta = load_network_from_checkpoint(noise, kind="noise")
    assert meta["spatial_dims"] == 3 and meta["roi_size"] == ROI  # the utility's patch size
    record = json.loads((noise_3d / "metrics.json").read_text())["epochs"][0]
    assert {"val_objective", "val_agreement", "val_mean_tolerance", "val_dice_perturbed"} <= set(record), record
    source = volumes / "imagesTr" / "pancreas_001.nii.gz"  # stored LPS, anisotropic
    assert "".join(nib.aff2axcodes(nib.load(source).affine)) == "LPS"
    run_bundle("inference", {"inputs": [str(source)], "output_dir": str(tmp_path / "maps"), "noise_checkpoint": str(noise),
                             "utility_checkpoint": str(utility), "device": "cpu"}, overlays=["inference_3d"])
    original = nib.load(source)
    for name in ("importance", "seg"):
        written = nib.load(tmp_path / "maps" / f"pancreas_001_{name}.nii.gz")
        assert written.shape == original.shape
        np.testing.assert_allclose(written.affine, original.affine, atol=1e-5)
    values = np.asarray(nib.load(tmp_path / "maps" / "pancreas_001_importance.nii.gz").dataobj)
    assert values.min() >= 0.0 and values.max() <= 1.0 and values.std() > 0
    from pipeline.cli import main

    explain = ["explain", "--input", str(source), "--noise", str(noise), "--utility", str(utility), "--device", "cpu"]
    assert main([*explain, "--spatial-dims", "3", "--output", str(tmp_path / "cli_maps")]) == 0  # the same through unoise
    assert (tmp_path / "cli_maps" / "pancreas_001_importance.nii.gz").is_file()
    assert main([*explain, "--output", str(tmp_path / "maps_inferred")]) == 0  # no flag: the checkpoint says 3D
    assert (tmp_path / "maps_inferred" / "pancreas_001_importance.nii.gz").is_file()
    assert main([*explain, "--spatial-dims", "2", "--output", str(tmp_path / "maps_2d")]) == 2  # 3D model, 2D configs
    assert not (tmp_path / "maps_2d").exists()
    assert main(["train-noise", "--spatial-dims", "2", "--dataset", str(volumes), "--utility", str(utility), "--output",
                 str(tmp_path / "n2d"), "--device", "cpu", "--epochs", "1"]) == 2
    assert not (tmp_path / "n2d").exists()


def test_the_3d_evaluation_runs_the_protocols_over_volumes_of_interest(volumes: Path, utility_3d: Path, noise_3d: Path,
                                                                       tmp_path: Path, capsys) -> None:
    from pipeline.cli import main

    evaluate = ["evaluate", "--dataset", str(volumes), "--utility", str(utility_3d / "checkpoints" / "best.pt"), "--noise",
                str(noise_3d / "checkpoints" / "best.pt"), "--val_fraction", "0.34", "--test_fraction", "0.2", "--bootstrap", "50",
                "--device", "cpu"]
    assert main([*evaluate, "--output", str(tmp_path / "refused"), "--volume-protocol", "slab"]) == 2
    assert "volume_protocol must be one of ('whole', 'roi')" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()
    assert main([*evaluate, "--output", str(tmp_path / "evaluation"), "--volume-protocol", "roi", "--sanity", "false",
                 "--occlusion_window", "9", "--cost-occlusion-strides", "[8, 4]",
                 "--occlusion_stride", "8", "--baselines",
                 "['occlusion', 'gradcam', 'saliency', 'segmentation', 'prediction_logits', 'random', 'oracle']"]) == 0
    result = json.loads((tmp_path / "evaluation" / "evaluation.json").read_text())
    assert {"unoise_small_replace", "occlusion", "gradcam", "saliency", "segmentation", "random", "oracle"} <= set(result["methods"])
    assert result["methods"]["occlusion"]["windows_per_map"] == 4 * 4 * 1  # a 9-voxel cube every 8 voxels of 32 x 32 x 8
    assert result["settings"]["gradcam_layer"]  # found in the 3D module tree
    assert result["protocol"]["unit"].startswith("3D") and result["slices"] == len(result["cases"]) >= 1
    labelled = {name: result["methods"][name]["visibility_auc_label"] for name in ("unoise_small_replace", "random", "oracle")}
    assert labelled["oracle"] >= labelled["random"], labelled  # against the label every volume counts: the label's own map first
    assert result["methods"]["oracle"]["ring_over_chance"] > 1.0  # the label's own region, in mm along every axis
    assert (tmp_path / "evaluation" / "report" / "report.html").is_file()
    saved = torch.load(tmp_path / "evaluation" / "maps.pt", weights_only=True)
    assert saved["image"].ndim == 4 and saved["maps"]["random"].ndim == 4  # the report's axial slices
    planes = saved["orthogonal"]  # the report's axial, coronal and sagittal planes through the pancreas
    assert planes["planes"] == ["axial", "coronal", "sagittal"]
    assert [tuple(p.shape) for p in planes["maps"]["random"][0]] == [(32, 32), (32, 8), (32, 8)]
    assert (tmp_path / "evaluation" / "report" / "planes.png").is_file()

    volumes_record = result["volumes"]  # every whole test volume by sliding window: the utility's dice and the cost
    from pipeline.evaluation.settings import load_split

    test_cases = [e["case"] for e in load_split(str(volumes), "training", 0.34, 0.2, 0, "test", False)["test"]]
    assert [c["case"] for c in volumes_record["cases"]] == test_cases and set(result["cases"]) <= set(test_cases)
    for case in volumes_record["cases"]:
        assert case["shape"] == [32, 32, 12] and case["windows"] == 2  # z: 12 voxels in windows of 8, step 6
    cost = volumes_record["methods"]
    assert {"utility_pass", "unoise_small_replace", "gradcam", "occlusion_stride8", "occlusion_stride4"} == set(cost)
    assert cost["occlusion_stride8"]["utility_forwards_per_volume"] == 2 * (16 + 1)  # 4 x 4 x 1 cubes per window
    assert cost["occlusion_stride4"]["utility_forwards_per_volume"] == 2 * (7 * 7 + 1)  # 9-voxel cubes every 4 of 32
    assert all(m["ms_per_volume"] > 0 for m in cost.values())
    html = (tmp_path / "evaluation" / "report" / "report.html").read_text()
    assert "Whole test volumes" in html and "A whole-volume U-Noise map is" in html  # the Grad-CAM verdict


def test_the_3d_whole_volume_protocol_hides_voxels_over_every_volume_and_runs_the_sanity_check(
        volumes: Path, utility_3d: Path, noise_3d: Path, tmp_path: Path) -> None:
    from pipeline.cli import main

    out = tmp_path / "whole"
    assert main(["evaluate", "--dataset", str(volumes), "--utility", str(utility_3d / "checkpoints" / "best.pt"), "--noise",
                 str(noise_3d / "checkpoints" / "best.pt"), "--val-fraction", "0.34", "--test-fraction", "0.2", "--bootstrap", "50",
                 "--device", "cpu", "--output", str(out), "--occlusion-window", "9", "--occlusion-stride", "8",
                 "--infills", "['blur', 'mean']", "--sanity-epochs", "1", "--volume-cost", "false",
                 "--baselines", "['occlusion', 'gradcam', 'segmentation', 'random']"]) == 0
    result = json.loads((out / "evaluation.json").read_text())
    assert result["protocol"]["volume_protocol"] == "whole" and result["protocol"]["unit"].startswith("3D whole volumes")
    assert "gradcam" not in result["methods"]  # per window: left to the roi protocol
    assert {"unoise_small_replace", "occlusion", "occlusion_mean", "occlusion_blur:8", "segmentation", "random"} == set(result["methods"])
    # a 9-voxel cube every 8 voxels over the whole 32 x 32 x 12 volume (not a 32 x 32 x 8 volume of interest)
    assert result["methods"]["occlusion"]["windows_per_map"] == 4 * 4 * 2
    assert result["slices"] == len(result["cases"])  # one whole volume per case
    assert set(result["methods"]["random"]["infills"]) == {"blur", "mean", "blur:8"}  # road is 2D-only: held out no more
    sanity = result["sanity_detail"]  # in 3D, U-Noise retrained with train_noise_3d.json against each randomised utility
    assert {"unoise_small_replace", "segmentation", "random", "occlusion"} == set(sanity)
    assert sanity["random"]["all"]["abs_rho"] < 0.3  # two independent random maps: no rank agreement
    retrained = out / "sanity" / "all" / "unoise_small_replace" / "checkpoints" / "last.pt"
    assert load_network_from_checkpoint(retrained, kind="noise")[1]["spatial_dims"] == 3
    saved = torch.load(out / "maps.pt", weights_only=True)  # the report's slices go through each pancreas
    assert saved["image"].shape[-2:] == (32, 32) and float(saved["label"].flatten(1).sum(1).min()) > 0
