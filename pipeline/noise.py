"""The U-Noise method in pure torch: noise scale, perturbation, loss, importance map.

The noise model's logits give the tolerance B = sigmoid(logits) in (0, 1) per pixel. The noise scale is
``sigma = min_scale + (max_scale - min_scale) * B`` and the perturbed image is:

- ``additive`` (the paper): ``x~ = x + sigma * eps``;
- ``replace``: ``x~ = (1 - B) * x + B * (baseline + sigma * eps)``. The pixel is blended towards noise
  around a baseline in proportion to B, so B = 1 means "this pixel carries no information". The
  baseline is a constant or ``blur``, the slice blurred (:func:`pipeline.infill.apply_blur`): the infill
  the evaluation hides pixels with, so the map is learned for the perturbation it is judged by.

with ``eps ~ N(0, 1)``. The loss is the frozen utility's loss on ``x~`` against a target (``label``, the
paper's, or ``prediction``, the utility's own clean prediction: what an explanation of the model must
keep) plus a term that pushes the noise up wherever it does no harm: ``-lambda * mean(log B)`` (the
paper's, ``area: log``) or ``lambda * mean(1 - B)`` (``area: l1``, the share of the slice kept). Two
optional regularisers: ``deletion_weight`` adds the soft dice of the utility on the *complement*
``B * x + (1 - B) * baseline`` (the important pixels hidden) with the target, which must be low: a faithful
map's important pixels are the ones whose loss destroys the segmentation (Dabkowski & Gal 2017's
"destroyer" term); ``tv_weight`` adds the total variation of B (smooth maps). The importance map is
``1 - B``: high where little noise is tolerated.

Scales are in the units of the input: our CT is windowed to [0, 1], where the authors' 1..5 (for
ImageNet-normalised input, std about 1) would drown every pixel. The bundle's defaults are chosen for
[0, 1] input (see ``configs/train_noise.json``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from pipeline.errors import ConfigError
from pipeline.infill import DEFAULT_BLUR_SIGMA, apply_blur

PERTURBATIONS = ("additive", "replace")
TARGETS = ("label", "prediction")
AREA_TERMS = ("log", "l1")
# UNoiseModel output channels
SEG, TOLERANCE, PERTURBED, CLEAN, DELETED = range(5)


def apply_tolerance(noise_logits: torch.Tensor) -> torch.Tensor:
    """B = sigmoid(logits): tolerance to noise per pixel, (B, 1, H, W) in (0, 1)."""
    return torch.sigmoid(noise_logits)


def apply_noise_scale(tolerance: torch.Tensor, min_scale: float, max_scale: float) -> torch.Tensor:
    """sigma = min_scale + (max_scale - min_scale) * B, same shape as ``tolerance``, in [min_scale, max_scale]."""
    if min_scale < 0 or max_scale < min_scale:
        raise ConfigError(f"need 0 <= min_scale <= max_scale, got min_scale={min_scale}, max_scale={max_scale}.")
    return min_scale + (max_scale - min_scale) * tolerance


def resolve_baseline(image: torch.Tensor, baseline: float | str, blur_sigma: float = DEFAULT_BLUR_SIGMA) -> torch.Tensor | float:
    """What ``replace`` blends towards: a constant, or ``"blur"`` = the slice blurred, (B, C, H, W)."""
    if isinstance(baseline, str):
        if baseline != "blur":
            raise ConfigError(f"baseline must be a number or 'blur', got {baseline!r}.")
        return apply_blur(image, blur_sigma)
    return float(baseline)


def apply_perturbation(
    image: torch.Tensor,
    tolerance: torch.Tensor,
    min_scale: float,
    max_scale: float,
    perturbation: str = "additive",
    baseline: float | torch.Tensor = 0.0,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Perturb ``image`` by the learned tolerance.

    Args:
        image: CT windowed to [0, 1], shape (B, C, H, W); not modified.
        tolerance: B in (0, 1), shape (B, 1, H, W) (broadcast over C).
        min_scale: noise std where B = 0, in image units.
        max_scale: noise std where B = 1, in image units.
        perturbation: ``additive`` or ``replace`` (see the module docstring).
        baseline: what ``replace`` blends towards: a value (0 = the window floor) or a tensor shaped
            like ``image`` (the blurred slice, :func:`resolve_baseline`).
        noise: standard normal noise shaped like ``image``; drawn with ``torch.randn_like`` when None.

    Returns:
        The perturbed image, shape of ``image``.
    """
    if perturbation not in PERTURBATIONS:
        raise ConfigError(f"perturbation must be one of {PERTURBATIONS}, got {perturbation!r}.")
    if tolerance.ndim != image.ndim or tolerance.shape[0] != image.shape[0] or tolerance.shape[2:] != image.shape[2:]:
        raise ValueError(f"tolerance {tuple(tolerance.shape)} does not match image {tuple(image.shape)} (B, ., spatial...).")
    noise = torch.randn_like(image) if noise is None else noise
    sigma = apply_noise_scale(tolerance, min_scale, max_scale)  # (B, 1, H, W)
    if perturbation == "additive":
        return image + sigma * noise  # (B, C, H, W)
    return (1.0 - tolerance) * image + tolerance * (baseline + sigma * noise)  # (B, C, H, W)


