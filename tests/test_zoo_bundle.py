"""A model-zoo-layout bundle as the utility: its network_def, weights, classes and window, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from pipeline.bundle import run_bundle
from pipeline.cli import main
from pipeline.data import build_slice_dataset, load_datalist
from pipeline.errors import ConfigError
from pipeline.phantom import write_phantom_dataset
from pipeline.networks.zoo import load_bundle_utility

pytestmark = pytest.mark.slow
SPLIT = ["--val_fraction", "0.34", "--test_fraction", "0.2"]
NETWORK_DEF = {"_target_": "UNet", "spatial_dims": 2, "in_channels": 1, "out_channels": 3, "channels": [8, 16, 32],
               "strides": [2, 2], "num_res_units": 1}
NETWORK_DEF_3D = {**NETWORK_DEF, "spatial_dims": 3}


def write_bundle(root: Path, data: Path | None, spatial_shape: list[int] = (32, 32), weights: bool = True,
                 network_def: dict = NETWORK_DEF, inferer: dict | None = None) -> Path:
    """configs/metadata.json, configs/inference.json (3-class MONAI UNet, hard-coded cuda), models/model.pt
    (trained a few steps on ``data``'s slices; without ``data``, the network's seeded initialisation)."""
    (root / "configs").mkdir(parents=True)
    (root / "configs" / "metadata.json").write_text(json.dumps({
        "name": "tiny_zoo", "version": "0.1.0",
        "network_data_format": {"inputs": {"image": {"type": "image", "num_channels": 1, "spatial_shape": list(spatial_shape)}},
                                "outputs": {"pred": {"type": "image", "num_channels": 3,
                                                     "channel_def": {"0": "background", "1": "pancreas", "2": "body"}}}}}))
    (root / "configs" / "inference.json").write_text(json.dumps({
        "imports": ["$import torch"], "bundle_root": ".", "device": "$torch.device('cuda:0')",
        "network_def": network_def, "network": "$@network_def.to(@device)", **({"inferer": inferer} if inferer else {}),
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"}, {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -87, "a_max": 199, "b_min": 0.0, "b_max": 1.0,
             "clip": True}]}}))
    if weights:
        (root / "models").mkdir()
        torch.save(_trained_unet(data) if data else _initial_unet(network_def), root / "models" / "model.pt")
    return root


def _initial_unet(network_def: dict) -> dict:
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    return UNet(**{k: v for k, v in network_def.items() if k != "_target_"}).state_dict()


def _trained_unet(data: Path) -> dict:
    """A few Adam steps of a 3-class UNet on phantom slices: background, pancreas, the rest of the body."""
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    args = {k: v for k, v in NETWORK_DEF.items() if k != "_target_"}
    network = UNet(**args)
    slices = build_slice_dataset(load_datalist(data), window="pancreas", spatial_size=32, policy="mixed", other_fraction=0.5, progress=False)
    loader = torch.utils.data.DataLoader(slices, batch_size=8, shuffle=True)
    optimizer = torch.optim.Adam(network.parameters(), lr=0.01)
    for _ in range(6):
        for batch in loader:
            target = (batch["body"] > 0.5).long()[:, 0] * 2
            target[batch["label"][:, 0] > 0.5] = 1
            loss = torch.nn.functional.cross_entropy(network(batch["image"]), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return network.state_dict()


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("zoo")
    data = root / "phantom"
    write_phantom_dataset(data, cases=6, size=32, slices=10, seed=5, test_cases=1)
    images = root / "images_only"  # the noise model trains label-free: a plain folder of CT volumes
    images.mkdir()
    for path in sorted((data / "imagesTr").glob("*.nii.gz")):
        (images / path.name).write_bytes(path.read_bytes())
    return {"data": data, "images": images, "bundle": write_bundle(root / "tiny_zoo", data), "root": root}


def test_the_bundle_builds_on_the_cpu_with_its_weights_class_and_window(zoo: dict[str, Path]) -> None:
    utility, meta = load_bundle_utility(zoo["bundle"], "cpu")
    assert meta["preset"] == "bundle:tiny_zoo" and meta["target_channel"] == 1 and meta["window"] == [-87.0, 199.0]
    saved = torch.load(zoo["bundle"] / "models" / "model.pt", weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in utility.network.state_dict().items())
    image = torch.rand(2, 1, 32, 32)
    probability = torch.softmax(utility.network(image), 1)[:, 1:2]
    assert torch.allclose(torch.sigmoid(utility(image)), probability, atol=1e-5)  # the logit of the pancreas class
    assert load_bundle_utility(zoo["bundle"], "cpu", "body")[1]["target_channel"] == 2


def test_what_cannot_work_is_refused_naming_the_file(zoo: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"models: no model.pt; the bundle ships no weights"):
        load_bundle_utility(write_bundle(tmp_path / "empty", None, weights=False), "cpu")
    with pytest.raises(ConfigError, match=r"metadata.json: a 3D network \(spatial_shape \['16\*n', '16\*n', '16\*n'\]\) with no "
                                          r"numeric patch size"):
        load_bundle_utility(write_bundle(tmp_path / "volumetric", None, ["16*n"] * 3, False, NETWORK_DEF_3D), "cpu")
    with pytest.raises(ConfigError, match=r"metadata.json: no class 'liver' in channel_def"):
        load_bundle_utility(zoo["bundle"], "cpu", "liver")
    with pytest.raises(ConfigError, match=r"no configs/metadata.json"):
        load_bundle_utility(tmp_path, "cpu")


def test_train_noise_explain_and_evaluate_against_the_bundle(zoo: dict[str, Path]) -> None:
    root, data, bundle = zoo["root"], zoo["data"], str(zoo["bundle"])
    assert main(["train-noise", "--dataset", str(zoo["images"]), "--utility-bundle", bundle, "--output", str(root / "noise"), *SPLIT,
                 "--noise_preset", "small", "--spatial_size", "32", "--batch_size", "4", "--epochs", "1", "--device", "cpu"]) == 0
    noise = root / "noise" / "checkpoints" / "best.pt"
    meta = torch.load(noise, weights_only=True)["meta"]
    assert meta["utility_preset"] == "bundle:tiny_zoo" and meta["window"] == [-87.0, 199.0]
    assert meta["labels_used"] is False and meta["target"] == "prediction"
    record = json.loads((root / "noise" / "metrics.json").read_text())["epochs"][-1]
    assert {"val_agreement", "val_ring_ratio", "val_objective"} <= set(record) and "val_dice_clean" not in record, record
    assert main(["explain", "--input", str(data / "imagesTs"), "--output", str(root / "maps"), "--noise", str(noise),
                 "--utility-bundle", bundle, "--device", "cpu"]) == 0
    source = nib.load(str(data / "imagesTs" / "pancreas_006.nii.gz"))
    written = nib.load(str(root / "maps" / "pancreas_006_importance.nii.gz"))
    assert written.shape == source.shape and np.allclose(written.affine, source.affine, atol=1e-4)
    assert main(["evaluate", "--dataset", str(data), "--utility-bundle", bundle, "--noise", str(noise), "--output",
                 str(root / "evaluation"), *SPLIT, "--slices_per_case", "1", "--occlusion_stride", "8", "--bootstrap", "50",
                 "--device", "cpu", "--sanity_epochs", "1", "--sanity_slices_per_case", "1",
                 "--baselines", "['occlusion', 'gradcam', 'segmentation', 'random']"]) == 0
    result = json.loads((root / "evaluation" / "evaluation.json").read_text())
    assert result["settings"]["utility_bundle"] == bundle and result["settings"]["target_channel"] == 1
    assert {"occlusion", "gradcam", "segmentation", "random"} <= set(result["methods"]) and "gradcam" in result["sanity"]
    with pytest.raises(Exception, match="no utility"):
        main(["--traceback", "explain", "--input", str(data / "imagesTs"), "--output", str(root / "maps2"), "--noise", str(noise)])


def test_monai_bundle_run_trains_explains_and_evaluates_against_the_bundle(zoo: dict[str, Path]) -> None:
    run_bundle("train_noise", {"dataset_dir": str(zoo["images"]), "utility_bundle": str(zoo["bundle"]), "utility_checkpoint": None,
                               "output_dir": str(zoo["root"] / "noise_bundle_run"), "noise_preset": "small", "spatial_size": 32,
                               "batch_size": 4, "epochs": 1, "device": "cpu", "val_fraction": 0.34, "test_fraction": 0.2})
    assert torch.load(zoo["root"] / "noise_bundle_run" / "checkpoints" / "best.pt", weights_only=True)["meta"]["labels_used"] is False
    noise = str(zoo["root"] / "noise_bundle_run" / "checkpoints" / "best.pt")
    run_bundle("inference", {"inputs": [str(zoo["data"] / "imagesTs")], "output_dir": str(zoo["root"] / "maps_bundle_run"),
                             "noise_checkpoint": noise, "utility_bundle": str(zoo["bundle"]), "utility_checkpoint": None,
                             "device": "cpu"})
    source = nib.load(str(zoo["data"] / "imagesTs" / "pancreas_006.nii.gz"))
    written = nib.load(str(zoo["root"] / "maps_bundle_run" / "pancreas_006_importance.nii.gz"))
    assert written.shape == source.shape and np.allclose(written.affine, source.affine, atol=1e-4)
    run_bundle("evaluate", {"dataset_dir": str(zoo["data"]), "utility_bundle": str(zoo["bundle"]), "utility_checkpoint": None,
                            "noise_checkpoints": [noise], "output_dir": str(zoo["root"] / "eval_bundle_run"), "val_fraction": 0.34,
                            "test_fraction": 0.2, "slices_per_case": 1, "occlusion_stride": 8, "bootstrap": 50, "device": "cpu",
                            "sanity": False, "baselines": ["occlusion", "segmentation", "random"]})
    assert {"occlusion", "segmentation", "random"} <= set(json.loads((zoo["root"] / "eval_bundle_run" / "evaluation.json").read_text())["methods"])


def test_a_checkpoint_never_chooses_the_code_that_runs(tmp_path: Path, zoo: dict[str, Path]) -> None:
    from pipeline.networks.checkpoints import CheckpointError, load_network_from_checkpoint

    marker = tmp_path / "pwned"
    torch.save({"model": {}, "meta": {"kind": "utility", "network_config": {"target": "os.makedirs", "args": {"name": str(marker)}}}},
               tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"evil.pt: its network cannot be built .*'os.makedirs' is not a network of pipeline.networks"):
        load_network_from_checkpoint(tmp_path / "evil.pt", kind="utility")
    assert not marker.exists()
    utility, meta = load_bundle_utility(zoo["bundle"], "cpu")
    torch.save({"model": utility.state_dict(), "meta": meta}, tmp_path / "bundle_weights.pt")
    with pytest.raises(CheckpointError, match=r"bundle_weights.pt: holds weights of the bundle .* pass that bundle as --utility-bundle"):
        load_network_from_checkpoint(tmp_path / "bundle_weights.pt", kind="utility")
    from pipeline.networks.zoo import load_utility

    network, _ = load_utility(tmp_path / "bundle_weights.pt", "cpu", zoo["bundle"])
    assert all(torch.equal(a, b) for a, b in zip(network.state_dict().values(), utility.state_dict().values()))


def test_the_class_logit_is_exact_where_the_model_is_sure() -> None:
    from pipeline.networks.utility import TargetLogit

    class Identity(torch.nn.Module):
        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return image

    logits = torch.tensor([10.0, -8.0, 3.0]).view(1, 3, 1, 1).requires_grad_(True)
    value = TargetLogit(Identity(), 1)(logits)
    assert float(value.detach()) == pytest.approx(float(torch.logit(torch.softmax(logits.detach().double(), 1)[0, 1]).item()), abs=1e-4)
    value.sum().backward()
    assert float(logits.grad.abs().sum()) > 1.0  # no clamp: the gradient survives at p = 1.5e-8


def test_training_against_labels_without_labels_is_refused_naming_the_case(zoo: dict[str, Path], capsys) -> None:
    output = zoo["root"] / "refused_label_target"
    assert main(["train-noise", "--dataset", str(zoo["images"]), "--utility-bundle", str(zoo["bundle"]), "--output", str(output),
                 *SPLIT, "--target", "label", "--noise_preset", "small", "--spatial_size", "32", "--device", "cpu"]) == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert "pancreas_000.nii.gz: no label for this case" in message and "--target prediction" in message, message
    assert not output.exists()


def test_a_torchscript_utility_trains_explains_and_evaluates(zoo: dict[str, Path], capsys) -> None:
    from monai.networks.nets import UNet

    root, data = zoo["root"], zoo["data"]
    network = UNet(**{k: v for k, v in NETWORK_DEF.items() if k != "_target_"})
    network.load_state_dict(torch.load(zoo["bundle"] / "models" / "model.pt", weights_only=True))
    scripted = root / "tiny.ts"
    torch.jit.save(torch.jit.script(network.eval()), str(scripted))
    window = ["--window", "[-100, 240]", "--spatial_size", "32", "--device", "cpu"]  # not the default preset
    assert main(["train-noise", "--dataset", str(zoo["images"]), "--utility-torchscript", str(scripted), "--output",
                 str(root / "noise_ts"), *SPLIT, "--noise_preset", "small", "--batch_size", "4", "--epochs", "1", *window]) == 0
    noise = root / "noise_ts" / "checkpoints" / "best.pt"
    meta = torch.load(noise, weights_only=True)["meta"]
    assert meta["utility_preset"] == "torchscript:tiny" and meta["window"] == [-100, 240] and meta["labels_used"] is False
    assert main(["explain", "--input", str(data / "imagesTs"), "--output", str(root / "maps_ts"), "--noise", str(noise),
                 "--utility-torchscript", str(scripted), "--device", "cpu"]) == 0
    source = nib.load(str(data / "imagesTs" / "pancreas_006.nii.gz"))
    written = nib.load(str(root / "maps_ts" / "pancreas_006_importance.nii.gz"))
    assert written.shape == source.shape and np.allclose(written.affine, source.affine, atol=1e-4)
    common = ["evaluate", "--dataset", str(data), "--utility-torchscript", str(scripted), "--noise", str(noise), *SPLIT,
              "--slices_per_case", "1", "--occlusion_stride", "8", "--bootstrap", "50", "--device", "cpu"]
    assert main([*common, "--output", str(root / "eval_ts_refused")]) == 2  # default baselines hold gradcam, sanity on
    assert "a TorchScript utility has no Python module tree, which gradcam and the sanity check need" in capsys.readouterr().err
    assert not (root / "eval_ts_refused").exists()
    assert main([*common, "--output", str(root / "eval_ts"), "--sanity", "false",
                 "--baselines", "['occlusion', 'saliency', 'segmentation', 'random']"]) == 0
    result = json.loads((root / "eval_ts" / "evaluation.json").read_text())
    assert {"occlusion", "saliency", "segmentation", "random"} <= set(result["methods"])
    assert result["settings"]["window"] == [-100, 240] and result["settings"]["spatial_size"] == 32  # the noise model's input
    assert main(["explain", "--input", str(data / "imagesTs"), "--output", str(root / "maps_x"), "--noise", str(noise),
                 "--utility-torchscript", str(noise), "--device", "cpu"]) == 2
    assert "not a TorchScript archive" in capsys.readouterr().err
    only_ts = write_bundle(root / "ts_only_bundle", None, weights=False)  # a bundle shipping models/model.ts alone
    (only_ts / "models").mkdir()
    (only_ts / "models" / "model.ts").write_bytes(scripted.read_bytes())
    utility, meta = load_bundle_utility(only_ts, "cpu")
    image = torch.rand(2, 1, 32, 32)
    assert meta["torchscript"].endswith("model.ts") and torch.allclose(utility(image), load_bundle_utility(zoo["bundle"], "cpu")[0](image), atol=1e-5)


def test_a_3d_bundle_is_explained_by_sliding_window_at_its_own_patch_size(zoo: dict[str, Path], capsys) -> None:
    root, data = zoo["root"], zoo["data"]
    bundle = write_bundle(root / "tiny_zoo_3d", None, [96, 96, 96], network_def=NETWORK_DEF_3D, inferer={
        "_target_": "SlidingWindowInferer", "roi_size": [32, 32, 8], "sw_batch_size": 1, "overlap": 0.5})
    utility, meta = load_bundle_utility(bundle, "cpu")
    assert (meta["spatial_dims"], meta["roi_size"]) == (3, [32, 32, 8])  # its inferer's roi_size before the metadata's shape
    assert utility(torch.rand(1, 1, 32, 32, 8)).shape == (1, 1, 32, 32, 8)
    train = ["train-noise", "--dataset", str(zoo["images"]), "--utility-bundle", str(bundle), *SPLIT, "--noise_preset", "small",
             "--batch_size", "2", "--epochs", "1", "--device", "cpu"]
    # forced into the 2D configs, a 3D network is refused naming the fix
    assert main([*train[:1], "--spatial-dims", "2", *train[1:], "--output", str(root / "noise_2d_for_3d")]) == 2
    assert "--spatial-dims 3" in capsys.readouterr().err and not (root / "noise_2d_for_3d").exists()
    # without the option the bundle's metadata chooses the 3D configs, for train-noise and (from the checkpoint) explain
    assert main([*train, "--samples_per_volume", "2", "--output", str(root / "noise_3d")]) == 0
    noise = root / "noise_3d" / "checkpoints" / "best.pt"
    noise_meta = torch.load(noise, weights_only=True)["meta"]
    assert (noise_meta["spatial_dims"], noise_meta["roi_size"], noise_meta["utility_preset"]) == (3, [32, 32, 8], "bundle:tiny_zoo")
    assert main(["explain", "--input", str(data / "imagesTs"), "--output", str(root / "maps_3d"),
                 "--noise", str(noise), "--utility-bundle", str(bundle), "--device", "cpu"]) == 0
    source = nib.load(str(data / "imagesTs" / "pancreas_006.nii.gz"))
    written = nib.load(str(root / "maps_3d" / "pancreas_006_importance.nii.gz"))
    assert written.shape == source.shape and np.allclose(written.affine, source.affine, atol=1e-4)


def test_the_readme_first_screen_commands_run_on_a_tiny_bundle(zoo: dict[str, Path], tmp_path: Path) -> None:
    """The "Explain your own segmentation model" block of the README, as written, with the tiny settings a test
    can afford appended (the placeholders become the tiny bundle, a folder of images and a labelled set)."""
    import re
    import shlex

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    block = readme.split("<!-- own-model", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    assert readme.index("<!-- own-model") < len("\n".join(readme.splitlines()[:80]))  # on the first screen
    places = {"my_ct/": str(zoo["images"]), "my_labelled_ct/": str(zoo["data"]), "my_bundle/": str(zoo["bundle"]),
              "runs/": f"{tmp_path}/"}
    tiny = {"train-noise": [*SPLIT, "--noise-preset", "small", "--spatial-size", "32", "--batch-size", "4", "--epochs", "1",
                            "--device", "cpu"],
            "explain": ["--device", "cpu"],
            "evaluate": ["--slices-per-case", "1", "--occlusion-stride", "8", "--bootstrap", "50", "--device", "cpu",
                         "--sanity-epochs", "1", "--sanity-slices-per-case", "1"]}  # no split: a foreign model, every case
    commands = [line for line in block.splitlines() if line.startswith("unoise ")]
    assert [shlex.split(line)[1] for line in commands] == ["train-noise", "explain", "evaluate"]
    for line in commands:
        for placeholder, path in places.items():
            line = re.sub(rf"(?<![\w/]){re.escape(placeholder)}", path + ("/" if not path.endswith("/") else ""), line)
        argv = shlex.split(line)[1:]
        assert main([*argv, *tiny[argv[0]]]) == 0, line
    maps = sorted(p.name for p in (tmp_path / "my_maps").iterdir())
    assert "manifest.json" in maps and any(name.endswith("_importance.nii.gz") for name in maps)
    result = json.loads((tmp_path / "my_eval" / "evaluation.json").read_text())
    labelled = len(list((zoo["data"] / "labelsTr").glob("*.nii.gz")))
    # every labelled case evaluated; the sanity check retrained on the images train-noise used (its checkpoint says)
    assert result["protocol"]["split"] == "all" and result["protocol"]["cases"] == labelled and "segmentation" in result["sanity"]


def test_our_window_and_size_given_with_a_bundle_are_named_as_ignored(caplog) -> None:
    from pipeline.networks.zoo_chain import warn_ignored

    with caplog.at_level("WARNING"):
        assert warn_ignored("my_bundle", {"window": [-100, 240], "spatial_size": None}) == ["window"]
        assert warn_ignored(None, {"window": [-100, 240], "spatial_size": 32}) == []
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "my_bundle: --window ignored: the bundle's own preprocessing" in said[0]


def test_the_dose_audit_runs_a_bundle_a_3d_bundle_and_a_torchscript_utility(zoo: dict[str, Path]) -> None:
    from monai.networks.nets import UNet

    root, data = zoo["root"], zoo["data"]
    network = UNet(**{k: v for k, v in NETWORK_DEF.items() if k != "_target_"})
    network.load_state_dict(torch.load(zoo["bundle"] / "models" / "model.pt", weights_only=True))
    scripted = root / "audit.ts"
    torch.jit.save(torch.jit.script(network.eval()), str(scripted))
    bundle_3d = write_bundle(root / "audit_zoo_3d", None, [96, 96, 96], network_def=NETWORK_DEF_3D, inferer={
        "_target_": "SlidingWindowInferer", "roi_size": [32, 32, 8], "sw_batch_size": 1, "overlap": 0.5})
    common = ["audit-dose", "--dataset", str(data), "--split", "all", "--max-cases", "2", "--doses", "[1, 0.25]",
              "--noise-models", "['image']", "--bootstrap", "50"]
    for name, utility in (("bundle", ["--utility-bundle", str(zoo["bundle"])]), ("bundle_3d", ["--utility-bundle", str(bundle_3d)]),
                          ("torchscript", ["--utility-torchscript", str(scripted), "--window", "[-100, 240]"])):
        out = root / f"audit_{name}"
        assert main([*common, *utility, "--output", str(out)]) == 0, name
        result = json.loads((out / "dose_audit.json").read_text())
        full, low = result["levels"]
        assert full["dice"]["without"]["full_dose"]["mean"] == pytest.approx(1.0), name
        assert 0.0 <= low["dice"]["without"]["full_dose"]["mean"] <= 1.0 and low["psnr"]["noisy"]["mean"] > 20.0, name
