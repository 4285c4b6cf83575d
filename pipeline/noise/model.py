"""The U-Noise method in pure torch: noise scale, perturbation, importance map (the loss: :mod:`pipeline.noise.loss`).

The noise model's logits give the tolerance B = sigmoid(logits) in (0, 1) per pixel. The noise scale is
``sigma = min_scale + (max_scale - min_scale) * B`` and the perturbed image is:

- ``additive`` (the paper): ``x~ = x + sigma * eps``;
- ``replace``: ``x~ = (1 - B) * x + B * (baseline + sigma * eps)``. The pixel is blended towards noise
  around a baseline in proportion to B, so B = 1 means "this pixel carries no information". The
  baseline is a constant, or an infill of :mod:`pipeline.noise.infill` (``blur``, ``blur:8``, ``mean``,
  ``noise``, ``floor``), or a list of them, one drawn per slice (or per step): a map learned toward one
  infill ranks "pixels whose blurring hurts", one learned toward many ranks what the model needs whatever
  the hidden pixels become.

with ``eps ~ N(0, 1)``. Two objectives use the map:

- ``blend`` (the paper's form): the perturbed image above, the utility's loss on it plus an area term.
- ``curves``: the faithfulness curves the evaluation draws, in expectation. Per slice a share p ~ U(0, 1)
  of the body is kept, the pixels of highest importance, through a soft top-p mask
  ``sigmoid((s - t_p) / (T * std(s)))`` on the importance logits s (t_p their (1 - p) quantile in the
  body, T ``rank_temperature``); the rest of the body takes the drawn infill, and the utility must keep its
  clean prediction (soft dice). With ``deletion_weight`` the mirror: the top-q (q ~ U(0, 1)) hidden with the
  same infill, and the soft dice with the target must fall. These terms train the ranking only; a bound
  term keeps the logits within +-``LOGIT_BOUND`` (so 1 - B keeps distinct values in float32), and the area
  term pushes B up everywhere; at the default weight the map stays far from sparse (a ranking, not a share).

The ``blend`` loss is the frozen utility's loss on ``x~`` against a target (``label``, the
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

from collections.abc import Sequence

import torch

from pipeline.errors import ConfigError, check_choice
from pipeline.networks.probabilistic import UncertaintyView, as_sampler
from pipeline.noise.infill import DEFAULT_BLUR_SIGMA, apply_blur, draw_fill, parse_infill

PERTURBATIONS = ("additive", "replace")
TARGETS = ("label", "prediction")
AREA_TERMS = ("log", "l1")
OBJECTIVES = ("blend", "curves")
# |logit| of B beyond which the ``curves`` objective pulls back: only ranks are trained there, and unbounded logits
# saturate 1 - B to exactly 1 in float32 (measured: logits of -33 after 9 epochs), which ties the top pixels' ranks
LOGIT_BOUND = 6.0
INFILL_DRAWS = ("slice", "step")
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


def parse_baseline(baseline: float | str | Sequence[str], blur_sigma: float = DEFAULT_BLUR_SIGMA) -> float | tuple[str, ...]:
    """A constant, or the tuple of infill specs to draw from (``"blur"`` -> ``("blur",)``); ConfigError otherwise."""
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return float(baseline)
    specs = (baseline,) if isinstance(baseline, str) else tuple(baseline) if isinstance(baseline, (list, tuple)) else None
    if not specs:
        raise ConfigError(f"baseline must be a number, an infill ('blur', 'blur:8', 'mean', 'noise', 'floor') or a "
                          f"non-empty list of infills, got {baseline!r}.")
    for spec in specs:
        try:
            name, _ = parse_infill(spec, blur_sigma)
        except ConfigError as err:
            raise ConfigError(f"baseline: {err}") from err
        if name == "road":
            raise ConfigError("baseline 'road' (ROAD's linear imputation) is too slow to draw every step and is held out "
                              "of training as the evaluation's test of generalisation; train with blur, mean, noise or floor.")
    return specs


def resolve_baseline(image: torch.Tensor, baseline: float | str | Sequence[str], blur_sigma: float = DEFAULT_BLUR_SIGMA,
                     body: torch.Tensor | None = None, generator: torch.Generator | None = None,
                     per_slice: bool = True) -> torch.Tensor | float:
    """What ``replace`` blends towards: a constant, or the drawn infill of each slice, shaped like ``image``.

    Args:
        image: (B, C, H, W) or (B, C, X, Y, Z) windowed to [0, 1].
        baseline: see :func:`parse_baseline`.
        blur_sigma: sigma of a plain ``blur``.
        body: (B, 1, ...) body masks for the ``mean`` / ``noise`` statistics; None: whole slices.
        generator: CPU generator of the draws (None: the global one).
        per_slice: one infill per slice; False: one per call (per step).
    """
    parsed = parse_baseline(baseline, blur_sigma)
    if isinstance(parsed, float):
        return parsed
    if len(parsed) == 1 and parsed[0] == "blur":
        return apply_blur(image, blur_sigma)
    return draw_fill(image, parsed, body, generator, blur_sigma, per_slice)[0]


def apply_rank_mask(scores: torch.Tensor, region: torch.Tensor, fractions: torch.Tensor, temperature: float) -> torch.Tensor:
    """Soft mask of the top ``fractions`` of each slice's ``region`` by score: 1 on the top, 0 below, 0 outside.

    ``sigmoid((scores - t) / (temperature * std))`` with t the (1 - p) quantile of the scores inside the
    region and std their spread there (both without gradient): a scale-free soft top-p, so the network
    cannot sharpen or blur the mask by scaling its logits; the gradient moves pixels across the threshold.

    Args:
        scores: (B, 1, spatial...) importance logits (higher: more important).
        region: (B, 1, spatial...) mask of the ranked pixels (the body), {0, 1}.
        fractions: (B,) shares p in [0, 1] of each slice's region to select.
        temperature: width of the soft edge in standard deviations of the scores (> 0).

    Returns:
        (B, 1, spatial...) in [0, 1], 0 outside ``region``.
    """
    if not temperature > 0:
        raise ConfigError(f"rank_temperature must be > 0, got {temperature}.")
    inside = region > 0.5
    thresholds, spreads = [], []
    for row in range(scores.shape[0]):
        values = scores[row][inside[row]].detach().float()  # the region's scores of this slice
        if values.numel() == 0:
            values = scores[row].detach().float().flatten()
        spread = values.std(unbiased=False) if values.numel() > 1 else values.new_tensor(1.0)
        chosen = round(float(fractions[row]) * values.numel())  # pixels above the threshold
        # the largest unchosen score (at 0.5 on the soft edge); all chosen: below the smallest
        thresholds.append(torch.kthvalue(values, values.numel() - chosen).values if chosen < values.numel()
                          else values.min() - spread.clamp_min(1e-6))
        spreads.append(spread)
    shape = (-1,) + (1,) * (scores.ndim - 1)
    threshold = torch.stack(thresholds).view(shape).to(scores.dtype)  # (B, 1, 1, 1)
    spread = torch.stack(spreads).clamp_min(1e-6).view(shape).to(scores.dtype)
    soft = torch.sigmoid((scores - threshold) / (temperature * spread))  # (B, 1, spatial...)
    return soft * inside.to(scores.dtype)


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

    ``forward(image, body=None)`` returns (B, 5, H, W), channels (named by the module constants):

    0. ``SEG``: the utility's logits on the perturbed image (``blend``) or on the image with its top-p
       body pixels kept and the rest hidden (``curves``),
    1. ``TOLERANCE``: B,
    2. ``PERTURBED``: the perturbed image (first input channel),
    3. ``CLEAN``: the utility's logits on the clean image (no gradient; the ``prediction`` target),
    4. ``DELETED``: the utility's logits on the complement ``B * x + (1 - B) * baseline`` (``blend``) or on
       the image with its top-q body pixels hidden (``curves``), with ``deletion``; a copy of ``CLEAN`` without it.

    The utility stays frozen: its parameters do not require grad, and ``train()`` leaves it in eval mode,
    so its BatchNorm statistics are never updated. Gradients reach the noise model through the utility.

    Args:
        noise_net: maps (B, C, H, W) to one logit channel.
        utility: the trained segmentation network (frozen here, in place).
        min_scale, max_scale, perturbation: see :func:`apply_perturbation`.
        baseline: what hidden pixels become: a number, an infill spec or a list of them (see
            :func:`parse_baseline`); a list draws one per slice (``infill_draw: slice``) or per call (``step``).
        noise_seed: draw the noise, the infills and the shares from a generator seeded with this value on
            every call (repeatable validation); None draws from the global generator.
        utility_dtype: run the frozen utility's forward (and so its part of the backward) under autocast
            to this dtype, e.g. ``torch.bfloat16`` on CPUs with bf16 instructions; the noise model, the
            perturbation and the outputs stay float32. None: no autocast here.
        deletion: also run the utility with the important pixels hidden (for :class:`UNoiseLoss` ``deletion_weight``).
        blur_sigma: sigma of the ``blur`` baseline, pixels.
        objective: ``blend`` or ``curves`` (module docstring).
        infill_draw: ``slice`` or ``step``, for a list of infills.
        rank_temperature: the soft top-p's edge, in standard deviations of the importance logits (``curves``).
    """

    def __init__(
        self,
        noise_net: torch.nn.Module,
        utility: torch.nn.Module,
        min_scale: float,
        max_scale: float,
        perturbation: str = "additive",
        baseline: float | str | Sequence[str] = 0.0,
        noise_seed: int | None = None,
        utility_dtype: torch.dtype | None = None,
        deletion: bool = False,
        blur_sigma: float = DEFAULT_BLUR_SIGMA,
        objective: str = "blend",
        infill_draw: str = "slice",
        rank_temperature: float = 0.1,
    ) -> None:
        super().__init__()
        check_choice("perturbation", perturbation, PERTURBATIONS)
        check_choice("objective", objective, OBJECTIVES)
        check_choice("infill_draw", infill_draw, INFILL_DRAWS)
        if objective == "curves" and perturbation != "replace":
            raise ConfigError("objective 'curves' hides pixels: it needs perturbation 'replace'.")
        if not rank_temperature > 0:
            raise ConfigError(f"rank_temperature must be > 0, got {rank_temperature}.")
        apply_noise_scale(torch.zeros(1), min_scale, max_scale)  # validates the scales
        parsed = parse_baseline(baseline, blur_sigma)  # validates the baseline
        self.noise_net = noise_net
        self.utility = freeze(utility)
        self.min_scale, self.max_scale = float(min_scale), float(max_scale)
        self.perturbation = perturbation
        self.baseline = parsed if isinstance(parsed, float) else list(parsed)
        self.noise_seed = noise_seed
        self.utility_dtype = utility_dtype
        self.deletion, self.blur_sigma = bool(deletion), float(blur_sigma)
        self.objective, self.infill_draw, self.rank_temperature = objective, infill_draw, float(rank_temperature)

    def train(self, mode: bool = True) -> UNoiseModel:
        super().train(mode)
        self.utility.eval()  # frozen: BatchNorm keeps its running statistics
        return self

    def _generator(self) -> torch.Generator | None:
        return None if self.noise_seed is None else torch.Generator().manual_seed(self.noise_seed)

    def forward(self, image: torch.Tensor, body: torch.Tensor | None = None) -> torch.Tensor:
        generator = self._generator()  # CPU: draws of infills, shares and noise alike, on any device
        scores = -self.noise_net(image)  # (B, 1, H, W) importance logits
        tolerance = apply_tolerance(-scores)  # (B, 1, H, W)
        baseline = resolve_baseline(image, self.baseline, self.blur_sigma, body, generator, self.infill_draw == "slice")
        noise = torch.randn(image.shape, generator=generator, dtype=image.dtype).to(image.device)
        with torch.no_grad():
            clean = self._utility(image)  # (B, 1, H, W)
        if self.objective == "blend":
            perturbed = apply_perturbation(image, tolerance, self.min_scale, self.max_scale, self.perturbation,
                                           baseline, noise)  # (B, C, H, W)
            hide = 1.0 - tolerance  # the complement: the important pixels hidden
        else:
            region = torch.ones_like(tolerance) if body is None else (body > 0.5).to(image.dtype)  # (B, 1, H, W)
            shares = torch.rand(image.shape[0], generator=generator)  # (B,) visible share p per slice
            keep_top = apply_rank_mask(scores, region, shares, self.rank_temperature)
            hidden = region - keep_top  # the body below the top-p
            fill = baseline + apply_noise_scale(tolerance, self.min_scale, self.max_scale) * noise
            perturbed = (1.0 - hidden) * image + hidden * fill  # (B, C, H, W)
            if self.deletion:
                hide = apply_rank_mask(scores, region, torch.rand(image.shape[0], generator=generator), self.rank_temperature)
        if self.deletion:
            fill = baseline if self.objective == "blend" else fill
            deleted = self._utility((1.0 - hide) * image + hide * fill)  # important pixels hidden
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


