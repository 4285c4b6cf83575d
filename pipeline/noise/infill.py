"""What hidden pixels become: the infills shared by noise training (``replace`` perturbation) and evaluation.

Pure torch, batched over slices (B, C, H, W). Every infill fills the pixels of a boolean ``hidden`` mask
(B, 1, H, W) and leaves the others untouched:

- ``blur``: the slice blurred with a Gaussian of ``blur_sigma`` pixels (the default: a hidden region
  keeps the slice's low frequencies, not its edges or texture; Fong & Vedaldi 2017);
- ``floor``: 0, the bottom of the HU window (for the pancreas window, also the value of fat);
- ``mean``: the mean over the slice's body pixels;
- ``noise``: Gaussian noise with the mean and standard deviation of the body pixels;
- ``road``: noisy linear imputation (Rong et al. 2022, ROAD): each hidden pixel is the weighted mean of
  its 8 neighbours (weights 1/6 side, 1/12 corner), solved jointly for all hidden pixels with conjugate
  gradients, plus Gaussian noise of ``road_noise`` std. It fills a hole from its rim, so the shape of the
  hidden set leaks less than with a constant.

An infill is named by a *spec*: one of ``INFILLS``, or ``blur:<sigma>`` for a blur of another sigma (pixels),
e.g. ``blur:8``. Training draws one spec per slice from a list (:func:`draw_fill`); the evaluation judges every
map under each spec it is given.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers import gaussian_1d, separable_filtering
import torch.nn.functional as F

from pipeline.errors import ConfigError

INFILLS = ("blur", "floor", "mean", "noise", "road")
DEFAULT_BLUR_SIGMA = 4.0  # pixels
DEFAULT_ROAD_NOISE = 0.01  # std in [0, 1] intensity units


def apply_blur(image: torch.Tensor, sigma: float = DEFAULT_BLUR_SIGMA) -> torch.Tensor:
    """Separable Gaussian blur of each channel, replicate padding: (B, C, H, W) or (B, C, X, Y, Z), same shape out.

    MONAI's ``separable_filtering`` with its sampled, normalised ``gaussian_1d`` kernel reaching 3 sigma.

    Args:
        image: slices (2D) or patches (3D), any range.
        sigma: standard deviation in pixels or voxels (> 0).
    """
    if sigma <= 0:
        raise ConfigError(f"blur sigma must be > 0 pixels, got {sigma}.")
    spatial = image.ndim - 2
    if spatial not in (2, 3):
        raise ValueError(f"apply_blur takes (B, C, H, W) or (B, C, X, Y, Z), got {tuple(image.shape)}.")
    kernel_dtype = torch.float64 if image.dtype == torch.float64 else torch.float32
    kernel = gaussian_1d(torch.tensor(float(sigma), dtype=kernel_dtype), truncated=3.0, approx="sampled", normalize=True)
    return separable_filtering(image, [kernel.to(image.device)] * spatial, mode="replicate")


def _body_stats(image: torch.Tensor, body: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of each slice's body pixels (the whole slice without a body mask): (B, C, 1, 1) each."""
    weights = torch.ones_like(image[:, :1]) if body is None else body.to(image.dtype)  # (B, 1, spatial...)
    dims = tuple(range(2, image.ndim))  # every spatial axis: per slice in 2D, per volume in 3D
    count = weights.sum(dim=dims, keepdim=True).clamp_min(1.0)
    mean = (image * weights).sum(dim=dims, keepdim=True) / count
    var = (((image - mean) ** 2) * weights).sum(dim=dims, keepdim=True) / count
    return mean, var.sqrt()


_ROAD_KERNEL = torch.tensor([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0.0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]])


