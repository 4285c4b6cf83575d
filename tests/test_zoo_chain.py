"""A model-zoo bundle explained as its own inference.json runs it: its preprocessing (orientation, resampling,
window or normalisation), its inferer and its inversion back to the input grid.

The bundles are built here as model-zoo CT bundles are written (device hard-coded to cuda, a CheckpointLoader,
Invertd + argmax + SaveImaged postprocessing) and trained a few steps with plain MONAI and torch, outside the
project's training code. The segmentation ``explain`` writes must equal what ``monai.bundle run`` of the bundle's
``configs/inference.json`` writes for the same volume (dice >= 0.99, same grid)."""

from __future__ import annotations

import json
from pathlib import Path

import monai
import nibabel as nib
import numpy as np
import pytest
import torch

from pipeline.cli import main
from pipeline.phantom import write_phantom_dataset

pytestmark = pytest.mark.slow
SPLIT = ["--val-fraction", "0.34", "--test-fraction", "0.2"]
PIXDIM = {3: [14.0, 14.0, 4.5], 2: [14.0, 14.0, -1.0]}  # coarser than the phantoms' ~11-14 mm x 2.5-5 mm
WINDOW = {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -57, "a_max": 164, "b_min": 0.0, "b_max": 1.0,
          "clip": True}
NORMALISE = {"_target_": "NormalizeIntensityd", "keys": "image"}
INFERER = {3: {"_target_": "SlidingWindowInferer", "roi_size": [16, 16, 8], "sw_batch_size": 2, "overlap": 0.5},
           2: {"_target_": "SliceInferer", "roi_size": [16, 16], "sw_batch_size": 4, "overlap": 0.25, "spatial_dim": 2}}


def write_chain_bundle(root: Path, data: Path, dims: int, intensity: dict) -> Path:
    """A model-zoo-layout CT bundle: 2-class softmax UNet, RAS, Spacingd, ``intensity``, its inferer, inversion."""
    network_def = {"_target_": "UNet", "spatial_dims": dims, "in_channels": 1, "out_channels": 2, "channels": [8, 16, 32],
                   "strides": [2, 2], "num_res_units": 1}
    preprocessing = [{"_target_": "LoadImaged", "keys": "image"}, {"_target_": "EnsureChannelFirstd", "keys": "image"},
                     {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
                     {"_target_": "Spacingd", "keys": "image", "pixdim": PIXDIM[dims], "mode": "bilinear"}, intensity,
                     {"_target_": "EnsureTyped", "keys": "image"}]
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    shape = INFERER[dims]["roi_size"]
    (root / "configs" / "metadata.json").write_text(json.dumps({
        "name": f"chain_{dims}d", "version": "0.1.0",
        "network_data_format": {"inputs": {"image": {"type": "image", "format": "hounsfield", "num_channels": 1,
                                                     "spatial_shape": shape}},
                                "outputs": {"pred": {"type": "image", "num_channels": 2,
                                                     "channel_def": {"0": "background", "1": "pancreas"}}}}}))
    (root / "configs" / "inference.json").write_text(json.dumps({
        "imports": ["$import glob", "$import torch"], "bundle_root": ".", "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "/workspace/data", "device": "$torch.device('cuda')",
        "network_def": network_def, "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": preprocessing},
        "datalist": "$[{'image': f} for f in sorted(glob.glob(@dataset_dir + '/*.nii.gz'))]",
        "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False, "num_workers": 0},
        "inferer": INFERER[dims],
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
             "nearest_interp": False, "to_tensor": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg",
             "output_dtype": "$torch.uint8", "resample": False, "separate_folder": False, "print_log": False}]},
        "handlers": [{"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
                      "load_dict": {"model": "@network"}, "map_location": "@device"}],
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                      "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing",
                      "val_handlers": "@handlers", "amp": False},
        "initialize": ["$monai.utils.set_determinism(seed=0)"], "run": ["$@evaluator.run()"]}))
    torch.save(_trained(network_def, data, dims, intensity), root / "models" / "model.pt")
    return root


