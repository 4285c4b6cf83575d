"""The Probabilistic U-Net as a utility: its training step, and `train-utility --kind probabilistic` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine
from monai.engines.utils import IterationEvents

from pipeline.cli import main
from pipeline.engines import ProbabilisticStep, draw_rater
from pipeline.networks import ProbabilisticUNet, ProbabilisticUNetLoss, build_network
from pipeline.networks.checkpoints import load_checkpoint
from pipeline.phantom import write_phantom_dataset


def test_draw_rater_takes_one_whole_rater_per_image():
    label = torch.stack([torch.full((3, 4, 4), float(k)) for k in range(3)], dim=1)  # (B=3, R=3, 4, 4): rater k is all k
    torch.manual_seed(0)
    drawn = torch.cat([draw_rater(label) for _ in range(20)])  # (60, 1, 4, 4)
    assert drawn.shape == (60, 1, 4, 4)
    per_image = drawn.flatten(1)
    assert torch.equal(per_image.min(dim=1).values, per_image.max(dim=1).values)  # never a mix of raters
    assert set(per_image[:, 0].tolist()) == {0.0, 1.0, 2.0}  # every rater drawn at some point


def test_the_step_trains_the_network_and_reports_its_parts():
    torch.manual_seed(0)
    network = ProbabilisticUNet(2, 1, 1, (4, 8), latent_dim=2)
    loss = ProbabilisticUNetLoss()
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    engine = Engine(ProbabilisticStep(loss))
    engine.register_events(*IterationEvents)  # as MONAI's trainers register them
    engine.network, engine.optimizer, engine.amp, engine.scaler = network, optimizer, False, None
    engine.optim_set_to_none, engine.non_blocking, engine.state.device = True, False, torch.device("cpu")
    engine.prepare_batch = lambda batch, device, non_blocking: (batch["image"], batch["label"])
    for encoder in (network.prior, network.posterior):  # both start at N(0, I): spread them so the KL term is not 0
        torch.nn.init.normal_(encoder.to_moments.weight, std=0.5)
    before = [p.detach().clone() for p in network.head.parameters()]
    batch = {"image": torch.rand(2, 1, 8, 8), "label": (torch.rand(2, 4, 8, 8) > 0.5).float()}  # 4 raters
    engine.run([batch], max_epochs=1)
    output = engine.state.output
    assert output["label"].shape == (2, 1, 8, 8)
    assert float(output["kl"]) > 0.0
    assert torch.isclose(output["loss"], output["reconstruction"] + loss.last_beta * output["kl"])
    assert any(not torch.equal(b, a) for b, a in zip(before, network.head.parameters()))
    assert loss.iteration == 1


def test_the_step_refuses_another_loss():
    with pytest.raises(TypeError, match="ProbabilisticUNetLoss"):
        ProbabilisticStep(torch.nn.BCEWithLogitsLoss())


@pytest.mark.slow
def test_train_utility_kind_probabilistic_on_a_multi_rater_set(tmp_path: Path, capsys):
    data = tmp_path / "raters"
    write_phantom_dataset(data, cases=5, size=32, slices=12, seed=2, raters=3)
    run = tmp_path / "prob"
    args = ["train-utility", "--kind", "probabilistic", "--dataset", str(data), "--output", str(run), "--epochs", "1",
            "--preset", "small", "--spatial-size", "32", "--batch-size", "4", "--device", "cpu", "--val-fraction", "0.34",
            "--test-fraction", "0", "--latent-dim", "3"]
    assert main(args) == 0
    assert "best val_dice_3d" in capsys.readouterr().out
    content = load_checkpoint(run / "checkpoints" / "best.pt")
    record = content["meta"]["network_config"]
    assert record["target"] == "pipeline.networks.ProbabilisticUNet" and record["args"]["latent_dim"] == 3
    network = build_network(record)
    network.load_state_dict(content["model"])
    assert network(torch.rand(1, 1, 32, 32)).shape == (1, 1, 32, 32)
    config = json.loads((run / "config.json").read_text())
    assert config["rater_mode"] == "all"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert "val_samples" in events.Tags()["images"]  # the image and 4 of its samples
    assert {"train_kl", "train_reconstruction"} <= set(events.Tags()["scalars"])
    assert main([*args[:-2], "--latent-dim", "3", "--epochs", "2", "--resume"]) == 0  # resumes from last.pt
    metrics = json.loads((run / "metrics.json").read_text())
    assert [r["epoch"] for r in metrics["epochs"]] == [1, 2]


def test_kind_probabilistic_refuses_3d(tmp_path: Path, capsys):
    code = main(["train-utility", "--kind", "probabilistic", "--spatial-dims", "3", "--dataset", str(tmp_path),
                 "--output", str(tmp_path / "run")])
    assert code == 2
    assert "--kind probabilistic trains on 2D slices" in capsys.readouterr().err


TINY = {"preset": "small", "spatial_size": 32, "batch_size": 4, "device": "cpu", "val_fraction": 0.34, "test_fraction": 0.34,
        "other_fraction": 0.5, "epochs": 1}


@pytest.fixture(scope="module")
def prob_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 6-case, 3-rater phantom set (2 test cases with their own test images too), a 1-epoch deterministic utility
    and a 1-epoch Probabilistic U-Net on it."""
    from pipeline.bundle import run_bundle

    root = tmp_path_factory.mktemp("prob_run")
    data = root / "raters"
    write_phantom_dataset(data, cases=6, size=32, slices=12, seed=3, raters=3, test_cases=1)
    run_bundle("train_utility", {**TINY, "dataset_dir": str(data), "output_dir": str(root / "det")})
    run_bundle("train_utility", {**TINY, "dataset_dir": str(data), "output_dir": str(root / "prob")}, overlays=["train_probabilistic"])
    return {"root": root, "data": data, "det": root / "det/checkpoints/best.pt", "prob": root / "prob/checkpoints/best.pt"}


