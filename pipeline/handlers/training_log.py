"""What a training run logs besides the metrics: the loss's terms, one line per epoch, and TensorBoard images.

Each handler has MONAI's shape: ``attach(engine)`` registers it, ``__call__(engine)`` does the work.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import torch
from ignite.engine import Engine, Events

from pipeline.distributed import is_main_process, sum_over_ranks
from pipeline.errors import ConfigError

logger = logging.getLogger(__name__)


class LossTermsHandler:
    """Per-epoch means of a loss's ``last_terms`` (e.g. :class:`pipeline.noise.UNoiseLoss`) into ``engine.state.metrics``.

    Attach it before the stats/TensorBoard handlers so they log ``train_<term>`` at the end of each epoch.
    Under several processes the means are over every rank's iterations.
    """

    def __init__(self, loss_function: torch.nn.Module, prefix: str = "train_") -> None:
        if not hasattr(loss_function, "last_terms"):
            raise TypeError(f"LossTermsHandler needs a loss with `last_terms`, got {type(loss_function).__name__}.")
        self.loss_function, self.prefix = loss_function, prefix
        self._sums: dict[str, float] = {}
        self._count = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._accumulate)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _reset(self, engine: Engine) -> None:
        self._sums, self._count = {}, 0

    def _accumulate(self, engine: Engine) -> None:
        for key, value in self.loss_function.last_terms.items():
            self._sums[key] = self._sums.get(key, 0.0) + float(value)
        self._count += 1

    def __call__(self, engine: Engine) -> None:
        totals = sum_over_ranks(self._sums)  # collectives: every rank calls them
        count = sum_over_ranks({"iterations": self._count})["iterations"]
        for key, total in totals.items():
            engine.state.metrics[f"{self.prefix}{key}"] = total / max(1, count)


class EpochSummary:
    """One log line per epoch: the epoch's mean loss, the validation metrics of that epoch, the best so far, seconds.

    ``epoch 3/20  loss 0.4123  val_dice_3d 0.5746  val_iou 0.4674  best val_dice_3d 0.5746 @ 3  9.6 s``

    The loss is this process's mean (under ``torchrun``, rank 0's share of the batches); the validation metrics are
    reduced over every rank.

    The line a run prints by default (``unoise``'s quiet logging); the engines' own logs come back with ``-v``.
    Attach it after the ``ValidationHandler``, so the evaluator's metrics are this epoch's. Main process only.

    Args:
        evaluator: the validation engine (its ``state.metrics``, ``best_metric``, ``best_metric_epoch``), or None.
        output_transform: the loss from ``engine.state.output`` (e.g. ``from_engine(['loss'], first=True)``).
    """

    def __init__(self, evaluator: Engine | None = None, output_transform: Callable[[Any], Any] | None = None,
                 key_metric: str | None = None) -> None:
        self.evaluator, self.key_metric = evaluator, key_metric
        self.output_transform = output_transform or (lambda output: output[0]["loss"] if isinstance(output, list) else output["loss"])
        self._loss, self._count, self._started = 0.0, 0, time.perf_counter()

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._accumulate)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _reset(self, engine: Engine) -> None:
        self._loss, self._count, self._started = 0.0, 0, time.perf_counter()

    def _accumulate(self, engine: Engine) -> None:
        loss = self.output_transform(engine.state.output)
        self._loss = self._loss + (loss.detach() if isinstance(loss, torch.Tensor) else float(loss))  # no sync per step
        self._count += 1

    def __call__(self, engine: Engine) -> None:
        if not is_main_process():
            return
        parts = [f"epoch {engine.state.epoch}/{engine.state.max_epochs}", f"loss {float(self._loss) / max(1, self._count):.4f}"]
        validated = self.evaluator is not None and self.evaluator.state.epoch == engine.state.epoch
        if validated:
            parts += [f"{name} {value:.4f}" for name, value in self.evaluator.state.metrics.items()
                      if isinstance(value, (int, float)) and not isinstance(value, bool)]
            best, best_epoch = getattr(self.evaluator.state, "best_metric", None), getattr(self.evaluator.state, "best_metric_epoch", -1)
            if best is not None and best_epoch is not None and best_epoch > 0:
                parts.append(f"best {self.key_metric + ' ' if self.key_metric else ''}{float(best):.4f} @ {best_epoch}")
        parts.append(f"{time.perf_counter() - self._started:.1f} s")
        logger.info("  ".join(parts))


class SliceImagesHandler:
    """Log named 2D images of the first item of the last validation batch to TensorBoard, each epoch.

    Args:
        summary_writer: a ``SummaryWriter``.
        images: ``{tag: (source, key, channel, invert)}`` with source ``batch`` or ``output``; ``invert``
            shows 1 - channel (importance from tolerance). Each image is min-max scaled for display; of a 3D
            item the middle axial slice is shown. A key
            the item does not hold (``label`` in label-free training) is skipped.
    """

    def __init__(self, summary_writer: Any, images: dict[str, tuple[str, str, int, bool]]) -> None:
        for tag, spec in images.items():
            if len(spec) != 4 or spec[0] not in ("batch", "output"):
                raise ConfigError(f"image {tag!r}: expected (source 'batch'|'output', key, channel, invert), got {spec!r}.")
        self.writer, self.images = summary_writer, dict(images)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        for tag, (source, key, channel, invert) in self.images.items():
            items = engine.state.batch if source == "batch" else engine.state.output
            if items[0].get(key) is None:
                continue
            image = torch.as_tensor(items[0][key])[channel].detach().float().cpu()  # (H, W), or (X, Y, Z) in 3D
            if image.ndim == 3:
                image = image[..., image.shape[-1] // 2]  # a volume's middle axial slice
            if invert:
                image = 1.0 - image
            low, high = float(image.min()), float(image.max())
            image = (image - low) / (high - low) if high > low else torch.zeros_like(image)
            self.writer.add_image(tag, image[None], engine.state.epoch, dataformats="CHW")


class SampleImages:
    """Log a sampling network's spread to TensorBoard each validation epoch: the first image of the last batch and
    ``samples`` segmentations drawn for it (probabilities, one row), under ``tag``.

    Args:
        summary_writer: a ``SummaryWriter``.
        network: a network with ``sample(image, count)`` returning logits (count, B, 1, H, W), e.g.
            :class:`pipeline.networks.ProbabilisticUNet`.
        samples: segmentations drawn.
        tag: the TensorBoard tag.
    """

    def __init__(self, summary_writer: Any, network: torch.nn.Module, samples: int = 4, tag: str = "val_samples") -> None:
        if not callable(getattr(network, "sample", None)):
            raise TypeError(f"SampleImages needs a network with sample(image, count), got {type(network).__name__}.")
        self.writer, self.network, self.samples, self.tag = summary_writer, network, int(samples), tag

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    @torch.no_grad()
    def __call__(self, engine: Engine) -> None:
        image = torch.as_tensor(engine.state.batch[0]["image"])[None].float()  # (1, 1, H, W)
        device = next(self.network.parameters()).device
        drawn = torch.sigmoid(self.network.sample(image.to(device), self.samples))[:, 0].cpu()  # (samples, 1, H, W)
        low, high = float(image.min()), float(image.max())
        shown = (image - low) / (high - low) if high > low else torch.zeros_like(image)
        self.writer.add_images(self.tag, torch.cat([shown, drawn]), engine.state.epoch, dataformats="NCHW")


__all__ = ["EpochSummary", "LossTermsHandler", "SampleImages", "SliceImagesHandler"]
