"""Training-step benchmarks: plain PyTorch loops and the bundle's own trainer, in fp32 and on the fast path.

The *fast path* is what the training configs do by default: channels-last networks, and autocast (on a
CPU with bf16 instructions: bf16 for the utility's forward in utility training, through
:class:`pipeline.device.AutocastInferer`, and for the frozen utility alone in noise training, through
``UNoiseModel(utility_dtype=...)``; on CUDA: fp16 AMP with a gradient scaler, MONAI's ``amp=True``). *fp32* is the same step without either
(TF32 is switched off by :func:`pipeline.benchmark.run_benchmark`, so fp32 means fp32 on a GPU too).

The plain loops hold one batch of real slices in memory and call the networks, the U-Noise loss and the
optimizer directly (no Ignite, no MONAI engine, no data loader): they are the reference for what the
pipeline's own machinery costs. The pipeline runs ``configs/train_noise.json`` through MONAI's
``ConfigWorkflow`` exactly as ``monai.bundle run`` does, with timing hooks on the trainer's events.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.losses import DiceCELoss

from pipeline.benchmark.measure import median, peak_memory, synchronize, time_runs
from pipeline.device import cpu_autocast_dtype, memory_format
from pipeline.networks import build_unet
from pipeline.noise import UNoiseLoss, UNoiseModel

logger = logging.getLogger(__name__)

NOISE_KEYS = ("min_scale", "max_scale", "noise_weight", "learning_rate", "deletion_weight", "tv_weight", "blur_sigma",
              "rank_temperature")
NOISE_CHOICES = ("perturbation", "baseline", "target", "area", "objective", "infill_draw")


def noise_settings(bundle_root: Path) -> dict[str, Any]:
    """The noise-training values of ``configs/train_noise.json``, so the plain loop does the pipeline's work."""
    import json

    config = json.loads((bundle_root / "configs" / "train_noise.json").read_text())
    return {**{key: float(config[key]) for key in NOISE_KEYS}, **{key: config[key] for key in NOISE_CHOICES}}


def build_workflow(bundle_root: Path, config: str, overrides: dict[str, Any]) -> Any:
    """A MONAI ``ConfigWorkflow`` of ``configs/<config>.json``, as ``monai.bundle run`` builds it (no logging set-up)."""
    from monai.bundle import ConfigWorkflow

    from pipeline.bundle import config_files

    return ConfigWorkflow(config_file=[str(path) for path in config_files(bundle_root, config)],
                          meta_file=str(bundle_root / "configs" / "metadata.json"), logging_file=False,
                          workflow_type="train", bundle_root=str(bundle_root), **overrides)


def uses_autocast(device: torch.device, fast: bool) -> bool:
    """Whether the fast path autocasts here: always with CUDA, on the CPU only with bf16 instructions
    (the configs' ``cpu_bf16: auto``)."""
    return fast and (device.type == "cuda" or cpu_autocast_dtype(device, "auto") is not None)


