"""The U-Noise math: one property per test."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.errors import ConfigError
from pipeline.networks import build_unet
from pipeline.noise import UNoiseExplainer, UNoiseLoss, UNoiseModel
from pipeline.noise.loss import compute_logit_excess, compute_soft_dice, compute_total_variation
from pipeline.noise.model import apply_noise_scale, apply_perturbation, apply_rank_mask, importance_from_tolerance, resolve_baseline
from pipeline.noise.infill import apply_blur


@pytest.fixture
def image() -> torch.Tensor:
    return torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))


def test_zero_scales_leave_the_image_unchanged_under_additive(image: torch.Tensor) -> None:
    tolerance = torch.rand(2, 1, 16, 16)
    assert torch.equal(apply_perturbation(image, tolerance, 0.0, 0.0, "additive"), image)


def test_zero_tolerance_leaves_the_image_unchanged_under_replace(image: torch.Tensor) -> None:
    perturbed = apply_perturbation(image, torch.zeros(2, 1, 16, 16), 0.2, 0.8, "replace")
    assert torch.equal(perturbed, image)


def test_full_tolerance_under_replace_keeps_no_trace_of_the_image(image: torch.Tensor) -> None:
    noise = torch.randn_like(image)
    perturbed = apply_perturbation(image, torch.ones(2, 1, 16, 16), 0.1, 0.3, "replace", baseline=0.0, noise=noise)
    assert torch.allclose(perturbed, 0.3 * noise)


def test_noise_scale_stays_within_bounds() -> None:
    tolerance = torch.sigmoid(torch.randn(4, 1, 8, 8) * 10)
    sigma = apply_noise_scale(tolerance, 0.1, 0.6)
    assert float(sigma.min()) >= 0.1 - 1e-6 and float(sigma.max()) <= 0.6 + 1e-6  # float32 rounding


def test_additive_noise_has_the_scale_of_sigma(image: torch.Tensor) -> None:
    noise = torch.randn_like(image)
    perturbed = apply_perturbation(image, torch.full((2, 1, 16, 16), 0.5), 0.0, 0.4, "additive", noise=noise)
    assert torch.allclose(perturbed - image, 0.2 * noise, atol=1e-6)


def test_caller_tensors_are_not_modified(image: torch.Tensor) -> None:
    before, tolerance = image.clone(), torch.rand(2, 1, 16, 16)
    apply_perturbation(image, tolerance, 0.1, 0.5, "replace")
    assert torch.equal(image, before)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="perturbation must be one of"):
        apply_perturbation(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), 0, 1, "multiply")
    with pytest.raises(ValueError, match="need 0 <= min_scale <= max_scale"):
        apply_noise_scale(torch.zeros(1), 0.5, 0.1)
    with pytest.raises(ValueError, match="does not match image"):
        apply_perturbation(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 8, 8), 0, 1)
    with pytest.raises(ValueError, match="noise_weight"):
        UNoiseLoss(noise_weight=-1)
    with pytest.raises(ValueError, match="target must be one of"):
        UNoiseLoss(target="segmentation")
    with pytest.raises(ValueError, match="area must be one of"):
        UNoiseLoss(area="l2")
    with pytest.raises(ValueError, match="baseline: infill 'median' is not one of"):
        resolve_baseline(torch.zeros(1, 1, 4, 4), "median")
    with pytest.raises(ValueError, match="baseline must be a number, an infill"):
        resolve_baseline(torch.zeros(1, 1, 4, 4), [])
    with pytest.raises(ValueError, match="baseline 'road'.*held out"):
        resolve_baseline(torch.zeros(1, 1, 4, 4), ["blur", "road"])
    with pytest.raises(ValueError, match="objective 'curves' hides pixels"):
        UNoiseModel(torch.nn.Identity(), torch.nn.Identity(), 0.0, 0.1, "additive", objective="curves")


def test_importance_is_one_minus_tolerance() -> None:
    tolerance = torch.tensor([0.0, 0.25, 1.0])
    assert torch.equal(importance_from_tolerance(tolerance), torch.tensor([1.0, 0.75, 0.0]))


def _outputs(seg: torch.Tensor, tolerance: float, clean: torch.Tensor, deleted: torch.Tensor | None = None) -> torch.Tensor:
    """A (B, 5, H, W) UNoiseModel output by hand."""
    shape = seg.shape
    return torch.cat([seg, torch.full(shape, tolerance), torch.zeros(shape), clean,
                      clean if deleted is None else deleted], dim=1)


def test_loss_is_utility_loss_minus_weighted_log_tolerance() -> None:
    seg = torch.randn(2, 1, 4, 4)
    target = (torch.rand(2, 1, 4, 4) > 0.5).float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(seg, target)
    loss = UNoiseLoss(noise_weight=0.1)(_outputs(seg, 0.5, torch.zeros_like(seg)), target)
    assert torch.allclose(loss, bce - 0.1 * torch.log(torch.tensor(0.5)))


def test_l1_area_term_is_the_weighted_mean_importance() -> None:
    seg = torch.randn(2, 1, 4, 4)
    target = torch.zeros(2, 1, 4, 4)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(seg, target)
    loss = UNoiseLoss(noise_weight=0.2, area="l1")(_outputs(seg, 0.75, torch.zeros_like(seg)), target)
    assert torch.allclose(loss, bce + 0.2 * 0.25)


def test_prediction_target_ignores_the_label() -> None:
    seg = torch.randn(2, 1, 4, 4)
    clean = torch.randn(2, 1, 4, 4)
    loss_function = UNoiseLoss(noise_weight=0.0, target="prediction")
    label_a, label_b = torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(seg, (clean > 0).float())
    assert torch.allclose(loss_function(_outputs(seg, 0.5, clean), label_a), expected)
    assert torch.allclose(loss_function(_outputs(seg, 0.5, clean), label_b), expected)


def test_deletion_term_is_low_when_hiding_the_important_pixels_destroys_the_segmentation() -> None:
    target = torch.zeros(1, 1, 8, 8)
    target[..., 2:6, 2:6] = 1
    seg = torch.where(target > 0, 10.0, -10.0)
    loss_function = UNoiseLoss(noise_weight=0.0, deletion_weight=1.0)
    kept = loss_function(_outputs(seg, 0.5, seg, deleted=seg), target)  # the complement still segments
    destroyed = loss_function(_outputs(seg, 0.5, seg, deleted=torch.full_like(seg, -10.0)), target)
    assert float(destroyed) < float(kept) - 0.5
    assert loss_function.last_terms["deletion_term"] < 0.01


def test_total_variation_is_zero_for_a_constant_and_counts_edges() -> None:
    assert float(compute_total_variation(torch.full((1, 1, 4, 4), 0.3))) == 0.0
    step = torch.zeros(1, 1, 4, 4)
    step[..., 2:] = 1.0
    assert float(compute_total_variation(step)) == pytest.approx(4 / 12)


def test_replace_towards_blur_hides_with_the_blurred_slice(image: torch.Tensor) -> None:
    blurred = resolve_baseline(image, "blur", 2.0)
    assert torch.allclose(blurred, apply_blur(image, 2.0))
    full = apply_perturbation(image, torch.ones(2, 1, 16, 16), 0.0, 0.0, "replace", baseline=blurred)
    none = apply_perturbation(image, torch.zeros(2, 1, 16, 16), 0.0, 0.0, "replace", baseline=blurred)
    assert torch.allclose(full, blurred) and torch.equal(none, image)


def test_model_outputs_five_channels_with_clean_and_deleted_logits(image: torch.Tensor) -> None:
    torch.manual_seed(0)
    utility = build_unet("small").eval()
    model = UNoiseModel(build_unet("small"), utility, 0.0, 0.0, "replace", baseline="blur", deletion=True).eval()
    with torch.no_grad():
        outputs = model(image)
        clean = utility(image)
        tolerance = outputs[:, 1:2]
        deleted = utility(tolerance * image + (1 - tolerance) * apply_blur(image))
    assert outputs.shape == (2, 5, 16, 16)
    assert torch.allclose(outputs[:, 3:4], clean, atol=1e-5) and torch.allclose(outputs[:, 4:5], deleted, atol=1e-5)


def _model(perturbation: str = "additive") -> UNoiseModel:
    torch.manual_seed(0)
    return UNoiseModel(build_unet("small"), build_unet("small"), 0.0, 0.5, perturbation)


def test_gradients_reach_only_the_noise_model(image: torch.Tensor) -> None:
    model = _model()
    model.train()
    loss = UNoiseLoss()(model(image), (image > 0.5).float())
    loss.backward()
    assert all(p.grad is None for p in model.utility.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.noise_net.parameters())


@pytest.mark.parametrize("perturbation", ["additive", "replace"])
def test_utility_weights_and_batchnorm_statistics_stay_bitwise_equal(image: torch.Tensor, perturbation: str) -> None:
    model = _model(perturbation)
    model.deletion = True  # the deletion pass runs the utility a third time
    before = {k: v.clone() for k, v in model.utility.state_dict().items()}
    optimizer = torch.optim.Adam(model.noise_net.parameters(), lr=1e-2)
    loss_function = UNoiseLoss(target="prediction", deletion_weight=1.0, tv_weight=0.1)
    for _ in range(3):  # a few training steps in train mode, as the engine runs them
        model.train()
        optimizer.zero_grad()
        loss_function(model(image), (image > 0.5).float()).backward()
        optimizer.step()
    assert not model.utility.training
    after = model.utility.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), [k for k in before if not torch.equal(before[k], after[k])]


def test_validation_noise_is_repeatable(image: torch.Tensor) -> None:
    model = UNoiseModel(build_unet("small"), build_unet("small"), 0.0, 0.5, noise_seed=3).eval()
    with torch.no_grad():
        first, second = model(image), model(image)
    assert first.shape == (2, 5, 16, 16) and torch.equal(first, second)


def test_explainer_outputs_importance_and_the_utility_logit(image: torch.Tensor) -> None:
    noise_net, utility = build_unet("small"), build_unet("small")
    explainer = UNoiseExplainer(noise_net, utility)
    explainer.train()  # stays in eval mode
    with torch.no_grad():
        maps = explainer(image)
        logit = utility(image)
        tolerance = torch.sigmoid(noise_net(image))
    assert maps.shape == (2, 2, 16, 16) and not explainer.noise_net.training
    assert torch.allclose(maps[:, 1:], logit, atol=1e-6)  # the logit: a sliding window averages what bundles average
    assert torch.allclose(maps[:, :1], 1 - tolerance, atol=1e-6)


def test_channels_last_explainer_gives_the_same_maps(image: torch.Tensor) -> None:
    torch.manual_seed(0)
    noise_net, utility = build_unet("small"), build_unet("small")
    reference = UNoiseExplainer(noise_net, utility)
    with torch.no_grad():
        expected = reference(image)
        fast = UNoiseExplainer(noise_net, utility, channels_last=True)(image)
    assert torch.allclose(fast, expected, atol=1e-5)


def test_utility_autocast_keeps_the_noise_model_in_float32() -> None:
    torch.manual_seed(0)
    noise_net, utility = torch.nn.Conv2d(1, 1, 3, padding=1), torch.nn.Conv2d(1, 1, 3, padding=1)
    image = torch.rand(2, 1, 8, 8)
    plain = UNoiseModel(noise_net, utility, 0.0, 0.4, noise_seed=0)(image)
    mixed = UNoiseModel(noise_net, utility, 0.0, 0.4, noise_seed=0, utility_dtype=torch.bfloat16)(image)
    assert mixed.dtype == torch.float32
    assert torch.equal(mixed[:, 1:3], plain[:, 1:3])  # tolerance and perturbed image: untouched by the autocast
    assert torch.allclose(mixed[:, [0, 3]], plain[:, [0, 3]], atol=0.05)  # utility logits to bf16 rounding


def test_rank_mask_selects_the_top_share_of_the_region() -> None:
    scores = torch.arange(64, dtype=torch.float32).view(1, 1, 8, 8).repeat(3, 1, 1, 1)
    region = torch.zeros(3, 1, 8, 8)
    region[..., :, 4:] = 1  # 32 pixels, the right half
    mask = apply_rank_mask(scores, region, torch.tensor([0.25, 0.5, 1.0]), temperature=0.01)
    assert float(mask[region == 0].abs().max()) == 0.0  # nothing outside the region
    for row, share in enumerate((0.25, 0.5, 1.0)):
        inside = scores[row][region[row] > 0]
        chosen = mask[row][region[row] > 0] > 0.5
        assert int(chosen.sum()) == round(share * 32)
        assert float(inside[chosen].min()) > float(inside[~chosen].max()) if (~chosen).any() else True


def test_rank_mask_does_not_depend_on_the_scale_of_the_scores() -> None:
    scores = torch.randn(2, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    region = torch.ones(2, 1, 12, 12)
    shares = torch.tensor([0.3, 0.7])
    assert torch.allclose(apply_rank_mask(scores, region, shares, 0.1), apply_rank_mask(10 * scores + 3, region, shares, 0.1),
                          atol=1e-5)


def test_soft_dice_of_a_perfect_prediction_is_one() -> None:
    target = torch.zeros(2, 1, 8, 8)
    target[0, :, 2:6, 2:6] = 1
    dice = compute_soft_dice(target.clone(), target)
    assert float(dice[0]) == pytest.approx(1.0, abs=0.02) and float(dice[1]) == 1.0  # the empty slice: empty_score 1
    assert float(compute_soft_dice(target.clone(), target, empty_score=0.0)[1]) == 0.0


@pytest.mark.parametrize("spatial", [(16, 16), (12, 12, 8)])
def test_curves_objective_hides_only_body_pixels_below_the_top_share(spatial: tuple[int, ...]) -> None:
    conv = torch.nn.Conv2d if len(spatial) == 2 else torch.nn.Conv3d
    image = torch.rand(4, 1, *spatial, generator=torch.Generator().manual_seed(0))
    body = torch.zeros(4, 1, *spatial)
    body[(slice(None), slice(None), *[slice(2, n - 2) for n in spatial])] = 1
    model = UNoiseModel(conv(1, 1, 3, padding=1), conv(1, 1, 3, padding=1), 0.0, 0.0, "replace",
                        ["floor", "mean", "noise"], noise_seed=0, deletion=True, objective="curves")
    out = model(image, body)
    assert out.shape == (4, 5, *spatial)
    outside = (body == 0).expand_as(image)
    assert torch.equal(out[:, 2:3][outside], image[outside])  # air is never hidden
    assert torch.equal(out, model(image, body))  # seeded draws: repeatable validation
    loss = UNoiseLoss(0.01, target="prediction", deletion_weight=1.0, objective="curves")(out)
    loss.backward()
    assert model.noise_net.weight.grad.abs().sum() > 0 and model.utility.weight.grad is None


def test_logit_excess_is_zero_inside_the_bound_and_grows_outside() -> None:
    logits = torch.tensor([-20.0, -8.0, -3.0, 0.0, 3.0, 8.0])
    excess = compute_logit_excess(torch.sigmoid(logits), bound=6.0)
    assert torch.equal(excess[2:5], torch.zeros(3))
    assert excess[0] == pytest.approx(14.0, abs=1e-3) and excess[1] == pytest.approx(2.0, abs=1e-2)
    assert excess[5] == pytest.approx(2.0, abs=1e-2)


def test_the_agreement_target_moves_the_area_weight_toward_the_constraint() -> None:
    """GECO-style: a training step whose perturbed prediction keeps more than the target raises the area weight (more
    noise allowed), one that keeps less lowers it, by exp(rate * (agreement - target)); validation leaves it alone."""
    from pipeline.noise.model import CLEAN, SEG, TOLERANCE

    loss = UNoiseLoss(noise_weight=0.01, target="prediction", objective="curves", agreement_target=0.9, multiplier_rate=0.5)
    outputs = torch.zeros(2, 5, 8, 8)
    outputs[:, CLEAN, 2:6, 2:6] = 10.0  # the clean prediction: a 4 x 4 square
    outputs[:, TOLERANCE] = 0.5
    kept = outputs.clone()
    kept[:, SEG] = torch.where(outputs[:, CLEAN] > 0, 10.0, -10.0)  # perturbed prediction = clean: agreement ~1
    lost = outputs.clone()
    lost[:, SEG] = -10.0  # perturbed prediction empty: agreement ~0
    loss(kept)
    assert loss.last_terms["area_weight"] == pytest.approx(0.01)
    raised = float(loss.log_area_weight.exp())
    assert raised == pytest.approx(0.01 * math.exp(0.5 * (1.0 - 0.9)), rel=0.01)
    with torch.no_grad():  # validation: the multiplier does not move
        loss(lost)
    assert float(loss.log_area_weight.exp()) == pytest.approx(raised)
    loss(lost)
    kept_share = float(compute_soft_dice(torch.sigmoid(lost[:, SEG:SEG + 1]), (lost[:, CLEAN:CLEAN + 1] > 0).float()).mean())
    assert kept_share < 0.1  # (the soft dice's smoothing: 1 / 17 of an empty prediction)
    assert float(loss.log_area_weight.exp()) == pytest.approx(raised * math.exp(0.5 * (kept_share - 0.9)), rel=1e-4)
    fixed = UNoiseLoss(noise_weight=0.01, target="prediction", objective="curves")  # no target: the weight stays
    fixed(lost)
    fixed(kept)
    assert fixed.last_terms["area_weight"] == 0.01 and float(fixed.log_area_weight.exp()) == pytest.approx(0.01)
    with pytest.raises(ConfigError, match="agreement_target is a dice in"):
        UNoiseLoss(agreement_target=1.5)
