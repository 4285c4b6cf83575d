"""Gradient explainers of the utility from MONAI ``visualize``: Grad-CAM, saliency, SmoothGrad.

All three explain one score, the one a segmentation model's user cares about: the mean pancreas logit
over the utility's own predicted region (:class:`PancreasScore`; the U-Noise authors back-propagated one
ground-truth pixel's logit). Saliency and SmoothGrad maps are the gradient magnitude, scaled per slice to
[0, 1]; :meth:`SaliencyMap.attribution` gives the signed gradient for the sanity check's
without-absolute-value variant.
"""

from __future__ import annotations

import torch

from pipeline.errors import ConfigError
from monai.visualize import GradCAM, SmoothGrad, VanillaGrad


class PancreasScore(torch.nn.Module):
    """The utility as a one-score "classifier": mean pancreas logit over its predicted region.

    Slices where the utility predicts no pancreas score the mean logit of the whole slice. Always in eval
    mode: MONAI's CAM restores the wrapper's previous mode after its forward, and a wrapper left in train
    mode would switch the shared utility's BatchNorm to batch statistics for everything run after it.
    """

    def __init__(self, utility: torch.nn.Module) -> None:
        super().__init__()
        self.utility = utility
        self.eval()

    def train(self, mode: bool = True) -> PancreasScore:
        return super().train(False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits = self.utility(image)  # (B, 1, H, W)
        region = (logits > 0).float().detach()
        empty = region.flatten(1).sum(1) == 0  # (B,)
        region[empty] = 1.0
        return ((logits * region).flatten(1).sum(1) / region.flatten(1).sum(1))[:, None]  # (B, 1)


def _scale(maps: torch.Tensor) -> torch.Tensor:
    """Divide each (1, H, W) map (or (1, X, Y, Z) volume) by its largest magnitude: [0, 1] (or [-1, 1] for signed maps)."""
    peak = maps.abs().flatten(1).amax(1).clamp_min(1e-12).view(-1, *([1] * (maps.ndim - 1)))
    return maps / peak


class GradCAMMap:
    """Grad-CAM (MONAI) of the pancreas score at ``target_layer`` of the utility.

    Args:
        utility: the segmentation network (not modified; its parameters are not updated).
        target_layer: module name inside the utility; default (None) the module that outputs its deepest
            feature map (:func:`pipeline.explain.layers.find_feature_layer`: ``downs.3`` for 4-level presets).
        in_channels: the utility's input channels (to find the default layer).
    """

    def __init__(self, utility: torch.nn.Module, target_layer: str | None = None, in_channels: int = 1,
                 spatial_dims: int = 2) -> None:
        from pipeline.explain.layers import find_feature_layer

        target_layer = target_layer or find_feature_layer(utility, in_channels, spatial_dims)
        names = {name for name, _ in utility.named_modules()}
        if target_layer not in names:
            options = sorted(n for n in names if n and n.count(".") == 0)
            raise ConfigError(f"gradcam_layer {target_layer!r} is not a module of the utility; its top-level modules are "
                              f"{options} (default: the deepest feature map, {find_feature_layer(utility, in_channels, spatial_dims)!r}).")
        self.target_layer = target_layer
        utility.eval()
        self.cam = GradCAM(nn_module=PancreasScore(utility), target_layers=f"utility.{target_layer}")

    def __call__(self, image: torch.Tensor, label: torch.Tensor | None = None,
                 spacing: torch.Tensor | None = None) -> torch.Tensor:
        with torch.enable_grad():  # gradients w.r.t. activations only: works with frozen weights too
            maps = self.cam(image.detach().clone().requires_grad_(True), class_idx=0)  # (B, 1, H, W) in [0, 1]
        return maps.detach().clamp(0.0, 1.0)


class SaliencyMap:
    """Saliency (Simonyan et al. 2014, MONAI ``VanillaGrad``): |d score / d pixel|, largest over channels.

    Args:
        utility: the segmentation network (eval mode; its weights are not updated).
    """

    def __init__(self, utility: torch.nn.Module) -> None:
        utility.eval()
        self.score = PancreasScore(utility)
        self.gradient = VanillaGrad(self.score)

    def _gradients(self, image: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():  # MONAI's gradient classes take one slice at a time
            grads = [self.gradient(slice_[None].detach().clone(), index=0) for slice_ in image]
        return torch.cat(grads).detach()  # (B, C, H, W)

    def attribution(self, image: torch.Tensor) -> torch.Tensor:
        """Signed gradient summed over channels, scaled to [-1, 1] per slice: (B, 1, H, W)."""
        return _scale(self._gradients(image).sum(1, keepdim=True))

    def __call__(self, image: torch.Tensor, label: torch.Tensor | None = None,
                 spacing: torch.Tensor | None = None) -> torch.Tensor:
        return _scale(self._gradients(image).abs().amax(1, keepdim=True))  # (B, 1, H, W) in [0, 1]


class SmoothGradMap(SaliencyMap):
    """SmoothGrad (Smilkov et al. 2017, MONAI ``SmoothGrad``): gradients averaged over noisy copies.

    The map is MONAI's magnitude form, sqrt(mean(grad^2)) over ``samples`` copies with Gaussian noise of
    ``noise_level`` times the slice's intensity range; :meth:`attribution` averages the signed gradients.

    Args:
        utility: the segmentation network.
        samples: noisy copies per slice (MONAI default 25).
        noise_level: noise std as a share of the slice's max - min (MONAI default 0.15).
    """

    def __init__(self, utility: torch.nn.Module, samples: int = 25, noise_level: float = 0.15) -> None:
        super().__init__(utility)
        if samples < 1 or noise_level < 0:
            raise ConfigError(f"SmoothGrad needs samples >= 1 and noise_level >= 0, got {samples} and {noise_level}.")
        self.magnitude = SmoothGrad(self.score, stdev_spread=noise_level, n_samples=samples, magnitude=True, verbose=False)
        self.signed = SmoothGrad(self.score, stdev_spread=noise_level, n_samples=samples, magnitude=False, verbose=False)

    def _smooth(self, image: torch.Tensor, method: SmoothGrad) -> torch.Tensor:
        with torch.enable_grad():
            return torch.cat([method(slice_[None].detach().clone(), index=0) for slice_ in image]).detach()

    def attribution(self, image: torch.Tensor) -> torch.Tensor:
        return _scale(self._smooth(image, self.signed).sum(1, keepdim=True))

    def __call__(self, image: torch.Tensor, label: torch.Tensor | None = None,
                 spacing: torch.Tensor | None = None) -> torch.Tensor:
        return _scale(self._smooth(image, self.magnitude).amax(1, keepdim=True))
