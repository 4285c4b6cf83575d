"""``unoise benchmark``: where the time goes, in one process, written to ``benchmark.json``.

Sections (each a median of ``repeats`` runs after ``warmup`` runs, on fresh seeded networks; cost does
not depend on trained weights):

- ``train_noise_step``: one U-Noise training step (noise model + frozen utility, batch of slices) through
  the bundle's own trainer in fp32 and on the fast path, and the same step as a plain PyTorch loop.
- ``train_utility_step``: one utility training step (plain loop), fp32 and fast path.
- ``explain``: milliseconds per slice of U-Noise small/medium/large, Grad-CAM and occlusion.
- ``data``: what the loader delivers against what the trainer consumes, and the trainer's data wait.
- ``dice_check`` (with ``utility_checkpoint`` and ``dataset``): trains the noise model in fp32 and on the
  fast path against a trained utility (9 epochs: the demo's schedule) and compares their validation dice.
  Early in training the learned noise level still climbs fast, and two runs that differ only in rounding
  can be an epoch apart on that climb, so compare at the end of a schedule.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import torch

from pipeline.benchmark.explain import time_explainers
from pipeline.benchmark.measure import count_flops, describe_machine
from pipeline.benchmark.training import (
    build_networks,
    build_noise_step,
    build_utility_step,
    build_workflow,
    noise_settings,
    run_pipeline,
    time_step,
    uses_autocast,
)
from pipeline.errors import ConfigError

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fast")
PRECISION_KEYS = ("cpu_bf16", "channels_last", "amp", "device")  # set by the benchmark, per precision
DICE_TOLERANCE = 0.01


def fast_path_description(device: torch.device) -> str:
    if not uses_autocast(device, True):
        return "channels-last (no bf16 instructions on this CPU, so no autocast: the configs' cpu_bf16 'auto')"
    autocast = "bf16 autocast" if device.type == "cpu" else "fp16 AMP with gradient scaling"
    return f"channels-last + {autocast}"


def _pipeline_overrides(precision: str, device: torch.device) -> dict[str, Any]:
    """Config values that select fp32 or the fast path (the fast path is the configs' defaults)."""
    if precision == "fast":
        return {"cpu_bf16": "auto", "channels_last": True, "amp": True, "device": str(device)}
    return {"cpu_bf16": False, "channels_last": False, "amp": False, "device": str(device)}


def _pin_numerics(device: torch.device) -> dict[str, Any]:
    """Same numerics for every measurement: no TF32 (fp32 means fp32), cuDNN flags fixed before any run.

    The training configs call ``set_determinism``, which switches cuDNN to deterministic algorithms for
    the rest of the process; doing it first keeps the plain loops and the bundle trainer comparable.
    """
    from monai.utils import set_determinism

    set_determinism(seed=0)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return {"tf32": False, "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "cudnn_benchmark": torch.backends.cudnn.benchmark}


def check_arguments(spatial_size: int, batch_size: int, repeats: int, warmup: int, cases: int, slices: int,
                    utility_checkpoint: str | None, dataset: str | None, dice_epochs: int,
                    dice_overrides: dict[str, Any], utility_preset: str, noise_preset: str) -> None:
    """Refuse bad settings before any work, naming the option (the run takes minutes)."""
    from pipeline.networks import NETWORK_PRESETS

    for flag, preset in (("--utility-preset", utility_preset), ("--noise-preset", noise_preset)):
        if preset not in NETWORK_PRESETS:
            raise ConfigError(f"{flag} {preset!r} is not a preset; choose one of {', '.join(NETWORK_PRESETS)}.")
    for name, value, minimum in (("--batch-size", batch_size, 1), ("--repeats", repeats, 1), ("--warmup", warmup, 0),
                                 ("--cases", cases, 4), ("--slices", slices, 8), ("--dice-epochs", dice_epochs, 1),
                                 ("--spatial-size", spatial_size, 32)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    if spatial_size % 16:
        raise ConfigError(f"--spatial-size must be divisible by 16 (the networks down-sample 4 times), got {spatial_size}.")
    if (cases - 1) * slices < batch_size:
        raise ConfigError(f"the trainer's split ({cases - 1} cases x {slices} slices) is smaller than one batch of "
                          f"{batch_size}; raise --cases or --slices, or lower --batch-size.")
    if (utility_checkpoint is None) != (dataset is None):
        raise ConfigError("the dice check needs both --utility (a trained utility checkpoint) and --dataset (its data); "
                          "give both, or neither to skip it.")
    for name, path in (("--utility", utility_checkpoint), ("--dataset", dataset)):
        if path is not None and not Path(path).exists():
            raise ConfigError(f"{name} {path}: not found.")
    fixed = sorted(set(dice_overrides) & set(PRECISION_KEYS))
    if fixed:
        raise ConfigError(f"--{fixed[0]}: the benchmark sets {', '.join(PRECISION_KEYS)} itself (fp32 and the fast "
                          "path); use --device for the device.")


def prepare_inputs(work_dir: Path, spatial_size: int, batch_size: int, cases: int, slices: int, utility_preset: str,
                   device: torch.device) -> tuple[Path, Path, torch.Tensor, torch.Tensor]:
    """A phantom set at ``spatial_size``, a seeded utility checkpoint, and one batch of its slices in memory."""
    from pipeline.networks.checkpoints import save_atomic
    from pipeline.data import build_slice_dataset, load_datalist
    from pipeline.phantom import write_phantom_dataset

    dataset_json = write_phantom_dataset(work_dir / "phantom", cases=cases, size=spatial_size, slices=slices, seed=0)
    utility, _ = build_networks(utility_preset, "small", torch.device("cpu"))
    checkpoint = save_atomic({"model": utility.state_dict(),
                              "meta": {"preset": utility_preset, "in_channels": 1, "out_channels": 1,
                                       "spatial_size": spatial_size, "window": "pancreas"}}, work_dir / "utility.pt")
    dataset = build_slice_dataset(load_datalist(dataset_json.parent), spatial_size=spatial_size, progress=False)
    if len(dataset) < batch_size:
        raise ConfigError(f"the benchmark's phantom set has {len(dataset)} slices, fewer than batch_size {batch_size}; "
                          "raise --cases or --slices.")
    items = [dataset[i * (len(dataset) // batch_size)] for i in range(batch_size)]
    image = torch.stack([torch.as_tensor(item["image"]) for item in items]).float().to(device)  # (B, 1, S, S)
    label = torch.stack([torch.as_tensor(item["label"]) for item in items]).float().to(device)  # (B, 1, S, S)
    return dataset_json.parent, checkpoint, image, label


def run_benchmark(
    spatial_size: int = 256,
    batch_size: int = 8,
    utility_preset: str = "paper",
    noise_preset: str = "large",
    noise_presets: tuple[str, ...] = ("small", "medium", "large"),
    repeats: int = 3,
    warmup: int = 1,
    device: str = "auto",
    cases: int = 4,
    slices: int = 16,
    bundle_root: Path | None = None,
    utility_checkpoint: str | None = None,
    dataset: str | None = None,
    dice_epochs: int = 9,
    dice_overrides: dict[str, Any] | None = None,
    work_dir: Path | None = None,
) -> dict[str, Any]:
    """Run every section and return the benchmark record (see the module docstring).

    Args:
        spatial_size: slice size in pixels (the bundle's default 256).
        batch_size: slices per training step.
        utility_preset, noise_preset: networks of the training steps (the paper's: ``paper`` and ``large``).
        noise_presets: U-Noise sizes whose explain latency is timed.
        repeats, warmup: timed and untimed runs of every measurement.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        cases, slices: size of the phantom set the pipeline trains on.
        bundle_root: the bundle folder (default: the one in this checkout).
        utility_checkpoint, dataset: a trained utility and its dataset, for the dice check (skipped without).
        dice_epochs: noise-training epochs per precision in the dice check.
        dice_overrides: more train_noise.json values for the dice check (e.g. the split of the utility's run).
        work_dir: where the phantom set and the runs go (default: a temporary folder, removed afterwards).
    """
    from pipeline.bundle import default_bundle_root
    from pipeline.device import resolve_device

    dice_overrides = dict(dice_overrides or {})
    check_arguments(spatial_size, batch_size, repeats, warmup, cases, slices, utility_checkpoint, dataset,
                    dice_epochs, dice_overrides, utility_preset, noise_preset)
    if noise_preset not in noise_presets:
        noise_presets = (*noise_presets, noise_preset)
    run_device = resolve_device(device)
    root = Path(bundle_root or default_bundle_root())
    settings = {"spatial_size": spatial_size, "batch_size": batch_size, "utility_preset": utility_preset,
                "noise_preset": noise_preset, "repeats": repeats, "warmup": warmup,
                "fast_path": fast_path_description(run_device), "noise_settings": noise_settings(root),
                "numerics": _pin_numerics(run_device)}
    result: dict[str, Any] = {"settings": settings, "machine": describe_machine(run_device)}
    with tempfile.TemporaryDirectory(prefix="unoise-benchmark-") as scratch:
        work = Path(work_dir or scratch)
        work.mkdir(parents=True, exist_ok=True)
        logger.info("benchmark: phantom set %d cases x %d slices at %d px in %s", cases, slices, spatial_size, work)
        dataset_dir, checkpoint, image, label = prepare_inputs(work, spatial_size, batch_size, cases, slices,
                                                               utility_preset, run_device)
        result["train_noise_step"] = _noise_step_section(root, work, dataset_dir, checkpoint, image, label, settings, run_device)
        result["data"] = result["train_noise_step"].pop("data")
        result["train_utility_step"] = _utility_step_section(image, label, settings, run_device)
        logger.info("benchmark: explain latency per slice")
        utility, _ = build_networks(utility_preset, "small", run_device)
        result["explain"] = time_explainers(utility, image[:1], tuple(noise_presets), repeats, warmup)
        if utility_checkpoint is not None:
            dice = _dice_section(root, work, utility_checkpoint, dataset, dice_epochs, dice_overrides, run_device)
            result["dice_check"] = dice
            result["train_noise_step"]["dice_delta"] = dice["dice_delta"]
        else:
            result["dice_check"] = {"skipped": "pass --utility CKPT --dataset DIR (a trained utility) to compare dice"}
            result["train_noise_step"]["dice_delta"] = None
    return result


def _noise_step_section(root: Path, work: Path, dataset_dir: Path, checkpoint: Path, image: torch.Tensor,
                        label: torch.Tensor, settings: dict[str, Any], device: torch.device) -> dict[str, Any]:
    repeats, warmup, batch = settings["repeats"], settings["warmup"], settings["batch_size"]

    def fresh_step(precision: str):
        utility, noise_net = build_networks(settings["utility_preset"], settings["noise_preset"], device)
        return build_noise_step(utility, noise_net, image, label, precision == "fast", settings["noise_settings"])

    flops = count_flops(fresh_step("fp32"))  # forward and backward convolutions; Adam's elementwise work is not counted
    plain, pipeline = {}, {}
    for precision in PRECISIONS:
        logger.info("benchmark: U-Noise training step, plain loop, %s", precision)
        plain[precision] = time_step(fresh_step(precision), batch, repeats, warmup, device, flops)
    for precision in PRECISIONS:
        logger.info("benchmark: U-Noise training step, bundle trainer, %s", precision)
        overrides = {"dataset_dir": str(dataset_dir), "utility_checkpoint": str(checkpoint),
                     "output_dir": str(work / f"pipeline-{precision}"), "noise_preset": settings["noise_preset"],
                     "train_slices": "all", "val_slices": "all", "val_fraction": 0.25, "test_fraction": 0.0,
                     "seed": 0, **_pipeline_overrides(precision, device)}
        pipeline[precision] = run_pipeline(root, overrides, warmup, repeats, batch, device, flops,
                                           loader_batches=4 * repeats if precision == "fast" else 0)
    fast, fp32 = pipeline["fast"], pipeline["fp32"]
    return {
        "fp32_slices_per_s": fp32["slices_per_s"],
        "fast_slices_per_s": fast["slices_per_s"],
        "speedup": round(fast["slices_per_s"] / fp32["slices_per_s"], 3),
        "plain_loop_slices_per_s": plain["fast"]["slices_per_s"],
        "pipeline_over_plain": round(fast["slices_per_s"] / plain["fast"]["slices_per_s"], 3),
        "fp32_pipeline_over_plain": round(fp32["slices_per_s"] / plain["fp32"]["slices_per_s"], 3),
        "plain_speedup": round(plain["fast"]["slices_per_s"] / plain["fp32"]["slices_per_s"], 3),
        "gflop_per_step": round(flops / 1e9, 1),
        "fp32_gflop_per_s": fp32.get("gflop_per_s"),
        "fast_gflop_per_s": fast.get("gflop_per_s"),
        "pipeline": pipeline,
        "plain_loop": plain,
        "data": {
            "loader_slices_per_s": fast["loader_slices_per_s"],
            "trainer_slices_per_s": fast["slices_per_s"],
            "wait_fraction": fast["wait_fraction"],
            "fp32_wait_fraction": fp32["wait_fraction"],
            "cache": "memory",
            "loader_workers": fast["effective"]["loader_workers"],
            "pin_memory": fast["effective"]["pin_memory"],
            "timed_iterations": fast["effective"]["timed_iterations"],
        },
    }


def _utility_step_section(image: torch.Tensor, label: torch.Tensor, settings: dict[str, Any],
                          device: torch.device) -> dict[str, Any]:
    def fresh_step(precision: str):
        utility, _ = build_networks(settings["utility_preset"], "small", device)
        return build_utility_step(utility, image, label, fast=precision == "fast")

    flops = count_flops(fresh_step("fp32"))
    section: dict[str, Any] = {"gflop_per_step": round(flops / 1e9, 1)}
    for precision in PRECISIONS:
        logger.info("benchmark: utility training step, plain loop, %s", precision)
        section[precision] = time_step(fresh_step(precision), settings["batch_size"], settings["repeats"],
                                       settings["warmup"], device, flops)
    section["speedup"] = round(section["fast"]["slices_per_s"] / section["fp32"]["slices_per_s"], 3)
    return section


def _dice_section(root: Path, work: Path, utility_checkpoint: str, dataset: str, epochs: int,
                  overrides: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Train the noise model ``epochs`` epochs in fp32 and on the fast path; compare validation dice."""
    import json

    section: dict[str, Any] = {"utility_checkpoint": str(utility_checkpoint), "dataset": str(dataset), "epochs": epochs,
                               "metric": "last epoch's val_dice_perturbed (mean per-slice dice of the utility on "
                                         "U-Noise-perturbed validation slices); val_dice_clean beside it"}
    for precision in PRECISIONS:
        logger.info("benchmark: dice check, %d noise-training epochs, %s", epochs, precision)
        output = work / f"dice-{precision}"
        config = {"dataset_dir": str(dataset), "utility_checkpoint": str(utility_checkpoint), "output_dir": str(output),
                  "epochs": epochs, **overrides, **_pipeline_overrides(precision, device)}
        workflow = build_workflow(root, "train_noise", config)
        workflow.initialize()
        workflow.run()
        workflow.finalize()
        last = json.loads((output / "metrics.json").read_text())["epochs"][-1]
        section[precision] = {key: round(float(last[key]), 4) for key in
                              ("val_dice_perturbed", "val_dice_clean", "val_mean_tolerance", "val_ring_ratio") if key in last}
        section[precision]["seconds_per_epoch"] = round(float(last["seconds"]), 1)  # training + validation
    section["dice_delta"] = round(section["fast"]["val_dice_perturbed"] - section["fp32"]["val_dice_perturbed"], 4)
    section["clean_dice_delta"] = round(section["fast"]["val_dice_clean"] - section["fp32"]["val_dice_clean"], 4)
    section["tolerance"] = DICE_TOLERANCE
    section["within_tolerance"] = abs(section["dice_delta"]) <= DICE_TOLERANCE and abs(section["clean_dice_delta"]) <= DICE_TOLERANCE
    return section
