"""The U-Noise loss: the utility's loss on the perturbed image, the noise (area) term, the deletion and bound
terms, and the soft dice they are made of (the method: :mod:`pipeline.noise.model`)."""

from __future__ import annotations

import math
from collections.abc import Callable

import ignite.distributed as idist
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from pipeline.errors import ConfigError, check_choice
from pipeline.noise.model import AREA_TERMS, CLEAN, DELETED, LOGIT_BOUND, OBJECTIVES, SEG, TARGETS, TOLERANCE


def compute_soft_dice(probability: torch.Tensor, target: torch.Tensor, empty_score: float = 1.0) -> torch.Tensor:
    """Soft dice per slice, ``(2 |P T| + empty_score) / (|P| + |T| + 1)`` (MONAI's ``DiceLoss`` terms): (B, 1, ...)
    probabilities and {0, 1} targets -> (B,); an empty prediction of an empty target scores ``empty_score``."""
    loss = DiceLoss(reduction="none", smooth_nr=empty_score, smooth_dr=1.0)(probability, target)  # (B, 1, 1, ...)
    return 1.0 - loss.flatten(1).mean(1)


def compute_logit_excess(tolerance: torch.Tensor, bound: float = LOGIT_BOUND) -> torch.Tensor:
    """How far each pixel's logit of B lies outside [-bound, bound], from B itself: ``relu(softplus(-l) - bound) +
    relu(softplus(l) - bound)`` with ``softplus(-l) = -log B`` and ``softplus(l) = -log(1 - B)``; same shape.
    Zero inside the bound; slope about 1 per unit of logit outside it."""
    inside_low = -torch.log(tolerance.clamp_min(1e-30))  # softplus(-l)
    inside_high = -torch.log((1.0 - tolerance).clamp_min(1e-7))  # softplus(l)
    return F.relu(inside_low - bound) + F.relu(inside_high - bound)