def importance_from_tolerance(tolerance: torch.Tensor) -> torch.Tensor:
    """Importance map 1 - B in [0, 1]: 1 where the utility tolerates the least noise."""
    return 1.0 - tolerance


class UNoiseModel(torch.nn.Module):
    """Noise model + frozen utility, as one network for MONAI engines.

    ``forward(image)`` returns (B, 5, H, W), channels (named by the module constants):

    0. ``SEG``: the utility's logits on the perturbed image,
    1. ``TOLERANCE``: B,
    2. ``PERTURBED``: the perturbed image (first input channel),
    3. ``CLEAN``: the utility's logits on the clean image (no gradient; the ``prediction`` target),
    4. ``DELETED``: the utility's logits on the complement ``B * x + (1 - B) * baseline`` (the important
       pixels hidden) with ``deletion``; a copy of ``CLEAN`` without it.

    The utility stays frozen: its parameters do not require grad, and ``train()`` leaves it in eval mode,
    so its BatchNorm statistics are never updated. Gradients reach the noise model through the utility.

    Args:
        noise_net: maps (B, C, H, W) to one logit channel.
        utility: the trained segmentation network (frozen here, in place).
        min_scale, max_scale, perturbation: see :func:`apply_perturbation`.
        baseline: what ``replace`` blends towards: a number or ``"blur"`` (see :func:`resolve_baseline`).
        noise_seed: draw the noise from a generator seeded with this value on every call (repeatable
            validation); None draws from the global generator.
        utility_dtype: run the frozen utility's forward (and so its part of the backward) under autocast
            to this dtype, e.g. ``torch.bfloat16`` on CPUs with bf16 instructions; the noise model, the
            perturbation and the outputs stay float32. None: no autocast here.
        deletion: also run the utility on the complement (for :class:`UNoiseLoss` ``deletion_weight``).
        blur_sigma: sigma of the ``blur`` baseline, pixels.
    """

    def __init__(
        self,
        noise_net: torch.nn.Module,
        utility: torch.nn.Module,
        min_scale: float,
        max_scale: float,
        perturbation: str = "additive",
        baseline: float | str = 0.0,
        noise_seed: int | None = None,
        utility_dtype: torch.dtype | None = None,
        deletion: bool = False,
        blur_sigma: float = DEFAULT_BLUR_SIGMA,
    ) -> None:
        super().__init__()
        if perturbation not in PERTURBATIONS:
            raise ConfigError(f"perturbation must be one of {PERTURBATIONS}, got {perturbation!r}.")
        apply_noise_scale(torch.zeros(1), min_scale, max_scale)  # validates the scales
        resolve_baseline(torch.zeros(1, 1, 4, 4), baseline, 1.0)  # validates the baseline
        self.noise_net = noise_net
        self.utility = freeze(utility)
        self.min_scale, self.max_scale = float(min_scale), float(max_scale)
        self.perturbation = perturbation
        self.baseline = baseline if isinstance(baseline, str) else float(baseline)
        self.noise_seed = noise_seed
        self.utility_dtype = utility_dtype
        self.deletion, self.blur_sigma = bool(deletion), float(blur_sigma)

    def train(self, mode: bool = True) -> UNoiseModel:
        super().train(mode)
        self.utility.eval()  # frozen: BatchNorm keeps its running statistics
        return self

    def _noise(self, image: torch.Tensor) -> torch.Tensor:
        if self.noise_seed is None:
            return torch.randn_like(image)
        generator = torch.Generator(device=image.device).manual_seed(self.noise_seed)
        return torch.randn(image.shape, generator=generator, device=image.device, dtype=image.dtype)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        tolerance = apply_tolerance(self.noise_net(image))  # (B, 1, H, W)
        baseline = resolve_baseline(image, self.baseline, self.blur_sigma)  # float or (B, C, H, W)
        perturbed = apply_perturbation(image, tolerance, self.min_scale, self.max_scale, self.perturbation,
                                       baseline, self._noise(image))  # (B, C, H, W)
        with torch.no_grad():
            clean = self._utility(image)  # (B, 1, H, W)
        if self.deletion:
            deleted = self._utility(tolerance * image + (1.0 - tolerance) * baseline)  # important pixels hidden
        else:
            deleted = clean
        return torch.cat([self._utility(perturbed), tolerance, perturbed[:, :1], clean, deleted], dim=1)  # (B, 5, H, W)

    def _utility(self, image: torch.Tensor) -> torch.Tensor:
        if self.utility_dtype is None:
            return self.utility(image)
        with torch.autocast(image.device.type, dtype=self.utility_dtype):
            return self.utility(image).float()  # (B, 1, H, W) logits


