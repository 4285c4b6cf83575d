"""The sanity check's pieces: randomisation, the retraining's settings, |rho|."""

from __future__ import annotations

import torch

from pipeline.evaluation.sanity import randomise_layers, retrain_overrides
from pipeline.networks import build_unet


def test_randomising_the_decoder_leaves_the_encoder() -> None:
    torch.manual_seed(0)
    network = build_unet("small")
    before = {k: v.clone() for k, v in network.state_dict().items()}
    randomise_layers(network, ("ups", "final_conv"), seed=1)
    after = network.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("ups", "final_conv")) for k in changed)
    assert any(k.startswith("ups") and "weight" in k for k in changed)


def test_randomising_everything_changes_every_conv() -> None:
    network = build_unet("small")
    before = {k: v.clone() for k, v in network.state_dict().items() if k.endswith("conv.weight")}
    randomise_layers(network, None, seed=3)
    assert all(not torch.equal(before[k], network.state_dict()[k]) for k in before)


def test_retraining_repeats_the_run_on_a_third_of_its_epochs() -> None:
    meta = {"preset": "large", "perturbation": "replace", "baseline": "blur", "target": "prediction", "noise_weight": 0.03,
            "epochs": 9, "checkpoint": "not a setting", "utility_checkpoint": "/old/utility.pt"}
    overrides = retrain_overrides(meta, None)
    assert overrides == {"noise_preset": "large", "perturbation": "replace", "baseline": "blur", "target": "prediction",
                         "noise_weight": 0.03, "epochs": 3}
    assert retrain_overrides(meta, 5)["epochs"] == 5 and retrain_overrides({"preset": "small", "epochs": 1}, None)["epochs"] == 1


def test_retraining_keeps_the_agreement_target_and_leaves_a_bundles_grid_to_the_bundle() -> None:
    meta = {"preset": "small", "epochs": 3, "agreement_target": 0.9, "multiplier_rate": 0.1, "window": [-57.0, 164.0],
            "spatial_size": 32}
    assert retrain_overrides(meta, None) == {"noise_preset": "small", "agreement_target": 0.9, "multiplier_rate": 0.1,
                                             "window": [-57.0, 164.0], "spatial_size": 32, "epochs": 1}
    bundled = retrain_overrides({**meta, "utility_bundle": "/my/bundle"}, None)  # its own preprocessing sets them
    assert "window" not in bundled and "spatial_size" not in bundled and bundled["agreement_target"] == 0.9
