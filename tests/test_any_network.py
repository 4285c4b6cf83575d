"""Any MONAI network as the utility, swapped in by a config override: trained, explained, evaluated."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import pytest

from pipeline.networks.checkpoints import load_network_from_checkpoint
from pipeline.cli import main
from pipeline.phantom import write_phantom_dataset

pytestmark = pytest.mark.slow
SPLIT = ["--val_fraction", "0.34", "--test_fraction", "0.2"]
NETWORKS = {
    "SegResNet": {"target": "monai.networks.nets.SegResNet",
                  "args": {"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "init_filters": 8}},
    "BasicUNet": {"target": "monai.networks.nets.BasicUNet",
                  "args": {"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "features": [8, 8, 16, 32, 64, 8]}},
    "AttentionUnet": {"target": "monai.networks.nets.AttentionUnet",
                      "args": {"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "channels": [8, 16, 32], "strides": [2, 2]}},
}


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("any_network") / "phantom"
    write_phantom_dataset(data, cases=6, size=32, slices=10, seed=4, test_cases=1)
    return data


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_a_monai_network_as_the_utility_trains_explains_and_evaluates(name: str, phantom: Path, tmp_path: Path) -> None:
    config = NETWORKS[name]
    assert main(["train-utility", "--dataset", str(phantom), "--output", str(tmp_path / "utility"), *SPLIT,
                 "--network_config", repr(config), "--spatial_size", "32", "--batch_size", "4", "--epochs", "1",
                 "--device", "cpu"]) == 0
    utility = tmp_path / "utility" / "checkpoints" / "best.pt"
    network, meta = load_network_from_checkpoint(utility)
    assert type(network).__name__ == name and meta["preset"] == name and meta["network_config"]["target"] == config["target"]
    assert main(["train-noise", "--dataset", str(phantom), "--utility", str(utility), "--output", str(tmp_path / "noise"), *SPLIT,
                 "--noise_preset", "small", "--batch_size", "4", "--epochs", "1", "--device", "cpu"]) == 0
    noise = tmp_path / "noise" / "checkpoints" / "best.pt"
    assert main(["explain", "--input", str(phantom / "imagesTs"), "--output", str(tmp_path / "maps"), "--noise", str(noise),
                 "--utility", str(utility), "--device", "cpu"]) == 0
    source = nib.load(str(phantom / "imagesTs" / "pancreas_006.nii.gz"))
    written = nib.load(str(tmp_path / "maps" / "pancreas_006_importance.nii.gz"))
    assert written.shape == source.shape and (abs(written.affine - source.affine) < 1e-4).all()
    assert main(["evaluate", "--dataset", str(phantom), "--utility", str(utility), "--noise", str(noise), "--output",
                 str(tmp_path / "evaluation"), *SPLIT, "--slices_per_case", "1", "--occlusion_stride", "8", "--smoothgrad_samples", "2",
                 "--bootstrap", "50", "--device", "cpu", "--sanity_epochs", "1", "--sanity_slices_per_case", "1",
                 "--baselines", "['occlusion', 'gradcam', 'segmentation', 'random']"]) == 0
    result = json.loads((tmp_path / "evaluation" / "evaluation.json").read_text())
    assert {"gradcam", "occlusion", "segmentation", "random"} <= set(result["methods"])
    assert result["settings"]["gradcam_layer"] and result["settings"]["sanity_decoder"]
    assert set(result["sanity"]) >= {"gradcam", "occlusion"}
