"""The training step of a Probabilistic U-Net, as ``SupervisedTrainer``'s ``iteration_update``.

A deterministic utility trains with ``SupervisedTrainer``'s own step, ``loss(network(image), label)``. The
Probabilistic U-Net's loss needs the label inside the forward pass (the posterior net sees it), so this step
replaces the trainer's: it draws one rater per image (the label's channels are the raters, ``rater_mode``
``all``), computes :class:`~pipeline.networks.ProbabilisticUNetLoss`, and steps the optimiser. Everything else
(handlers, checkpoints, TensorBoard, resume) is the trainer's, as for the deterministic utility; under ``torchrun``
the network is called through its ``DistributedDataParallel`` wrapper (not run here yet).
"""

from __future__ import annotations

from typing import Any

import torch
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys


def draw_rater(label: torch.Tensor) -> torch.Tensor:
    """One rater's mask per image: label (B, R, *spatial) -> (B, 1, *spatial), raters drawn uniformly (global RNG)."""
    choice = torch.randint(label.shape[1], (label.shape[0],), device=label.device)  # (B,)
    return label[torch.arange(label.shape[0], device=label.device), choice].unsqueeze(1)


class ProbabilisticStep:
    """``iteration_update`` of a ``SupervisedTrainer`` whose network is a :class:`~pipeline.networks.ProbabilisticUNet`.

    Args:
        loss: the negative ELBO, a :class:`pipeline.networks.ProbabilisticUNetLoss` (not imported here: the engines'
            pieces sit below the networks in the data flow); its KL warm-up advances one step per iteration.

    The engine's output holds ``image``, ``label`` (the rater drawn), ``loss``, and the loss's parts ``kl`` and
    ``reconstruction`` (for a handler to log; the bundle logs ``loss``). The network is called as
    ``network(image, label)``, so under ``torchrun`` the ``DistributedDataParallel`` wrapper's forward runs.
    """

    def __init__(self, loss: Any) -> None:
        if not callable(loss) or not callable(getattr(loss, "step", None)) or not hasattr(loss, "last_kl"):
            raise TypeError(f"loss must be a pipeline.networks.ProbabilisticUNetLoss (called as loss(network, image, label), "
                            f"with step() and last_kl), got {type(loss).__name__}.")
        self.loss = loss

    def __call__(self, engine: Any, batchdata: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        image, label = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking)[:2]
        rater = draw_rater(label)  # (B, 1, *spatial)
        engine.state.output = {Keys.IMAGE: image, Keys.LABEL: rater}
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        scaler = engine.scaler if engine.amp else None
        with torch.autocast("cuda", **engine.amp_kwargs) if scaler is not None else torch.autocast("cpu", enabled=False):
            loss = self.loss(engine.network, image, rater)
        engine.state.output.update({Keys.LOSS: loss, "kl": self.loss.last_kl, "reconstruction": self.loss.last_reconstruction})
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        if scaler is not None:
            scaler.step(engine.optimizer)
            scaler.update()
        else:
            engine.optimizer.step()
        self.loss.step()
        engine.state.output[Keys.LOSS] = loss.detach()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)  # the trainer decollates the output here, as after its own step
        return engine.state.output


__all__ = ["ProbabilisticStep", "draw_rater"]
