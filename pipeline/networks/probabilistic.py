"""Probabilistic U-Net (Kohl et al., NeurIPS 2018, arXiv:1806.05034) from MONAI ``BasicUNet`` blocks.

A deterministic UNet (:class:`~pipeline.networks.presets.LevelUNet`) computes a feature map once; a latent
code ``z`` (``latent_dim`` numbers per image), broadcast over space and concatenated with the features,
goes through a few 1x1 convolutions to the logits. ``z`` comes from one of two axis-aligned Gaussians:

* the prior ``p(z | image)``, used at inference: each prior sample gives one plausible segmentation;
* the posterior ``q(z | image, label)``, used in training only: it sees the rater's label, and its sample
  reconstructs that label while ``KL(q || p)`` pulls the prior towards it.

Training minimises ``reconstruction(label, logits(z ~ q)) + beta * KL(q || p)`` (the negative ELBO), see
:class:`ProbabilisticUNetLoss`. Sampling draws from torch's global RNG: seed it (``torch.manual_seed`` or
``monai.utils.set_determinism``) for repeatable samples.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv
from monai.networks.nets.basic_unet import Down, TwoConv
from monai.networks.utils import one_hot
from torch.distributions import Independent, Normal, kl_divergence

from pipeline.errors import ConfigError
from pipeline.networks.presets import LevelUNet

ACT = ("relu", {"inplace": True})
NORM = ("batch", {"affine": True})


def _check_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}.")


def _check_levels(name: str, value: object, minimum: int) -> tuple[int, ...]:
    levels = tuple(value) if isinstance(value, (list, tuple)) else ()
    if len(levels) < minimum or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in levels):
        raise ConfigError(f"{name} needs >= {minimum} positive integers (top level first), got {value!r}.")
    return levels


class GaussianEncoder(torch.nn.Module):
    """Image (and label) -> axis-aligned Gaussian over the latent code: the prior or the posterior net.

    ``TwoConv`` then one ``Down`` per further level, global average pooling, a 1x1 conv to
    ``2 * latent_dim`` numbers: the mean and the log standard deviation.

    Shapes: (B, in_channels, *spatial) -> a distribution with batch shape (B,) and event shape (latent_dim,).
    """

    def __init__(self, spatial_dims: int, in_channels: int, channels: tuple[int, ...], latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        blocks = [TwoConv(spatial_dims, in_channels, channels[0], ACT, NORM, True)]
        blocks += [Down(spatial_dims, channels[i - 1], channels[i], ACT, NORM, True) for i in range(1, len(channels))]
        self.encoder = torch.nn.Sequential(*blocks)
        self.to_moments = Conv["conv", spatial_dims](channels[-1], 2 * latent_dim, kernel_size=1)
        # Zero init: prior and posterior both start as N(0, I), so KL(q || p) is exactly 0 at step 0 and grows only as
        # the nets learn. (The PyTorch port draws this layer's bias from N(0, 1): log_sigma up to ~3, a KL in the tens
        # that swamps a pixel-mean reconstruction loss.) The weights still get gradients: the pooled features are non-zero.
        torch.nn.init.zeros_(self.to_moments.weight)
        torch.nn.init.zeros_(self.to_moments.bias)

    def forward(self, inputs: torch.Tensor) -> Independent:
        encoding = self.encoder(inputs)  # (B, channels[-1], *spatial / 2**(levels - 1))
        pooled = encoding.mean(dim=tuple(range(2, encoding.ndim)), keepdim=True)  # (B, channels[-1], 1, ..., 1)
        moments = self.to_moments(pooled).flatten(1)  # (B, 2 * latent_dim)
        mu, log_sigma = moments.split(self.latent_dim, dim=1)  # (B, latent_dim) each
        return Independent(Normal(mu, log_sigma.exp()), 1)


class ProbabilisticUNet(torch.nn.Module):
    """Probabilistic U-Net: a UNet whose logits also depend on a latent code drawn per image.

    ``network(image)`` returns the logits of one prior sample (``prediction="sample"``) or of the prior mean
    (``prediction="mean"``, deterministic: what a run records, so validation, ``explain`` and ``evaluate`` see one
    repeatable segmentation), so the network drops in wherever a segmentation network is called (inferers, the
    utility). :meth:`sample` draws several
    segmentations from one backbone pass, :meth:`mean_prediction` decodes the prior mean, and
    :meth:`elbo_terms` gives what training needs. Sampling uses torch's global RNG (no generator argument):
    seed it for repeatable samples.

    Args:
        spatial_dims: 2 (slices) or 3 (volumes).
        in_channels: image channels.
        out_channels: logit channels: 1 for foreground vs background through a sigmoid (as our deterministic
            utility), C > 1 for C classes through a softmax.
        channels: backbone feature channels per level, top first, >= 2 entries, e.g. (16, 32, 64, 128).
        latent_dim: size of the latent code z (6 in the paper).
        head_channels: width of the backbone's feature map and of the 1x1 head convs; default ``channels[0]``.
        head_layers: 1x1 convs after concatenating z (ReLU between, the last one to ``out_channels``); 3 as in
            the paper.
        prior_channels: encoder channels per level of the prior and posterior nets; default ``channels``.
        label_channels: channels of the label given to the posterior; default ``out_channels``.
        prediction: what ``forward`` returns: ``sample`` (one prior sample) or ``mean`` (the prior mean).

    Shapes: image (B, in_channels, *spatial) -> logits (B, out_channels, *spatial), every spatial size
    divisible by ``2 ** (len(channels) - 1)`` (the prior and posterior nets pool ``len(prior_channels) - 1``
    times and need each size >= ``2 ** (len(prior_channels) - 1)``).

    Raises:
        ConfigError: an argument out of range, before anything is built.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        channels: tuple[int, ...],
        latent_dim: int = 6,
        head_channels: int | None = None,
        head_layers: int = 3,
        prior_channels: tuple[int, ...] | None = None,
        label_channels: int | None = None,
        prediction: str = "sample",
    ) -> None:
        super().__init__()
        if prediction not in ("sample", "mean"):
            raise ConfigError(f"prediction must be 'sample' or 'mean', got {prediction!r}.")
        self.prediction = prediction
        if spatial_dims not in (2, 3):
            raise ConfigError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}.")
        channels = _check_levels("channels", channels, 2)
        head_channels = channels[0] if head_channels is None else head_channels
        prior_channels = channels if prior_channels is None else _check_levels("prior_channels", prior_channels, 1)
        label_channels = out_channels if label_channels is None else label_channels
        for name, value in [("in_channels", in_channels), ("out_channels", out_channels), ("latent_dim", latent_dim),
                            ("head_channels", head_channels), ("head_layers", head_layers), ("label_channels", label_channels)]:
            _check_positive(name, value)
        self.spatial_dims, self.out_channels, self.latent_dim = spatial_dims, out_channels, latent_dim
        self.label_channels, self.divisor = label_channels, 2 ** (len(channels) - 1)

        self.backbone = LevelUNet(spatial_dims, in_channels, head_channels, channels)  # its 1x1 final conv projects the features
        self.prior = GaussianEncoder(spatial_dims, in_channels, prior_channels, latent_dim)
        self.posterior = GaussianEncoder(spatial_dims, in_channels + label_channels, prior_channels, latent_dim)
        conv = Conv["conv", spatial_dims]
        widths = [head_channels + latent_dim] + [head_channels] * (head_layers - 1)
        layers: list[torch.nn.Module] = []
        for width_in, width_out in zip(widths[:-1], widths[1:]):
            layers += [conv(width_in, width_out, kernel_size=1), torch.nn.ReLU(inplace=True)]
        self.head = torch.nn.Sequential(*layers, conv(widths[-1], out_channels, kernel_size=1))

    def _check_image(self, image: torch.Tensor) -> None:
        if image.ndim != self.spatial_dims + 2 or any(size % self.divisor for size in image.shape[2:]):
            raise ValueError(f"image must be (B, C, {', '.join(['S'] * self.spatial_dims)}) with every S divisible by "
                             f"{self.divisor}, got shape {tuple(image.shape)}; pad or crop it (e.g. monai DivisiblePad).")

    def decode(self, features: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Logits from backbone features (B, head_channels, *spatial) and codes z (B, latent_dim)."""
        z_map = z.view(*z.shape, *([1] * self.spatial_dims)).expand(-1, -1, *features.shape[2:])  # (B, latent_dim, *spatial)
        return self.head(torch.cat([features, z_map], dim=1))  # (B, out_channels, *spatial)

    def prior_distribution(self, image: torch.Tensor) -> Independent:
        """p(z | image): batch shape (B,), event shape (latent_dim,)."""
        return self.prior(image)

    def posterior_distribution(self, image: torch.Tensor, label: torch.Tensor) -> Independent:
        """q(z | image, label), label (B, label_channels, *spatial) in [0, 1] (binary or one-hot)."""
        if label.shape[0] != image.shape[0] or label.shape[1] != self.label_channels or label.shape[2:] != image.shape[2:]:
            raise ValueError(f"label must be (B, {self.label_channels}, *spatial) matching image {tuple(image.shape)}, "
                             f"got {tuple(label.shape)}.")
        # centred on 0 as the reference centres its one-hot labels, so an empty label is not an all-zero input
        return self.posterior(torch.cat([image, label.to(image.dtype) - 0.5], dim=1))

    def forward(self, image: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, out_channels, *spatial): one prior sample per image (global RNG), or the prior mean's. With a
        ``label``, :meth:`elbo_terms` (training calls it this way, so a ``DistributedDataParallel`` wrapper's
        forward runs and the gradients are synchronised)."""
        if label is not None:
            return self.elbo_terms(image, label)
        return self.mean_prediction(image) if self.prediction == "mean" else self.sample(image, 1)[0]

    def sample(self, image: torch.Tensor, count: int) -> torch.Tensor:
        """Logits (count, B, out_channels, *spatial) of ``count`` prior samples, from one backbone pass."""
        _check_positive("count", count)
        self._check_image(image)
        features = self.backbone(image)  # (B, head_channels, *spatial)
        prior = self.prior(image)
        return torch.stack([self.decode(features, prior.sample()) for _ in range(count)])  # one decode at a time: memory

    def mean_prediction(self, image: torch.Tensor) -> torch.Tensor:
        """Logits (B, out_channels, *spatial) decoded from the prior mean: deterministic."""
        self._check_image(image)
        return self.decode(self.backbone(image), self.prior(image).mean)

    def elbo_terms(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two terms of the negative ELBO, for training.

        Args:
            image: (B, in_channels, *spatial).
            label: the posterior's input, (B, label_channels, *spatial) in [0, 1] (binary or one-hot).

        Returns:
            Logits (B, out_channels, *spatial) from one reparameterised posterior sample (gradients reach the
            posterior through it), and the analytic KL(posterior || prior) per image, shape (B,), >= 0.
        """
        self._check_image(image)
        posterior = self.posterior_distribution(image, label)
        logits = self.decode(self.backbone(image), posterior.rsample())
        return logits, kl_divergence(posterior, self.prior(image))


UTILITY_OUTPUTS = ("segmentation", "uncertainty")
UNCERTAINTY_SLOPE = 10.0  # UncertaintyView's score per bit of predictive entropy


class UncertaintyView(torch.nn.Module):
    """A :class:`ProbabilisticUNet`'s predictive uncertainty, as a utility whose output U-Noise can explain.

    ``samples`` latent codes are fixed once (``z_k = mu + sigma * eps_k``, the ``eps_k`` drawn from ``seed``), so the
    uncertainty is a deterministic, differentiable function of the image: the same draws judge a clean slice and its
    perturbed copy. Per pixel, the samples' mean probability ``p`` gives the binary predictive entropy
    ``H(p) / ln 2`` in [0, 1] (1: the samples split evenly). ``forward`` returns the score ``10 (H - 0.5)`` (sigmoid
    above 0.5 where ``H`` > 0.5 bits), so a U-Noise model trained against this view learns which pixels, hidden,
    change *where the model is unsure*: the importance of the uncertainty itself.

    Args:
        network: the Probabilistic U-Net (one output channel).
        samples: latent draws per image.
        seed: seed of the draws.
    """

    def __init__(self, network: ProbabilisticUNet, samples: int = 16, seed: int = 0) -> None:
        super().__init__()
        if not isinstance(network, ProbabilisticUNet) or network.out_channels != 1:
            raise ConfigError("the uncertainty of a utility needs a Probabilistic U-Net with one output channel "
                              f"(unoise train-utility --kind probabilistic), got {type(network).__name__}.")
        _check_positive("samples", samples)
        self.network = network
        eps = torch.randn(samples, network.latent_dim, generator=torch.Generator().manual_seed(int(seed)))
        self.register_buffer("eps", eps, persistent=False)  # (samples, latent_dim)

    def predictive_entropy(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 1, *spatial) binary entropy of the samples' mean probability, in bits: [0, 1]."""
        self.network._check_image(image)
        features, prior = self.network.backbone(image), self.network.prior(image)
        mean_probability = torch.stack([torch.sigmoid(self.network.decode(features, prior.mean + prior.stddev * eps))
                                        for eps in self.eps]).mean(dim=0)  # (B, 1, *spatial)
        p = mean_probability.float().clamp(1e-6, 1 - 1e-6)  # float32: in bfloat16 1 - 1e-6 is 1, and 0 * log 0 is NaN
        return -(p * torch.log2(p) + (1 - p) * torch.log2(1 - p))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        # a bounded score, not logit(H), whose slope 1 / (H (1 - H)) is steep where the samples agree (H near 0), where
        # most pixels are; sigmoid(score) > 0.5 exactly where H > 0.5 bits
        return UNCERTAINTY_SLOPE * (self.predictive_entropy(image) - 0.5)  # (B, 1, *spatial)


def as_sampler(utility: torch.nn.Module) -> ProbabilisticUNet | None:
    """The Probabilistic U-Net behind a utility (itself, or an :class:`UncertaintyView` of it); None for others."""
    network = utility.network if isinstance(utility, UncertaintyView) else utility
    return network if isinstance(network, ProbabilisticUNet) else None


def utility_view(utility: torch.nn.Module, output: str, samples: int = 16) -> torch.nn.Module:
    """What a run explains of its utility: its ``segmentation`` (the utility itself) or, for a Probabilistic U-Net,
    its ``uncertainty`` (:class:`UncertaintyView` with ``samples`` draws).

    Raises:
        ConfigError: an unknown output, or ``uncertainty`` of a utility that does not sample.
    """
    if output not in UTILITY_OUTPUTS:
        raise ConfigError(f"utility_output must be one of {list(UTILITY_OUTPUTS)}, got {output!r}.")
    return utility if output == "segmentation" else UncertaintyView(utility, samples)


class ProbabilisticUNetLoss(torch.nn.Module):
    """Negative ELBO of a :class:`ProbabilisticUNet`: ``reconstruction + beta * beta_scale * mean_B KL``.

    The reconstruction is ``reconstruction(logits, label)`` when a loss module is given (the bundle gives
    ``DiceCELoss``, as the deterministic utility trains with: on a small organ, BCE alone learned to predict
    background), else the mean over pixels (and batch) of BCE-with-logits (``out_channels`` 1) or
    cross-entropy (``out_channels`` > 1), as MONAI losses. The paper sums it over pixels instead; with a mean,
    its weighting is ``beta = 1 / pixels``, which is what ``beta=None`` (the default) uses for each batch, so the
    balance does not depend on the image size. Give a number to weight the KL yourself (larger: a prior closer
    to the posterior, less diverse samples).

    ``kl_warmup_steps`` ramps ``beta_scale`` linearly from 0 to 1 over that many calls of :meth:`step` (call it
    once per optimiser step; ``iteration`` counts them and is not saved in a state_dict).

    After each call, ``last_reconstruction``, ``last_kl`` (mean over the batch) and ``last_beta`` (the weight
    used, scale included) hold detached values for logging. Which rater's label to use is the data's choice.

    Example:
        ``loss = loss_function(network, image, label)``, ``loss.backward()``, ``optimiser.step()``,
        ``loss_function.step()``.
    """

    def __init__(self, beta: float | None = None, kl_warmup_steps: int = 0,
                 reconstruction: torch.nn.Module | None = None) -> None:
        super().__init__()
        if reconstruction is not None and not callable(reconstruction):
            raise ConfigError(f"reconstruction must be a loss module such as monai.losses.DiceCELoss, got {reconstruction!r}.")
        self.reconstruction = reconstruction
        if beta is not None and (isinstance(beta, bool) or not isinstance(beta, (int, float)) or beta < 0):
            raise ConfigError(f"beta must be None (the paper's 1 / pixels) or a number >= 0, got {beta!r}.")
        if isinstance(kl_warmup_steps, bool) or not isinstance(kl_warmup_steps, int) or kl_warmup_steps < 0:
            raise ConfigError(f"kl_warmup_steps must be an integer >= 0, got {kl_warmup_steps!r}.")
        self.beta, self.kl_warmup_steps, self.iteration = beta, kl_warmup_steps, 0
        self.last_reconstruction = self.last_kl = self.last_beta = torch.tensor(float("nan"))

    @property
    def last_terms(self) -> dict[str, float]:
        """The last batch's parts, for :class:`pipeline.handlers.LossTermsHandler` (``train_reconstruction``...)."""
        return {"reconstruction": float(self.last_reconstruction), "kl": float(self.last_kl), "beta": float(self.last_beta)}

    @property
    def beta_scale(self) -> float:
        """The warm-up factor in [0, 1]: ``iteration / kl_warmup_steps``, 1 without warm-up."""
        return 1.0 if self.kl_warmup_steps == 0 else min(1.0, self.iteration / self.kl_warmup_steps)

    def step(self) -> None:
        """Advance the KL warm-up by one optimiser step."""
        self.iteration += 1

    def forward(self, network: ProbabilisticUNet, image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """Scalar loss for one batch.

        Args:
            network: the network being trained.
            image: (B, in_channels, *spatial).
            label: (B, 1, *spatial) in {0, 1} for ``out_channels`` 1; for C > 1 classes either class indices
                (B, 1, *spatial) or one-hot (B, C, *spatial). The posterior gets it one-hot unless its
                ``label_channels`` equal the label's channels.
        """
        core = getattr(network, "module", network)  # the network under a DistributedDataParallel wrapper
        if core.out_channels == 1:
            target = posterior_label = label.to(image.dtype)
        else:
            indices = label if label.shape[1] == 1 else label.argmax(dim=1, keepdim=True)  # (B, 1, *spatial)
            target = indices[:, 0].long()  # (B, *spatial) class indices for cross-entropy
            posterior_label = label if label.shape[1] == core.label_channels else one_hot(indices, core.out_channels)
        logits, kl = network(image, posterior_label)  # the wrapper's forward: elbo_terms
        if self.reconstruction is not None:  # e.g. DiceCELoss(sigmoid=True), or (softmax=True, to_onehot_y=True)
            reconstruction = self.reconstruction(logits, label.to(logits.dtype) if core.out_channels == 1 else label)
        elif core.out_channels == 1:
            reconstruction = F.binary_cross_entropy_with_logits(logits, target)
        else:
            reconstruction = F.cross_entropy(logits, target)
        beta = (1.0 / logits[0, 0].numel() if self.beta is None else self.beta) * self.beta_scale
        kl_mean = kl.mean()
        self.last_reconstruction, self.last_kl = reconstruction.detach(), kl_mean.detach()
        self.last_beta = torch.tensor(beta)
        return reconstruction + beta * kl_mean
