"""The utility as U-Noise sees it: one logit of the explained class, from any segmentation network.

Our own utilities output one pancreas logit. A model-zoo bundle's network may output several classes
(softmax) or several independent ones (sigmoid), or a list (deep supervision). :class:`TargetLogit`
turns any of them into the one-channel logit of the class being explained, so the noise model, the
losses, the explainers and the evaluation read every utility alike.
"""

from __future__ import annotations

import torch

from pipeline.errors import ConfigError

ACTIVATIONS = ("auto", "sigmoid", "softmax")


class TargetLogit(torch.nn.Module):
    """Wrap a segmentation network so that it returns the logit of one class, shape (B, 1, H, W).

    With ``softmax`` (``auto`` with more than one output channel) the class probability is
    p = softmax(out)[channel] and the returned logit is log(p / (1 - p)) = out[channel] - logsumexp(out[others]),
    so that a sigmoid gives p back;
    with ``sigmoid`` (``auto`` with one channel) the channel's own logit is returned.

    Args:
        network: maps (B, C_in, H, W) to (B, C, H, W) logits (or a list/tuple whose first item is).
        channel: the output channel explained; None: channel 0 of a one-channel output, else channel 1 (the
            first class after the background).
        activation: ``auto``, ``sigmoid`` or ``softmax``: how the network's outputs become probabilities.
    """

    def __init__(self, network: torch.nn.Module, channel: int | None = 0, activation: str = "auto") -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ConfigError(f"activation must be one of {ACTIVATIONS}, got {activation!r}.")
        if channel is not None and int(channel) < 0:
            raise ConfigError(f"target_channel must be >= 0, got {channel}.")
        self.network, self.activation = network, activation
        self.channel = None if channel is None else int(channel)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        output = self.network(image)
        if isinstance(output, (list, tuple)):  # deep supervision: the full-resolution head first
            output = output[0]
        channel = self.channel if self.channel is not None else (0 if output.shape[1] == 1 else 1)
        if channel >= output.shape[1]:
            raise ConfigError(f"target_channel {channel} does not exist: the utility outputs {output.shape[1]} channel(s).")
        softmax = self.activation == "softmax" or (self.activation == "auto" and output.shape[1] > 1)
        if not softmax:
            return output[:, channel : channel + 1]
        logits = output.float()
        others = torch.cat([logits[:, :channel], logits[:, channel + 1 :]], dim=1)  # (B, C - 1, H, W)
        # log(p / (1 - p)) for p = softmax(logits)[channel], exactly and without a clamp that kills gradients
        target = logits[:, channel : channel + 1] - torch.logsumexp(others, dim=1, keepdim=True)
        return target.to(output.dtype)


class PredictedMask:
    """The utility's own binary prediction of a volume, axial slice by axial slice: (C, X, Y, Z) -> (1, X, Y, Z).

    Label-free training chooses its slices from this mask where it would read the label
    (:class:`pipeline.data.SliceDataset` ``reference``): the slices the model itself calls pancreas.

    Args:
        utility: maps (B, C, X, Y) to one logit (B, 1, X, Y), e.g. a :class:`TargetLogit`.
        device: where the utility runs.
        batch_size: slices per forward pass.
        threshold: probability above which a pixel is foreground.
    """

    def __init__(self, utility: torch.nn.Module, device: torch.device | str = "cpu", batch_size: int = 16,
                 threshold: float = 0.5) -> None:
        self.utility, self.device = utility, torch.device(device)
        self.batch_size, self.threshold = max(1, int(batch_size)), float(threshold)

    @torch.no_grad()
    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        image = torch.as_tensor(image).float()  # (C, X, Y, Z)
        was_training = self.utility.training
        self.utility.eval()
        slices = image.permute(3, 0, 1, 2)  # (Z, C, X, Y)
        masks = []
        for start in range(0, slices.shape[0], self.batch_size):
            logits = self.utility(slices[start : start + self.batch_size].to(self.device))
            masks.append((torch.sigmoid(logits.float()) > self.threshold).cpu())
        self.utility.train(was_training)
        return torch.cat(masks).permute(1, 2, 3, 0).float()  # (1, X, Y, Z)


__all__ = ["ACTIVATIONS", "PredictedMask", "TargetLogit"]