def compute_total_variation(tolerance: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels (voxels) of B, summed over the spatial axes:
    (B, 1, H, W) or (B, 1, X, Y, Z) -> scalar."""
    return sum(torch.diff(tolerance, dim=axis).abs().mean() for axis in range(2, tolerance.ndim))


class UNoiseLoss(torch.nn.Module):
    """Utility loss on the perturbed image plus the terms that make the noise as large as the utility allows.

    ``loss = utility_loss(SEG, target) + noise term + deletion_weight * softdice(DELETED, target)
    + tv_weight * TV(B)``; with ``objective: curves`` the utility term is ``1 - softdice(SEG, target)`` (the
    dice the evaluation's curves measure) and the deletion term counts only slices with a target to destroy.
    The noise term is ``-noise_weight * mean(log B)`` (``area: log``, the
    paper's) or ``noise_weight * mean(1 - B)`` (``area: l1``). Takes the (B, 5, H, W) output of
    :class:`UNoiseModel` and the label (B, 1, H, W) in {0, 1} (None with ``target: prediction``: label-free). The terms
    of the last call are kept in ``last_terms`` (``utility_loss``, ``noise_term``, ``deletion_term``, ``tv_term``, ``mean_tolerance``)
    for logging.

    Args:
        noise_weight: lambda (the authors: 1e-3).
        utility_loss: ``bce`` (the authors) or a callable ``(logits, target) -> loss``.
        eps: floor of B inside the log, for numerical safety.
        target: ``label`` (the paper) or ``prediction`` (the utility's binary clean prediction).
        area: ``log`` or ``l1``, see above.
        deletion_weight: weight of the deletion (destroyer) term; needs ``UNoiseModel(deletion=True)``.
        tv_weight: weight of the total variation of B.
        objective: ``blend`` or ``curves`` (see :class:`UNoiseModel`).
        agreement_target: None: ``noise_weight`` is fixed. A number in (0, 1): a constraint instead of a tuned
            weight (GECO-style, Rezende & Viola 2018): the area weight starts at ``noise_weight`` and after every
            training step moves by ``log w += multiplier_rate * (agreement - agreement_target)``, where agreement is
            the soft dice of the perturbed prediction against the target; it grows while the perturbed prediction
            keeps more than the target (more noise allowed) and shrinks while it keeps less.
        multiplier_rate: step of that update, in log units per unit of agreement.
    """

    def __init__(self, noise_weight: float = 1e-3, utility_loss: str | Callable = "bce", eps: float = 1e-6,
                 target: str = "label", area: str = "log", deletion_weight: float = 0.0, tv_weight: float = 0.0,
                 objective: str = "blend", agreement_target: float | None = None, multiplier_rate: float = 0.05) -> None:
        super().__init__()
        if agreement_target is not None and not 0.0 < float(agreement_target) < 1.0:
            raise ConfigError(f"agreement_target is a dice in (0, 1) or null, got {agreement_target}.")
        if agreement_target is not None and (noise_weight <= 0 or multiplier_rate <= 0):
            raise ConfigError(f"agreement_target adapts the area weight from noise_weight > 0 at multiplier_rate > 0, got "
                              f"{noise_weight} and {multiplier_rate}.")
        self.agreement_target = None if agreement_target is None else float(agreement_target)
        self.multiplier_rate = float(multiplier_rate)
        self.register_buffer("log_area_weight", torch.tensor(math.log(noise_weight) if noise_weight > 0 else 0.0))
        for name, value in {"noise_weight (lambda)": noise_weight, "deletion_weight": deletion_weight,
                            "tv_weight": tv_weight}.items():
            if value < 0:
                raise ConfigError(f"{name} must be >= 0, got {value}.")
        check_choice("target", target, TARGETS)
        check_choice("area", area, AREA_TERMS)
        check_choice("objective", objective, OBJECTIVES)
        self.objective = objective
        if utility_loss == "bce":
            self.utility_loss: Callable = F.binary_cross_entropy_with_logits
        elif callable(utility_loss):
            self.utility_loss = utility_loss
        else:
            raise ConfigError(f"utility_loss must be 'bce' or a callable, got {utility_loss!r}.")
        self.noise_weight, self.eps, self.target, self.area = noise_weight, eps, target, area
        self.deletion_weight, self.tv_weight = deletion_weight, tv_weight
        self.last_terms: dict[str, float] = {}

    def forward(self, outputs: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        seg_logits, tolerance = outputs[:, SEG : SEG + 1], outputs[:, TOLERANCE : TOLERANCE + 1]  # (B, 1, H, W) each
        if self.target == "label" and target is None:
            raise ConfigError("target 'label' needs labels, and this batch has none: train label-free with target 'prediction'.")
        if self.target == "prediction":
            if outputs.shape[1] <= CLEAN:
                raise ValueError("target 'prediction' needs the clean logits: the outputs of UNoiseModel (5 channels).")
            target = (outputs[:, CLEAN : CLEAN + 1] > 0).to(seg_logits.dtype).detach()
        target = target.to(seg_logits.dtype)
        if self.objective == "curves":
            utility_term = 1.0 - compute_soft_dice(torch.sigmoid(seg_logits), target).mean()
            bound_term = compute_logit_excess(tolerance).mean()
        else:
            utility_term = self.utility_loss(seg_logits, target)
            bound_term = torch.zeros((), device=outputs.device)
        weight = float(self.log_area_weight.exp()) if self.agreement_target is not None else self.noise_weight
        if self.area == "log":
            noise_term = -weight * torch.log(tolerance.clamp_min(self.eps)).mean()
        else:
            noise_term = weight * (1.0 - tolerance).mean()
        if self.agreement_target is not None and torch.is_grad_enabled():  # a training step: move the multiplier
            with torch.no_grad():
                agreement = compute_soft_dice(torch.sigmoid(seg_logits.float()), target.float()).mean()
                if idist.get_world_size() > 1:  # every process moves the same multiplier
                    agreement = idist.all_reduce(agreement) / idist.get_world_size()
                self.log_area_weight += self.multiplier_rate * (float(agreement) - self.agreement_target)
                self.log_area_weight.clamp_(math.log(1e-6), math.log(10.0))
        total = utility_term + noise_term + bound_term
        deletion_term = torch.zeros((), device=outputs.device)
        if self.deletion_weight > 0:
            dice = compute_soft_dice(torch.sigmoid(outputs[:, DELETED : DELETED + 1]), target, empty_score=0.0)  # (B,)
            if self.objective == "curves":  # nothing to destroy on a slice without a target
                present = target.flatten(1).sum(1) > 0
                dice = dice[present] if bool(present.any()) else dice.new_zeros(1)
            deletion_term = self.deletion_weight * dice.mean()
            total = total + deletion_term
        tv_term = self.tv_weight * compute_total_variation(tolerance) if self.tv_weight > 0 else torch.zeros((), device=outputs.device)
        total = total + tv_term
        self.last_terms = {
            "utility_loss": float(utility_term.detach()),
            "noise_term": float(noise_term.detach()),
            "deletion_term": float(deletion_term.detach()),
            "tv_term": float(tv_term.detach()),
            "bound_term": float(bound_term.detach()),
            "mean_tolerance": float(tolerance.detach().mean()),
            "area_weight": weight,
        }
        return total