def freeze(network: torch.nn.Module) -> torch.nn.Module:
    """Eval mode and no gradient for every parameter; returns the same module."""
    network.eval()
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    return network


def compute_total_variation(tolerance: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels (voxels) of B, summed over the spatial axes:
    (B, 1, H, W) or (B, 1, X, Y, Z) -> scalar."""
    return sum(torch.diff(tolerance, dim=axis).abs().mean() for axis in range(2, tolerance.ndim))


class UNoiseLoss(torch.nn.Module):
    """Utility loss on the perturbed image plus the terms that make the noise as large as the utility allows.

    ``loss = utility_loss(SEG, target) + noise term + deletion_weight * softdice(DELETED, target)
    + tv_weight * TV(B)``, with the noise term ``-noise_weight * mean(log B)`` (``area: log``, the
    paper's) or ``noise_weight * mean(1 - B)`` (``area: l1``). Takes the (B, 5, H, W) output of
    :class:`UNoiseModel` and the label (B, 1, H, W) in {0, 1} (None with ``target: prediction``: label-free). The terms of the last call are kept in
    ``last_terms`` (``utility_loss``, ``noise_term``, ``deletion_term``, ``tv_term``, ``mean_tolerance``)
    for logging.

    Args:
        noise_weight: lambda (the authors: 1e-3).
        utility_loss: ``bce`` (the authors) or a callable ``(logits, target) -> loss``.
        eps: floor of B inside the log, for numerical safety.
        target: ``label`` (the paper) or ``prediction`` (the utility's binary clean prediction).
        area: ``log`` or ``l1``, see above.
        deletion_weight: weight of the deletion (destroyer) term; needs ``UNoiseModel(deletion=True)``.
        tv_weight: weight of the total variation of B.
    """

    def __init__(self, noise_weight: float = 1e-3, utility_loss: str | Callable = "bce", eps: float = 1e-6,
                 target: str = "label", area: str = "log", deletion_weight: float = 0.0, tv_weight: float = 0.0) -> None:
        super().__init__()
        for name, value in {"noise_weight (lambda)": noise_weight, "deletion_weight": deletion_weight,
                            "tv_weight": tv_weight}.items():
            if value < 0:
                raise ConfigError(f"{name} must be >= 0, got {value}.")
        if target not in TARGETS:
            raise ConfigError(f"target must be one of {TARGETS}, got {target!r}.")
        if area not in AREA_TERMS:
            raise ConfigError(f"area must be one of {AREA_TERMS}, got {area!r}.")
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
        utility_term = self.utility_loss(seg_logits, target)
        if self.area == "log":
            noise_term = -self.noise_weight * torch.log(tolerance.clamp_min(self.eps)).mean()
        else:
            noise_term = self.noise_weight * (1.0 - tolerance).mean()
        total = utility_term + noise_term
        deletion_term = torch.zeros((), device=outputs.device)
        if self.deletion_weight > 0:
            deleted = torch.sigmoid(outputs[:, DELETED : DELETED + 1])  # (B, 1, H, W)
            overlap = (deleted * target).flatten(1).sum(1)
            sizes = deleted.flatten(1).sum(1) + target.flatten(1).sum(1)
            deletion_term = self.deletion_weight * (2 * overlap / (sizes + 1.0)).mean()
            total = total + deletion_term
        tv_term = self.tv_weight * compute_total_variation(tolerance) if self.tv_weight > 0 else torch.zeros((), device=outputs.device)
        total = total + tv_term
        self.last_terms = {
            "utility_loss": float(utility_term.detach()),
            "noise_term": float(noise_term.detach()),
            "deletion_term": float(deletion_term.detach()),
            "tv_term": float(tv_term.detach()),
            "mean_tolerance": float(tolerance.detach().mean()),
        }
        return total


class UNoiseExplainer(torch.nn.Module):
    """Explain in one forward pass: (B, C, H, W) -> (B, 2, H, W) = [importance 1 - B, utility probability].

    Both networks are frozen (eval mode, no grad); this is the network of the inference config, where
    MONAI's ``SliceInferer`` runs it over every axial slice of a volume. ``channels_last`` runs both in
    the channels-last memory format (2x faster for the noise model on x86 CPUs, same values).
    """

    def __init__(self, noise_net: torch.nn.Module, utility: torch.nn.Module, channels_last: bool = False) -> None:
        super().__init__()
        self.noise_net, self.utility = freeze(noise_net), freeze(utility)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.to(memory_format=self.memory_format)

    def train(self, mode: bool = True) -> UNoiseExplainer:
        return super().train(False)  # always evaluate

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        image = image.contiguous(memory_format=self.memory_format)
        importance = importance_from_tolerance(apply_tolerance(self.noise_net(image)))  # (B, 1, H, W)
        probability = torch.sigmoid(self.utility(image))  # (B, 1, H, W)
        return torch.cat([importance, probability], dim=1)  # (B, 2, H, W)