def autocast_context(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on the CPU, fp16 on CUDA, when ``enabled``; otherwise nothing."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if device.type == "cpu" else torch.float16)


def build_noise_step(
    utility: torch.nn.Module, noise_net: torch.nn.Module, image: torch.Tensor, label: torch.Tensor, fast: bool,
    settings: dict[str, float],
) -> Callable[[], float]:
    """One U-Noise training step as a plain loop: noise model + frozen utility, U-Noise loss, Adam.

    Args:
        utility: the segmentation network (frozen here), on the target device.
        noise_net: the noise model being trained, on the same device.
        image: CT slices windowed to [0, 1], shape (B, C, H, W), on the device.
        label: pancreas masks in {0, 1}, shape (B, 1, H, W).
        fast: channels-last and autocast (see the module docstring), else fp32 in the default layout.
        settings: the train_noise.json values of :func:`noise_settings` (scales, perturbation and its
            baseline, target, loss terms, learning rate).

    Returns:
        A function that runs one step and returns its loss.
    """
    fmt = memory_format(fast)
    device = image.device
    # as train_noise.json: on the CPU only the frozen utility runs in bf16; on CUDA, AMP covers the step
    utility_dtype = cpu_autocast_dtype(device, "auto" if fast else False)
    model = UNoiseModel(noise_net.to(memory_format=fmt), utility.to(memory_format=fmt),
                        settings["min_scale"], settings["max_scale"], settings["perturbation"], settings["baseline"],
                        utility_dtype=utility_dtype, deletion=settings["deletion_weight"] > 0,
                        blur_sigma=settings["blur_sigma"], objective=settings["objective"],
                        infill_draw=settings["infill_draw"], rank_temperature=settings["rank_temperature"]).train()
    loss_function = UNoiseLoss(settings["noise_weight"], target=settings["target"], area=settings["area"],
                               deletion_weight=settings["deletion_weight"], tv_weight=settings["tv_weight"],
                               objective=settings["objective"])
    optimizer = torch.optim.Adam(noise_net.parameters(), lr=settings["learning_rate"])
    return _step(model, loss_function, optimizer, image.contiguous(memory_format=fmt), label,
                 autocast=device.type == "cuda" and uses_autocast(device, fast))


def build_utility_step(utility: torch.nn.Module, image: torch.Tensor, label: torch.Tensor, fast: bool) -> Callable[[], float]:
    """One utility training step as a plain loop: Dice + BCE loss, Adam, every weight trained."""
    fmt = memory_format(fast)
    utility = utility.to(memory_format=fmt).train()
    optimizer = torch.optim.Adam(utility.parameters(), lr=1e-3)
    return _step(utility, DiceCELoss(sigmoid=True), optimizer, image.contiguous(memory_format=fmt), label,
                 autocast=uses_autocast(image.device, fast))


def _step(model: torch.nn.Module, loss_function: Callable, optimizer: torch.optim.Optimizer,
          image: torch.Tensor, label: torch.Tensor, autocast: bool) -> Callable[[], float]:
    """One training step with the forward under autocast (bf16 on the CPU, fp16 + gradient scaling on CUDA)."""
    device = image.device
    scaler = torch.amp.GradScaler("cuda", enabled=autocast and device.type == "cuda")

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with autocast_context(device, autocast):
            outputs = model(image)
        loss = loss_function(outputs.float(), label)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return float(loss.detach())

    return step


def time_step(step: Callable[[], float], batch_size: int, repeats: int, warmup: int, device: torch.device,
              flops: int | None = None) -> dict[str, Any]:
    """Median step time, slices/s and GFLOP/s of a plain-loop step, with its peak memory."""
    with peak_memory(device) as memory:
        times = time_runs(step, repeats, warmup, device)
    seconds = median(times)
    result: dict[str, Any] = {"step_s": round(seconds, 4), "slices_per_s": round(batch_size / seconds, 3),
                              "step_times_s": [round(t, 4) for t in times], "peak_memory_mb": memory["peak_mb"],
                              "memory_increase_mb": memory["increase_mb"]}
    if flops:
        result["gflop_per_s"] = round(flops / seconds / 1e9, 1)
    return result


class TrainerTimer:
    """Per-iteration wall time and data wait of an Ignite trainer, after ``warmup`` iterations.

    The iteration time runs from one ``ITERATION_COMPLETED`` to the next (the first from the first
    ``GET_BATCH_STARTED``), so it includes fetching the batch, the step and every iteration handler; the
    data wait is ``GET_BATCH_STARTED`` to ``GET_BATCH_COMPLETED``. Attach it after the other handlers.
    """

    def __init__(self, warmup: int, device: torch.device) -> None:
        self.warmup, self.device = warmup, device
        self.iteration_s: list[float] = []
        self.wait_s: list[float] = []
        self._last = self._get_start = self._wait = 0.0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.GET_BATCH_STARTED, self._get_started)
        engine.add_event_handler(Events.GET_BATCH_COMPLETED, self._got)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._completed)

    def _get_started(self, engine: Engine) -> None:
        self._get_start = time.perf_counter()
        if engine.state.iteration == 0:
            self._last = self._get_start

    def _got(self, engine: Engine) -> None:
        self._wait = time.perf_counter() - self._get_start

    def _completed(self, engine: Engine) -> None:
        synchronize(self.device)
        now = time.perf_counter()
        if engine.state.iteration > self.warmup:
            self.iteration_s.append(now - self._last)
            self.wait_s.append(self._wait)
        self._last = now


