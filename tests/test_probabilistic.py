"""Probabilistic U-Net: shapes, the KL, sample diversity, the posterior's label, training, errors, records."""

from __future__ import annotations

import pytest
import torch

from pipeline.errors import ConfigError
from pipeline.networks import ProbabilisticUNet, ProbabilisticUNetLoss, build_network

ARGS = {"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "channels": (8, 16), "latent_dim": 3}


def make_network(seed: int = 0, **overrides: object) -> ProbabilisticUNet:
    torch.manual_seed(seed)
    return ProbabilisticUNet(**{**ARGS, **overrides})


def randomise(layer: torch.nn.Module, std: float = 0.5) -> None:
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.normal_(0.0, std)


def box_label(columns: slice) -> torch.Tensor:
    label = torch.zeros(1, 1, 32, 32)
    label[..., 8:24, columns] = 1.0
    return label


def test_forward_and_sample_shapes_2d() -> None:
    network, image = make_network(), torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert network(image).shape == (2, 1, 32, 32)
        assert network.sample(image, count=4).shape == (4, 2, 1, 32, 32)


def test_forward_shape_3d() -> None:
    network = make_network(spatial_dims=3)
    with torch.no_grad():
        assert network(torch.rand(1, 1, 16, 16, 8)).shape == (1, 1, 16, 16, 8)


def test_kl_is_zero_at_init() -> None:
    network, image = make_network(), torch.rand(2, 1, 32, 32)
    _, kl = network.elbo_terms(image, torch.cat([box_label(slice(4, 12)), box_label(slice(20, 28))]))
    assert kl.shape == (2,) and torch.equal(kl, torch.zeros(2))  # both nets start as N(0, I)


def test_kl_is_non_negative_per_image() -> None:
    network, image = make_network(), torch.rand(3, 1, 32, 32)
    randomise(network.prior.to_moments)
    randomise(network.posterior.to_moments)
    _, kl = network.elbo_terms(image, (torch.rand(3, 1, 32, 32) > 0.5).float())
    assert kl.shape == (3,) and bool((kl > 0).all())


def test_prior_samples_differ() -> None:
    network = make_network().eval()
    randomise(network.prior.to_moments, std=0.1)
    with torch.no_grad():
        samples = network.sample(torch.rand(1, 1, 32, 32), count=4)
    assert all(not torch.allclose(samples[i], samples[j]) for i in range(4) for j in range(i + 1, 4))


def test_mean_prediction_is_deterministic() -> None:
    network, image = make_network().eval(), torch.rand(1, 1, 32, 32)
    randomise(network.prior.to_moments, std=0.1)
    with torch.no_grad():
        assert torch.equal(network.mean_prediction(image), network.mean_prediction(image))


def test_posterior_mean_depends_on_the_label() -> None:
    network, image = make_network().eval(), torch.rand(1, 1, 32, 32)
    randomise(network.posterior.to_moments)
    with torch.no_grad():
        left = network.posterior_distribution(image, box_label(slice(4, 12))).mean
        right = network.posterior_distribution(image, box_label(slice(20, 28))).mean
    assert not torch.allclose(left, right)


def test_loss_gradients_reach_backbone_prior_and_posterior() -> None:
    network = make_network()
    randomise(network.prior.to_moments, std=0.1)  # at init q == p, where the KL's gradient vanishes
    randomise(network.posterior.to_moments, std=0.1)
    ProbabilisticUNetLoss(beta=1.0)(network, torch.rand(2, 1, 32, 32), (torch.rand(2, 1, 32, 32) > 0.5).float()).backward()
    for part in (network.backbone, network.prior.encoder, network.posterior.encoder, network.head):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters()), type(part).__name__


def test_adam_steps_lower_the_loss_on_two_modes() -> None:
    network, loss_function = make_network(), ProbabilisticUNetLoss(beta=1e-2)
    image = torch.rand(1, 1, 32, 32).expand(2, -1, -1, -1)  # one image, two raters
    modes = [box_label(slice(4, 12)).expand(2, -1, -1, -1), box_label(slice(20, 28)).expand(2, -1, -1, -1)]

    def evaluate() -> float:
        torch.manual_seed(1)
        with torch.no_grad():
            return sum(float(loss_function(network, image, label)) for label in modes)

    before = evaluate()
    optimiser = torch.optim.Adam(network.parameters(), lr=1e-2)
    for step in range(16):
        optimiser.zero_grad()
        loss_function(network, image, modes[step % 2]).backward()  # the data draws a rater per step
        optimiser.step()
        loss_function.step()
    assert evaluate() < before


def test_multiclass_loss_takes_class_indices() -> None:
    network = make_network(out_channels=3)
    label = torch.randint(0, 3, (2, 1, 32, 32))
    loss = ProbabilisticUNetLoss()(network, torch.rand(2, 1, 32, 32), label)
    assert loss.ndim == 0 and torch.isfinite(loss)