def _trained(network_def: dict, data: Path, dims: int, intensity: dict) -> dict:
    """Adam steps on the training cases, preprocessed with plain MONAI transforms as the bundle's chain does."""
    from monai.bundle import ConfigParser
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd, Spacingd

    torch.manual_seed(0)
    network = ConfigParser({"net": network_def}).get_parsed_content("net")
    chain = Compose([LoadImaged(["image", "label"]), EnsureChannelFirstd(["image", "label"]),
                     Orientationd(["image", "label"], "RAS"),
                     Spacingd(["image", "label"], PIXDIM[dims], mode=("bilinear", "nearest")),
                     ConfigParser({"t": intensity}).get_parsed_content("t")])
    files = sorted((data / "imagesTr").glob("*.nii.gz"))
    volumes = [chain({"image": str(f), "label": str(data / "labelsTr" / f.name)}) for f in files]
    optimizer = torch.optim.Adam(network.parameters(), lr=0.01)
    generator = torch.Generator().manual_seed(0)
    size = [16, 16, 8] if dims == 3 else [16, 16, 1]
    for step in range(40):
        volume = volumes[step % len(volumes)]
        image, label = volume["image"].as_tensor()[None], (volume["label"].as_tensor()[None] > 0).long()
        if any(n < s for n, s in zip(image.shape[2:], size)):
            continue
        centre = torch.nonzero(label[0, 0])  # a patch around a pancreas voxel
        centre = centre[int(torch.randint(len(centre), (1,), generator=generator))] if len(centre) else torch.zeros(3, dtype=torch.long)
        start = [int(min(max(0, c - s // 2), n - s)) for c, s, n in zip(centre.tolist(), size, image.shape[2:])]
        window = (..., *[slice(a, a + s) for a, s in zip(start, size)])
        image, label = image[window], label[window]
        if dims == 2:
            image, label = image[..., 0], label[..., 0]
        loss = torch.nn.functional.cross_entropy(network(image.float()), label[:, 0], weight=torch.tensor([1.0, 4.0]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return network.state_dict()


@pytest.fixture(scope="module")
def chain_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("chain")
    data = root / "phantom"
    write_phantom_dataset(data, cases=5, size=32, slices=16, seed=11, test_cases=2)
    images = root / "images_only"
    images.mkdir()
    for path in sorted((data / "imagesTr").glob("*.nii.gz")):
        (images / path.name).write_bytes(path.read_bytes())
    return {"root": root, "data": data, "images": images}


def _bundle_own_segmentation(bundle: Path, inputs: Path, out: Path) -> None:
    """``python -m monai.bundle run`` of the bundle's inference.json, on the CPU (its device is cuda)."""
    monai.bundle.run(config_file=str(bundle / "configs" / "inference.json"), meta_file=str(bundle / "configs" / "metadata.json"),
                     bundle_root=str(bundle), dataset_dir=str(inputs), output_dir=str(out), device="$torch.device('cpu')",
                     logging_file=False)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum()))


@pytest.mark.parametrize("dims, intensity", [(3, WINDOW), (2, NORMALISE)], ids=["3d-spacing-window-sliding", "2d-slices-normalise"])
def test_explain_writes_the_segmentation_the_bundle_itself_writes(chain_data: dict[str, Path], dims: int, intensity: dict) -> None:
    root, data = chain_data["root"], chain_data["data"]
    bundle = write_chain_bundle(root / f"bundle_{dims}d", data, dims, intensity)
    own = root / f"own_{dims}d"
    _bundle_own_segmentation(bundle, data / "imagesTs", own)
    # train-noise on images only, explain, no dimensional flag: the bundle's metadata says 2D or 3D
    assert main(["train-noise", "--dataset", str(chain_data["images"]), "--utility-bundle", str(bundle), *SPLIT,
                 "--noise-preset", "small", "--batch-size", "2", "--epochs", "1",
                 *(["--samples-per-volume", "2"] if dims == 3 else []), "--output", str(root / f"noise_{dims}d"), "--device", "cpu"]) == 0
    noise = root / f"noise_{dims}d" / "checkpoints" / "best.pt"
    meta = torch.load(noise, weights_only=True)["meta"]
    assert meta["spatial_dims"] == dims and meta["window"] == ([-57.0, 164.0] if intensity is WINDOW else None)
    maps = root / f"maps_{dims}d"
    assert main(["explain", "--input", str(data / "imagesTs"), "--output", str(maps), "--noise", str(noise),
                 "--utility-bundle", str(bundle), "--device", "cpu"]) == 0
    for source_file in sorted((data / "imagesTs").glob("*.nii.gz")):
        case = source_file.name.removesuffix(".nii.gz")
        source, theirs = nib.load(str(source_file)), nib.load(str(own / f"{case}_seg.nii.gz"))
        ours, importance = nib.load(str(maps / f"{case}_seg.nii.gz")), nib.load(str(maps / f"{case}_importance.nii.gz"))
        for written in (theirs, ours, importance):  # every map on the input grid
            assert written.shape[:3] == source.shape and np.allclose(written.affine, source.affine, atol=1e-4)
        theirs_mask, ours_mask = np.asarray(theirs.dataobj).reshape(source.shape) > 0, np.asarray(ours.dataobj) > 0
        assert theirs_mask.sum() > 20, "the bundle's own model segments something"
        assert _dice(ours_mask, theirs_mask) >= 0.99, (case, _dice(ours_mask, theirs_mask), ours_mask.sum(), theirs_mask.sum())
        assert np.ptp(np.asarray(importance.dataobj)) > 0
    # evaluate on the labelled folder, in the bundle's space, no split (a model trained elsewhere: every labelled case)
    assert main(["evaluate", "--dataset", str(data), "--utility-bundle", str(bundle), "--noise", str(noise), "--output",
                 str(root / f"evaluation_{dims}d"), "--device", "cpu", "--bootstrap", "50", "--occlusion-stride", "8",
                 "--slices-per-case", "1", "--sanity", "false",  # the sanity check of a bundle: tests/test_zoo_bundle.py
                 "--infills", "['blur']", "--held-out-infills", "[]",
                 *(["--occlusion-window", "9", "--volume-cost", "false"] if dims == 3 else []),
                 "--baselines", "['occlusion', 'segmentation', 'random']"]) == 0
    result = json.loads((root / f"evaluation_{dims}d" / "evaluation.json").read_text())
    assert result["protocol"]["split"] == "all" and {"occlusion", "segmentation", "random"} <= set(result["methods"])


def test_a_bundle_preprocessing_that_fails_on_a_case_is_named_in_one_line(chain_data: dict[str, Path], tmp_path: Path, capsys) -> None:
    """The bundle's own transforms refusing an input: one line naming the bundle, the file, the transform and the
    cause; a bundle whose preprocessing cannot be built is refused before anything is written."""
    from pipeline.networks.zoo_chain import BundleImaged

    data = chain_data["data"]
    bundle = write_chain_bundle(tmp_path / "bundle", data, 3, WINDOW)
    config_file = bundle / "configs" / "inference.json"
    config = json.loads(config_file.read_text())
    config["preprocessing"]["transforms"].insert(4, {"_target_": "CropForegroundd", "keys": "image", "source_key": "mask"})
    config_file.write_text(json.dumps(config))
    chain = BundleImaged(bundle)
    with pytest.raises(Exception, match=r"bundle: its preprocessing failed on .*pancreas_005.nii.gz: CropForegroundd raised KeyError: 'mask'\.$"):
        from pipeline.data import LoadVolumed
        chain(LoadVolumed("image")({"image": str(data / "imagesTs" / "pancreas_005.nii.gz")}))
    config["preprocessing"]["transforms"][4] = {"_target_": "NoSuchTransformd", "keys": "image"}
    config_file.write_text(json.dumps(config))
    # (train-noise: it needs no noise checkpoint, so this test stands without the one above)
    assert main(["train-noise", "--dataset", str(chain_data["images"]), "--utility-bundle", str(bundle), *SPLIT,
                 "--output", str(tmp_path / "noise"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "preprocessing cannot be built" in err and str(config_file) in err and "Traceback" not in err
    assert not (tmp_path / "noise").exists()
