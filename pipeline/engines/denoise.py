"""The training step of a CT denoiser, as ``SupervisedTrainer``'s ``iteration_update``, for its three modes.

``n2c`` and ``n2n`` are plain supervised steps, ``loss(network(image), label)``: the data decide whether ``label`` is
the clean slice or a second noisy scan (:class:`pipeline.data.NoisyPairsd`). ``nes`` (Neural Egg Separation) has no
target in the data: in round 0 the target is the noisy scan ``y`` itself, and in round ``k`` it is the previous
round's network's estimate of the clean slice, ``f_{k-1}(y)``; the input is that target plus a fresh noise-only
sample, so the network learns to remove the noise that is added, and each round removes more of ``y``'s own. The
epochs are split evenly between ``rounds``; the network at the end of a round is frozen as the next round's target.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys

from pipeline.errors import ConfigError

DENOISE_MODES = ("n2c", "n2n", "nes")  # Noise2Clean, Noise2Noise, Neural Egg Separation


LOSSES = {"l2": torch.nn.MSELoss, "l1": torch.nn.L1Loss}


def build_denoise_loss(name: str) -> torch.nn.Module:
    """``l2`` (mean squared error: the network learns the mean of its targets) or ``l1`` (the median)."""
    if name not in LOSSES:
        raise ConfigError(f"denoise_loss must be one of {sorted(LOSSES)} (l2: the mean, l1: the median), got {name!r}.")
    return LOSSES[name]()


def in_window(pair: Any, hu_scale: float, window: Any) -> list[Any]:
    """Each tensor of ``pair`` (HU / ``hu_scale``) windowed to [0, 1] by ``window`` (HU bounds), for metrics in the window."""
    low, high = (float(v) for v in window)
    return [[((t * hu_scale - low) / (high - low)).clamp(0.0, 1.0) for t in item] if isinstance(item, list)
            else ((item * hu_scale - low) / (high - low)).clamp(0.0, 1.0) for item in pair]


class DenoiseStep:
    """``iteration_update`` of a ``SupervisedTrainer`` training a denoiser in ``mode`` (see the module's docstring).

    Args:
        mode: ``n2c``, ``n2n`` or ``nes``.
        rounds: NES rounds over the run's epochs (ignored by the other modes).

    The engine's output holds ``image`` (the network's input), ``label`` (its target), ``pred`` and ``loss``; under
    NES ``nes_round`` too. The loss is the trainer's ``loss_function`` (L2 for the mean, L1 for the median).
    """

    def __init__(self, mode: str, rounds: int = 3) -> None:
        if mode not in DENOISE_MODES:
            raise ConfigError(f"denoise_mode must be one of {list(DENOISE_MODES)}, got {mode!r}.")
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
            raise ConfigError(f"nes_rounds is a positive integer, got {rounds!r}.")
        self.mode, self.rounds = mode, rounds
        self.round, self.frozen = 0, None

    def nes_round(self, epoch: int, max_epochs: int) -> int:
        """The NES round of a 1-based ``epoch`` of ``max_epochs``."""
        return min(self.rounds - 1, (epoch - 1) * self.rounds // max(1, max_epochs))

    def _target(self, engine: Any, noisy: torch.Tensor) -> torch.Tensor:
        wanted = self.nes_round(engine.state.epoch, engine.state.max_epochs)
        if wanted != self.round or (wanted > 0 and self.frozen is None):  # a new round (or a resume inside one)
            network = getattr(engine.network, "module", engine.network)
            self.frozen = copy.deepcopy(network).eval().requires_grad_(False)
            self.round = wanted
        if self.round == 0:
            return noisy
        with torch.no_grad():
            return self.frozen(noisy)

    def __call__(self, engine: Any, batchdata: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        image, label = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking)[:2]
        if self.mode == "nes":
            if "noise" not in batchdata:
                raise ConfigError("the NES step needs a noise-only sample per slice ('noise'): the training data must "
                                  "come through pipeline.data.NoisyPairsd with mode 'nes'.")
            label = self._target(engine, image)
            image = label + batchdata["noise"].to(engine.state.device)
        engine.state.output = {Keys.IMAGE: image, Keys.LABEL: label}
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        pred = engine.inferer(image, engine.network)
        loss = engine.loss_function(pred, label)
        engine.state.output.update({Keys.PRED: pred, Keys.LOSS: loss})
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        loss.backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        engine.optimizer.step()
        engine.state.output[Keys.LOSS] = loss.detach()
        if self.mode == "nes":
            engine.state.output["nes_round"] = torch.tensor(self.round)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


__all__ = ["DENOISE_MODES", "LOSSES", "DenoiseStep", "build_denoise_loss", "in_window"]