def run_pipeline(
    bundle_root: Path,
    overrides: dict[str, Any],
    warmup: int,
    repeats: int,
    batch_size: int,
    device: torch.device,
    flops: int | None = None,
    loader_batches: int = 0,
) -> dict[str, Any]:
    """Time the bundle's noise trainer over ``warmup + repeats`` iterations of one epoch (no validation).

    The timed iterations cover fetching the batch, the step and every iteration handler; validation,
    checkpoints and ``metrics.json`` come once per epoch and are not in them. When the loader has worker
    processes, more iterations are timed than the workers prefetch, so a slow loader shows in the wait.

    Args:
        bundle_root: the bundle folder.
        overrides: config values (dataset, utility checkpoint, output folder, precision settings...).
        warmup, repeats: iterations not timed / timed (at least).
        batch_size: slices per iteration (also passed to the config).
        device: where it runs (for synchronisation and memory).
        flops: FLOPs of one step, to report GFLOP/s.
        loader_batches: when > 0, also time the trainer's data loader alone over this many batches.

    Returns:
        ``slices_per_s``, ``step_s``, ``wait_fraction`` (data wait / iteration time, summed over the timed
        iterations), ``loader_slices_per_s`` and peak memory.
    """
    from pipeline.device import AutocastInferer, resolve_workers

    workers = resolve_workers(overrides.get("num_workers", "auto"), device)
    timed = max(repeats, 3 * workers * 2)  # 2: torch's default prefetch_factor per worker
    workflow = build_workflow(bundle_root, "train_noise", {**overrides, "batch_size": batch_size, "epochs": 1,
                                                           "val_interval": 2, "train#trainer#epoch_length": warmup + timed})
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    noise_net = workflow.parser.get_parsed_content("noise_net")
    inferer = workflow.parser.get_parsed_content("inferer")
    utility_dtype = workflow.parser.get_parsed_content("utility_dtype")
    effective = {
        "inferer": type(inferer).__name__,
        "utility_dtype": str(utility_dtype),
        "autocast": isinstance(inferer, AutocastInferer) or bool(trainer.amp) or utility_dtype is not None,
        "channels_last": is_channels_last(noise_net),
        "cuda_amp": bool(trainer.amp), "loader_workers": workers,
        "pin_memory": bool(getattr(workflow.parser.get_parsed_content("train#dataloader"), "pin_memory", False)),
        "timed_iterations": timed,
    }
    timer = TrainerTimer(warmup, device)
    timer.attach(trainer)
    with peak_memory(device) as memory:
        workflow.run()
    result: dict[str, Any] = {}
    if loader_batches > 0:
        loader = workflow.parser.get_parsed_content("train#dataloader")
        result["loader_slices_per_s"] = round(_loader_rate(loader, loader_batches, batch_size), 1)
    workflow.finalize()
    seconds = median(timer.iteration_s)
    result.update(
        step_s=round(seconds, 4),
        slices_per_s=round(batch_size / seconds, 3),
        wait_fraction=round(sum(timer.wait_s) / sum(timer.iteration_s), 5),
        step_times_s=[round(t, 4) for t in timer.iteration_s],
        peak_memory_mb=memory["peak_mb"],
        memory_increase_mb=memory["increase_mb"],
        effective=effective,
    )
    if flops:
        result["gflop_per_s"] = round(flops / seconds / 1e9, 1)
    return result


def is_channels_last(network: torch.nn.Module) -> bool:
    """Whether the network's convolution weights are stored channels-last (judged on the first one with
    more than one input channel, where the two layouts differ)."""
    for weight in network.parameters():
        if weight.dim() == 4 and weight.shape[1] > 1:
            return weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    return False


def _loader_rate(loader: Any, batches: int, batch_size: int) -> float:
    """Slices per second a data loader delivers on its own (after its first batch)."""
    iterator = iter(loader)
    next(iterator)
    count, start = 0, time.perf_counter()
    while count < batches:
        try:
            next(iterator)
        except StopIteration:
            iterator = iter(loader)
            continue
        count += 1
    return count * batch_size / (time.perf_counter() - start)


def build_networks(utility_preset: str, noise_preset: str, device: torch.device, seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Fresh (seeded) utility and noise networks on ``device``; cost does not depend on trained weights."""
    torch.manual_seed(seed)
    return build_unet(utility_preset).to(device), build_unet(noise_preset).to(device)