def apply_linear_imputation(
    image: torch.Tensor, hidden: torch.Tensor, iterations: int = 400, tolerance: float = 1e-5
) -> torch.Tensor:
    """ROAD's linear imputation without the noise: hidden pixels = weighted mean of their neighbours.

    Solves ``v_i - sum_j K_ij v_j = 0`` for every hidden pixel i (known pixels fixed; outside the slice
    counts as known 0) with batched conjugate gradients; the system is symmetric positive definite
    because every hidden region touches a known pixel or the border.

    Args:
        image: (B, C, H, W).
        hidden: bool (B, 1, H, W).
        iterations: CG iterations at most.
        tolerance: stop when every slice's residual norm is below this times its right-hand side's.

    Returns:
        (B, C, H, W): ``image`` with the hidden pixels imputed.
    """
    batch, channels = image.shape[:2]
    mask = hidden.to(image.dtype).expand_as(image).reshape(batch * channels, 1, *image.shape[-2:])
    known = image.reshape(batch * channels, 1, *image.shape[-2:]) * (1 - mask)
    kernel = _ROAD_KERNEL.to(image.device, image.dtype).view(1, 1, 3, 3)

    def operator(values: torch.Tensor) -> torch.Tensor:  # A v = v - P K P v on the hidden pixels
        return mask * (values - F.conv2d(values * mask, kernel, padding=1))

    def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a * b).flatten(1).sum(1).view(-1, 1, 1, 1)

    rhs = mask * F.conv2d(known, kernel, padding=1)  # (N, 1, H, W): what the known neighbours contribute
    weight = apply_blur(1 - mask, 8.0)  # start from known pixels only (normalised convolution)
    solution = mask * torch.where(weight > 1e-3, apply_blur(known, 8.0) / weight.clamp_min(1e-3), torch.zeros_like(weight))
    residual = rhs - operator(solution)
    direction = residual.clone()
    rs_old = dot(residual, residual)
    stop = (tolerance**2) * dot(rhs, rhs).clamp_min(1e-12)
    for _ in range(iterations):
        if bool((rs_old <= stop).all()):
            break
        a_direction = operator(direction)
        alpha = rs_old / dot(direction, a_direction).clamp_min(1e-20)
        solution = solution + alpha * direction
        residual = residual - alpha * a_direction
        rs_new = dot(residual, residual)
        direction = residual + (rs_new / rs_old.clamp_min(1e-20)) * direction
        rs_old = rs_new
    filled = known + mask * solution
    return filled.reshape(image.shape)


def parse_infill(spec: str, blur_sigma: float = DEFAULT_BLUR_SIGMA) -> tuple[str, float]:
    """``"blur"``, ``"blur:8"``, ``"mean"``... -> (infill name, blur sigma in pixels); ConfigError for anything else.

    Args:
        spec: an infill of ``INFILLS``, or ``blur:<sigma>`` with sigma > 0 pixels.
        blur_sigma: the sigma of a plain ``blur``.
    """
    if not isinstance(spec, str):
        raise ConfigError(f"an infill must be one of {INFILLS} or 'blur:<sigma>', got {spec!r}.")
    name, _, sigma = spec.partition(":")
    if name not in INFILLS or (sigma and name != "blur"):
        raise ConfigError(f"infill {spec!r} is not one of {INFILLS} or 'blur:<sigma>' (e.g. 'blur:8').")
    if not sigma:
        return name, float(blur_sigma)
    try:
        value = float(sigma)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise ConfigError(f"infill {spec!r}: the blur sigma after ':' must be a number > 0 (pixels), e.g. 'blur:8'.")
    return name, value


def fill_values(
    image: torch.Tensor,
    infill: str = "blur",
    body: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    blur_sigma: float = DEFAULT_BLUR_SIGMA,
) -> torch.Tensor:
    """What every pixel would become if hidden, for the infills that do not depend on the hidden set.

    Args:
        image: (B, C, H, W) or (B, C, X, Y, Z), windowed to [0, 1]; not modified.
        infill: a spec of :func:`parse_infill` other than ``road`` (ROAD fills from the hole's rim).
        body: (B, 1, ...) body mask for the ``mean`` / ``noise`` statistics; None: the whole slice.
        generator: CPU generator for ``noise``.
        blur_sigma: sigma of a plain ``blur``.

    Returns:
        Tensor shaped like ``image``.
    """
    name, sigma = parse_infill(infill, blur_sigma)
    if name == "blur":
        return apply_blur(image, sigma)
    if name == "floor":
        return torch.zeros_like(image)
    if name == "mean":
        return _body_stats(image, body)[0].expand_as(image)
    if name == "noise":
        mean, std = _body_stats(image, body)
        return mean + std * torch.randn(image.shape, generator=generator, dtype=image.dtype).to(image.device)
    raise ConfigError(f"the {name} infill depends on the hidden pixels (it fills a hole from its rim) and cannot be "
                      f"drawn per slice; use one of {tuple(i for i in INFILLS if i != 'road')} or 'blur:<sigma>'.")