def _train_noise(prob_run: dict[str, Path], name: str, output: str) -> Path:
    from pipeline.bundle import run_bundle

    run_bundle("train_noise", {**{k: v for k, v in TINY.items() if k != "preset"}, "noise_preset": "small",
                               "dataset_dir": str(prob_run["data"]), "utility_checkpoint": str(prob_run["prob"]),
                               "utility_output": output, "output_dir": str(prob_run["root"] / name)})
    return prob_run["root"] / name / "checkpoints" / "best.pt"


@pytest.fixture(scope="module")
def uncertainty_noise(prob_run: dict[str, Path]) -> Path:
    return _train_noise(prob_run, "noise_uncertainty", "uncertainty")


@pytest.mark.slow
def test_evaluate_writes_the_probabilistic_and_attribution_blocks(prob_run: dict[str, Path], uncertainty_noise: Path):
    from pipeline.bundle import run_bundle
    from pipeline.evaluation.run import summarise

    noise = _train_noise(prob_run, "noise_segmentation", "segmentation")
    out = prob_run["root"] / "eval"
    run_bundle("evaluate", {
        "dataset_dir": str(prob_run["data"]), "utility_checkpoint": str(prob_run["prob"]), "noise_checkpoints": [str(noise)],
        "deterministic_utility": str(prob_run["det"]), "uncertainty_noise": str(uncertainty_noise), "output_dir": str(out),
        "val_fraction": 0.34, "test_fraction": 0.34, "split": "all", "slices_per_case": 1, "bootstrap": 50, "device": "cpu",
        "sanity": False, "baselines": ["segmentation", "random"], "infills": ["blur"], "held_out_infills": [],
        "ambiguity_samples": 4})
    result = json.loads((out / "evaluation.json").read_text())
    signs = [e["has_sign"] for e in json.loads((prob_run["data"] / "dataset.json").read_text())["training"]]
    attribution = result["uncertainty_attribution"]
    assert attribution["cases"] == sum(signs) > 0
    assert set(attribution["methods"]) == {"unoise_small_replace (segmentation)", "unoise_uncertainty", "uncertainty",
                                           "segmentation", "random"}
    for scores in attribution["methods"].values():
        assert 0.0 <= scores["pointing_rate"] <= 1.0 and scores["share_over_chance"] >= 0.0
    assert set(attribution["reliance"]) >= {"entropy_on_lesion_with_sign", "entropy_on_lesion_without_sign", "difference"}
    block = result["probabilistic"]
    assert block["samples"] == 4 and block["raters_per_case"] == [3] and block["cases"] == len(signs)
    for key in ("ged", "diversity", "hm_iou"):
        assert set(block[key]) == {"probabilistic", "deterministic", "raters"}
    assert block["diversity"]["deterministic"]["mean"] == 0.0  # one mask: nothing to differ
    assert set(block["paired"]) == {"ged", "hm_iou", "note"}
    assert "probabilistic (4 samples per case" in summarise(result)


