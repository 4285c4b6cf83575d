"""Multi-channel cases: several co-registered volumes per case, stacked as the network's input channels."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.cli import main
from pipeline.phantom import write_phantom_dataset

pytestmark = pytest.mark.slow
TINY = ["--spatial_size", "32", "--batch_size", "4", "--device", "cpu", "--val_fraction", "0.34", "--test_fraction", "0.0",
        "--epochs", "1"]


def _second_phase(source: Path, target: Path, affine: np.ndarray | None = None) -> str:
    """A co-registered second 'phase': the same voxels brightened (contrast uptake), on the same grid unless told."""
    image = nib.load(source)
    data = np.asarray(image.dataobj).astype(np.int16) + 60
    target.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, image.affine if affine is None else affine), target)
    return str(target.relative_to(source.parent.parent))


@pytest.fixture(scope="module")
def two_phase(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("multichannel")
    write_phantom_dataset(root, cases=5, size=32, slices=12, seed=2, test_cases=1)
    training = []
    for label in sorted((root / "labelsTr").glob("*.nii.gz")):
        image = root / "imagesTr" / label.name
        training.append({"image": [f"imagesTr/{label.name}", _second_phase(image, root / "phase2Tr" / label.name)],
                         "label": f"labelsTr/{label.name}"})
    test = [{"image": [f"imagesTs/{p.name}", _second_phase(p, root / "phase2Ts" / p.name)]}
            for p in sorted((root / "imagesTs").glob("*.nii.gz"))]
    (root / "two_phase.json").write_text(json.dumps({"training": training, "test": test}))
    return root


def test_two_phases_train_explain_evaluate_and_keep_the_first_volumes_grid(two_phase: Path, tmp_path: Path, capsys) -> None:
    datalist = str(two_phase / "two_phase.json")
    assert main(["train-utility", "--dataset", datalist, "--output", str(tmp_path / "utility"), "--preset", "small",
                 "--in_channels", "2", *TINY]) == 0
    utility = tmp_path / "utility" / "checkpoints" / "best.pt"
    assert main(["train-noise", "--dataset", datalist, "--utility", str(utility), "--output", str(tmp_path / "noise"),
                 "--noise_preset", "small", *TINY]) == 0
    noise = tmp_path / "noise" / "checkpoints" / "best.pt"
    assert main(["explain", "--input", datalist, "--output", str(tmp_path / "maps"), "--noise", str(noise),
                 "--utility", str(utility), "--device", "cpu"]) == 0
    test = json.loads((two_phase / "two_phase.json").read_text())["test"][0]["image"][0]
    source, written = nib.load(two_phase / test), nib.load(tmp_path / "maps" / f"{Path(test).name.split('.')[0]}_importance.nii.gz")
    assert written.shape == source.shape and np.allclose(written.affine, source.affine, atol=1e-5)
    assert main(["evaluate", "--dataset", datalist, "--utility", str(utility), "--noise", str(noise), "--output",
                 str(tmp_path / "evaluation"), "--val_fraction", "0.34", "--test_fraction", "0.2", "--slices_per_case", "1",
                 "--occlusion_stride", "8", "--bootstrap", "50", "--device", "cpu", "--sanity_epochs", "1",
                 "--sanity_slices_per_case", "1", "--baselines", "['occlusion', 'gradcam', 'segmentation', 'random']"]) == 0
    result = json.loads((tmp_path / "evaluation" / "evaluation.json").read_text())
    assert {"occlusion", "gradcam", "segmentation", "random"} <= set(result["methods"]) and "gradcam" in result["sanity"]
    # one volume where the network takes two channels: refused naming the case
    assert main(["explain", "--input", str(two_phase / "imagesTs"), "--output", str(tmp_path / "maps1"), "--noise", str(noise),
                 "--utility", str(utility), "--device", "cpu"]) == 2
    assert "has 1 image(s) but the network takes 2 input channel(s)" in capsys.readouterr().err
    assert not (tmp_path / "maps1").exists()


def test_a_phase_off_the_first_volumes_grid_is_refused_naming_it(two_phase: Path, tmp_path: Path, capsys) -> None:
    content = json.loads((two_phase / "two_phase.json").read_text())
    label = two_phase / content["training"][0]["label"]
    shifted = nib.load(label).affine.copy()
    shifted[:3, 3] += 4.0  # 4 mm off
    content["training"][0]["image"][1] = _second_phase(two_phase / content["training"][0]["image"][0],
                                                       two_phase / "shifted" / label.name, shifted)
    (two_phase / "shifted.json").write_text(json.dumps(content))
    assert main(["train-utility", "--dataset", str(two_phase / "shifted.json"), "--output", str(tmp_path / "u"),
                 "--in_channels", "2", *TINY]) == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"shifted/{label.name}: channel 2 image geometry differs from the image's" in message, message
    assert main(["train-utility", "--dataset", str(two_phase), "--output", str(tmp_path / "u"), "--in_channels", "2", *TINY]) == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert "has 1 image(s) but the network takes 2 input channel(s)" in message, message
    assert not (tmp_path / "u").exists()