def draw_fill(
    image: torch.Tensor,
    infills: Sequence[str],
    body: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    blur_sigma: float = DEFAULT_BLUR_SIGMA,
    per_slice: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one infill per slice (or one for the batch) from ``infills`` and return what each slice's pixels become.

    Args:
        image: (B, C, H, W) or (B, C, X, Y, Z) windowed to [0, 1]; not modified.
        infills: specs of :func:`fill_values`, drawn uniformly.
        body: (B, 1, ...) body masks for ``mean`` / ``noise``; None: whole slices.
        generator: CPU generator of the draws and of the ``noise`` infill (seeded: repeatable).
        blur_sigma: sigma of a plain ``blur``.
        per_slice: one draw per slice; False: one draw for the whole batch (per step).

    Returns:
        ``(values, drawn)``: values shaped like ``image``; drawn (B,) long, the index into ``infills`` per slice.
    """
    if not infills:
        raise ConfigError("the list of infills to draw from is empty; give at least one, e.g. ['blur'].")
    batch = image.shape[0]
    picks = torch.randint(len(infills), (batch if per_slice else 1,), generator=generator).expand(batch)  # (B,)
    values = torch.empty_like(image)
    for index in picks.unique().tolist():
        rows = (picks == index).nonzero().flatten().to(image.device)  # the slices that drew this infill
        part_body = None if body is None else body[rows]
        values[rows] = fill_values(image[rows], infills[index], part_body, generator, blur_sigma)
    return values, picks.clone()


def apply_infill(
    image: torch.Tensor,
    hidden: torch.Tensor,
    infill: str = "blur",
    body: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    blur_sigma: float = DEFAULT_BLUR_SIGMA,
    road_noise: float = DEFAULT_ROAD_NOISE,
    blurred: torch.Tensor | None = None,
) -> torch.Tensor:
    """Replace the ``hidden`` pixels of ``image`` by an infill; the others keep their values.

    Args:
        image: slices windowed to [0, 1], (B, C, H, W), or volumes (B, C, X, Y, Z); not modified.
        hidden: bool (B, 1, ...) like ``image``, broadcast over C.
        infill: a spec of :func:`parse_infill`: one of ``INFILLS`` (see the module docstring) or ``blur:<sigma>``.
        body: (B, 1, H, W) body mask for the ``mean`` / ``noise`` statistics; None: the whole slice.
        generator: CPU generator for ``noise`` and ``road`` (seeded: repeatable curves).
        blur_sigma: ``blur`` sigma in pixels.
        road_noise: std of the noise ROAD adds to imputed pixels.
        blurred: the ``blur`` spec's blurred image if the caller has it (saves the blur per curve point).

    Returns:
        (B, C, H, W) tensor.
    """
    name, sigma = parse_infill(infill, blur_sigma)
    if hidden.ndim != image.ndim or hidden.shape[0] != image.shape[0] or hidden.shape[2:] != image.shape[2:]:
        raise ValueError(f"hidden mask {tuple(hidden.shape)} does not match image {tuple(image.shape)}.")
    if name == "road" and image.ndim != 4:
        raise ConfigError("the road infill (ROAD's linear imputation) is built for 2D slices; in 3D use blur, floor, mean or noise.")
    hidden = hidden.bool()
    if name == "blur" and blurred is not None:
        values = blurred
    elif name != "road":
        values = fill_values(image, infill, body, generator, sigma)
    else:
        noise = torch.randn(image.shape, generator=generator, dtype=image.dtype).to(image.device)
        values = apply_linear_imputation(image, hidden) + road_noise * noise
    return torch.where(hidden, values, image)  # (B, C, H, W)


__all__ = ["DEFAULT_BLUR_SIGMA", "DEFAULT_ROAD_NOISE", "INFILLS", "apply_blur", "apply_infill",
           "apply_linear_imputation", "draw_fill", "fill_values", "parse_infill"]