def test_kl_warmup_ramps_beta_linearly() -> None:
    loss_function = ProbabilisticUNetLoss(beta=2.0, kl_warmup_steps=4)
    scales = []
    for _ in range(6):
        scales.append(loss_function.beta_scale)
        loss_function.step()
    assert scales == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]


def test_loss_exposes_its_parts() -> None:
    loss_function = ProbabilisticUNetLoss(beta=0.5)
    total = loss_function(make_network(), torch.rand(2, 1, 32, 32), box_label(slice(4, 12)).expand(2, -1, -1, -1))
    expected = loss_function.last_reconstruction + 0.5 * loss_function.last_kl
    assert torch.allclose(total.detach(), expected) and float(loss_function.last_beta) == 0.5


@pytest.mark.parametrize(("overrides", "match"), [
    ({"spatial_dims": 4}, "spatial_dims must be 2 or 3"),
    ({"channels": (8,)}, "channels needs >= 2 positive integers"),
    ({"channels": (8, 0)}, "channels needs >= 2 positive integers"),
    ({"latent_dim": 0}, "latent_dim must be a positive integer"),
    ({"head_layers": 0}, "head_layers must be a positive integer"),
    ({"head_channels": 2.5}, "head_channels must be a positive integer"),
    ({"prior_channels": ()}, "prior_channels needs >= 1 positive integers"),
    ({"label_channels": True}, "label_channels must be a positive integer"),
    ({"out_channels": 0}, "out_channels must be a positive integer"),
])
def test_bad_arguments_raise(overrides: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make_network(**overrides)


@pytest.mark.parametrize(("kwargs", "match"), [({"beta": -1.0}, "beta must be None"), ({"kl_warmup_steps": -1}, "kl_warmup_steps")])
def test_bad_loss_arguments_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ProbabilisticUNetLoss(**kwargs)


def test_indivisible_image_is_refused() -> None:
    with pytest.raises(ValueError, match="divisible by 2"):
        make_network()(torch.rand(1, 1, 31, 32))


def test_build_network_record_and_state_dict_round_trip() -> None:
    record = {"target": "pipeline.networks.ProbabilisticUNet", "args": {**ARGS, "channels": [8, 16], "head_layers": 2}}
    torch.manual_seed(0)
    trained = build_network(record)
    randomise(trained.prior.to_moments, std=0.1)
    torch.manual_seed(1)
    rebuilt = build_network(record)
    rebuilt.load_state_dict(trained.state_dict())
    image = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(trained.eval().mean_prediction(image), rebuilt.eval().mean_prediction(image))


def test_uncertainty_view_is_deterministic_and_in_bits():
    from pipeline.networks import UncertaintyView

    torch.manual_seed(0)
    network = ProbabilisticUNet(2, 1, 1, (4, 8), latent_dim=2).eval()
    torch.nn.init.normal_(network.prior.to_moments.weight, std=1.0)  # a prior with spread: samples differ
    view = UncertaintyView(network, samples=8, seed=1)
    image = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        first, second = view.predictive_entropy(image), view.predictive_entropy(image)
        logit = view(image)
    assert torch.equal(first, second)  # fixed draws: the same image, the same uncertainty
    assert first.shape == (2, 1, 16, 16) and 0.0 <= float(first.min()) and float(first.max()) <= 1.0
    assert torch.equal(logit > 0, first > 0.5)  # the explained "uncertain" region: more than half a bit


def test_uncertainty_is_zero_bits_where_every_sample_is_sure():
    from pipeline.networks import UncertaintyView

    network = ProbabilisticUNet(2, 1, 1, (4, 8), latent_dim=2).eval()
    with torch.no_grad():
        network.head[-1].weight.zero_()
        network.head[-1].bias.fill_(-30.0)  # every sample: probability ~0 everywhere
        entropy = UncertaintyView(network, samples=4).predictive_entropy(torch.rand(1, 1, 8, 8))
    assert float(entropy.max()) < 1e-3


def test_uncertainty_of_a_deterministic_network_is_refused():
    from pipeline.networks import LevelUNet, UncertaintyView, utility_view

    with pytest.raises(ConfigError, match="needs a Probabilistic U-Net"):
        UncertaintyView(LevelUNet(2, 1, 1, (4, 8)))
    with pytest.raises(ConfigError, match="utility_output must be one of"):
        utility_view(LevelUNet(2, 1, 1, (4, 8)), "variance")


def test_uncertainty_is_finite_under_cpu_bfloat16():
    from pipeline.networks import UncertaintyView

    network = ProbabilisticUNet(2, 1, 1, (4, 8), latent_dim=2).eval()
    with torch.no_grad():
        network.head[-1].weight.zero_()
        network.head[-1].bias.fill_(30.0)  # every sample sure of the foreground: p rounds to 1 in bfloat16
        with torch.autocast("cpu", dtype=torch.bfloat16):
            entropy = UncertaintyView(network, samples=4).predictive_entropy(torch.rand(1, 1, 8, 8))
    assert bool(torch.isfinite(entropy).all()) and float(entropy.max()) < 1e-3