@pytest.mark.slow
def test_explain_writes_the_uncertainty_and_explains_it(prob_run: dict[str, Path], uncertainty_noise: Path, tmp_path: Path):
    import nibabel as nib
    import numpy as np

    noise = uncertainty_noise
    out = tmp_path / "maps"
    image = prob_run["data"] / "imagesTs" / "pancreas_006.nii.gz"
    assert main(["explain", "--input", str(image), "--output", str(out), "--noise", str(noise), "--utility",
                 str(prob_run["prob"]), "--utility-output", "uncertainty", "--device", "cpu"]) == 0
    source = nib.load(image)
    for name in ("importance", "seg", "uncertainty"):
        written = nib.load(out / f"pancreas_006_{name}.nii.gz")
        assert written.shape == source.shape and np.allclose(written.affine, source.affine, atol=1e-4)
    uncertainty = nib.load(out / "pancreas_006_uncertainty.nii.gz").get_fdata()
    assert 0.0 <= uncertainty.min() and uncertainty.max() <= 1.0
    code = main(["explain", "--input", str(image), "--output", str(tmp_path / "wrong"), "--noise", str(noise), "--utility",
                 str(prob_run["prob"]), "--device", "cpu"])
    assert code == 2  # a noise model of the uncertainty, asked for the segmentation: refused


@pytest.mark.slow
def test_evaluate_checks_the_noise_models_against_the_output_it_explains(prob_run: dict[str, Path], uncertainty_noise: Path):
    from pipeline.networks.checkpoints import CheckpointError
    from pipeline.evaluation.settings import check_inputs

    common = {"dataset_dir": str(prob_run["data"]), "utility_checkpoint": str(prob_run["prob"]), "val_fraction": 0.34,
              "test_fraction": 0.34}
    assert check_inputs(**common, noise_checkpoints=[str(uncertainty_noise)], utility_output="uncertainty") == []
    with pytest.raises(CheckpointError, match="explains its utility's uncertainty, not its segmentation"):
        check_inputs(**common, noise_checkpoints=[str(uncertainty_noise)])
    segmentation_noise = prob_run["root"] / "noise_segmentation" / "checkpoints" / "best.pt"
    if segmentation_noise.is_file():  # trained by the evaluate test of this module when it ran first
        with pytest.raises(CheckpointError, match="explains its utility's segmentation, not its uncertainty"):
            check_inputs(**common, noise_checkpoints=[str(segmentation_noise)], uncertainty_noise=str(segmentation_noise))


def test_a_deterministic_utility_beside_a_deterministic_one_is_refused(tmp_path: Path, tiny_pair, capsys):
    code = main(["evaluate", "--dataset", str(tiny_pair["data"]), "--utility", str(tiny_pair["utility"]),
                 "--noise", str(tiny_pair["noise"]), "--deterministic-utility", str(tiny_pair["utility"]),
                 "--output", str(tmp_path / "eval"), "--val-fraction", "0.34", "--test-fraction", "0", "--split", "validation",
                 "--device", "cpu", "--sanity", "false"])
    err = capsys.readouterr().err
    assert code == 2 and "is scored beside a probabilistic utility" in err and "Traceback" not in err
    assert not (tmp_path / "eval").exists()  # refused before the run folder was made