class UNoiseExplainer(torch.nn.Module):
    """Explain in one forward pass: (B, C, H, W) -> (B, 2, H, W) = [importance 1 - B, the utility's logit].

    A Probabilistic U-Net utility (or a view of its uncertainty) gives a third channel: (B, 3, H, W) = [importance,
    the logit of its prior-mean segmentation, its predictive entropy in bits, :class:`pipeline.networks.UncertaintyView`].

    The logit, not the probability, so that a sliding window averages what a segmentation bundle's inferer averages
    (for a two-class softmax, the target logit is the difference of the two outputs: its window average is the
    difference of theirs); explain's postprocessing then takes the sigmoid, before ``Invertd`` as bundles do.

    Both networks are frozen (eval mode, no grad); this is the network of the inference config, where
    MONAI's ``SliceInferer`` runs it over every axial slice of a volume. ``channels_last`` runs both in
    the channels-last memory format (2x faster for the noise model on x86 CPUs, same values).
    """

    def __init__(self, noise_net: torch.nn.Module, utility: torch.nn.Module, channels_last: bool = False,
                 uncertainty_samples: int = 16) -> None:
        super().__init__()
        self.noise_net, self.utility = freeze(noise_net), freeze(utility)
        sampler = as_sampler(utility)  # a Probabilistic U-Net (or a view of its uncertainty): three outputs
        self.sampler = None if sampler is None else freeze(sampler)
        view = utility if isinstance(utility, UncertaintyView) else UncertaintyView(sampler, uncertainty_samples) if sampler else None
        self.spread = None if view is None else freeze(view)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.to(memory_format=self.memory_format)

    def train(self, mode: bool = True) -> UNoiseExplainer:
        return super().train(False)  # always evaluate

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        image = image.contiguous(memory_format=self.memory_format)
        importance = importance_from_tolerance(apply_tolerance(self.noise_net(image)))  # (B, 1, H, W)
        if self.sampler is None:
            return torch.cat([importance, self.utility(image).to(importance.dtype)], dim=1)  # (B, 2, H, W)
        segmentation = self.sampler.mean_prediction(image).to(importance.dtype)  # logit of the prior mean
        return torch.cat([importance, segmentation, self.spread.predictive_entropy(image).to(importance.dtype)], dim=1)
