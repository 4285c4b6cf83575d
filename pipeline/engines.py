"""Pieces the bundle configs wire into MONAI engines: device, inferer, loss, optimizer, schedule, run folder.

The engines themselves are MONAI's ``SupervisedTrainer`` / ``SupervisedEvaluator``, built in the JSON
configs; this module holds only what needs code: choosing values by name, bf16 autocast on CPU (MONAI's
``amp`` flag autocasts on CUDA only), and a run folder that refuses to overwrite an earlier run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine
from monai.inferers import Inferer, SimpleInferer

from pipeline.distributed import is_main_process
from pipeline.errors import ConfigError
from pipeline.fileio import write_json_atomic

logger = logging.getLogger(__name__)



def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise the named device (``cpu``, ``cuda:1``...)."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}.") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} was asked for but CUDA is not available here; use --device cpu or auto.")
    return resolved


class AutocastInferer(Inferer):
    """Run the network under ``torch.autocast`` and hand back float32 logits.

    MONAI's engines autocast only on CUDA (``amp=True``); this inferer gives the same on the CPU with
    bfloat16, where matrix products run several times faster on recent x86 cores.

    Args:
        device_type: ``cpu`` or ``cuda``.
        dtype: autocast dtype (``torch.bfloat16`` on CPU).
    """

    def __init__(self, device_type: str = "cpu", dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.device_type = device_type
        self.dtype = dtype

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=self.dtype):
            logits = network(inputs, *args, **kwargs)
        return logits.float()


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags() -> set[str]:
    """The instruction-set flags of the first CPU in ``/proc/cpuinfo``; empty off Linux."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return set()
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_has_bf16() -> bool:
    """True when the CPU multiplies bf16 in hardware (``avx512_bf16`` or AMX flags).

    Without them bf16 autocast is emulated and usually slower than fp32; off Linux the answer is False.
    """
    return any(flag in cpu_flags() for flag in BF16_CPU_FLAGS)


def cpu_autocast_dtype(device: torch.device, cpu_bf16: bool | str) -> torch.dtype | None:
    """``torch.bfloat16`` when bf16 autocast applies on this CPU (``cpu_bf16`` true, or ``auto`` with
    :func:`cpu_has_bf16`), else None (on CUDA, MONAI's ``amp`` autocasts instead)."""
    if cpu_bf16 not in (True, False, "auto"):
        raise ConfigError(f"cpu_bf16 must be true, false or 'auto', got {cpu_bf16!r}.")
    if device.type == "cpu" and (cpu_has_bf16() if cpu_bf16 == "auto" else cpu_bf16):
        return torch.bfloat16
    return None


def build_inferer(device: torch.device, cpu_bf16: bool | str = False) -> Inferer:
    """bf16 :class:`AutocastInferer` on CPU when asked, else MONAI's ``SimpleInferer`` (CUDA uses engine AMP).

    Args:
        device: the run's device.
        cpu_bf16: True, False, or ``auto`` (bf16 where :func:`cpu_has_bf16`).
    """
    dtype = cpu_autocast_dtype(device, cpu_bf16)
    return AutocastInferer("cpu", dtype) if dtype is not None else SimpleInferer()


def memory_format(channels_last: bool) -> torch.memory_format:
    """``torch.channels_last`` or ``torch.contiguous_format``: what ``network.to(memory_format=...)`` takes.

    Channels-last (NHWC) lets oneDNN on x86 CPUs and cuDNN with AMP on GPUs run 2D convolutions without
    layout conversions (``unoise benchmark`` measures the gain); values agree with the contiguous layout
    to float rounding.
    """
    return torch.channels_last if channels_last else torch.contiguous_format


def resolve_workers(num_workers: int | str, device: torch.device) -> int:
    """Data-loader worker processes: ``auto`` -> 4 with CUDA (at most half this process's share of the
    CPUs, when ``torchrun`` puts several processes on the node), 0 on the CPU.

    On the CPU the workers would take cores from the training step itself, and slices come from the
    cache in well under 1% of a step (``unoise benchmark`` reports the wait); with a GPU the CPU is free to
    augment ahead of it.
    """
    if num_workers == "auto":
        if device.type != "cuda":
            return 0
        processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
        return min(4, max(1, (os.cpu_count() or 2) // (2 * processes)))
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ConfigError(f"num_workers must be 'auto' or an integer >= 0, got {num_workers!r}.")
    return num_workers


def check_schedule(epochs: int, learning_rate: float, min_lr: float) -> None:
    """Refuse a schedule no training can run: the configs' optimizer and scheduler are ``_target_`` entries
    (torch's own classes), checked here first so that the error names the setting."""
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"epochs must be >= 1, got {epochs}.")
    if not learning_rate > 0:
        raise ConfigError(f"learning_rate must be > 0, got {learning_rate}.")
    if not 0 <= min_lr <= learning_rate:
        raise ConfigError(f"min_lr must be in [0, learning_rate {learning_rate}], got {min_lr}.")


def metric_score(name: str) -> Callable[[Engine], float]:
    """Score function for early stopping: the evaluator's metric ``name``."""

    def score(engine: Engine) -> float:
        return float(engine.state.metrics[name])

    return score


RESUME_DATA_KEYS = ("dataset_dir", "datalist_key", "window", "spatial_size", "pancreas_labels", "seed", "val_fraction",
                    "test_fraction", "utility_checkpoint", "utility_bundle", "target_channel")  # besides the network


def check_run_dir(
    output_dir: str | os.PathLike,
    resume: bool,
    run_config: dict[str, Any],
    marker: str = "checkpoints/last.pt",
    expected_meta: dict[str, Any] | None = None,
) -> Path:
    """Every check of a run folder, creating and writing nothing (see :func:`prepare_run_dir`).

    The folder must not be a file, hold a run of another config (its ``config.json``), hold a run
    already (unless ``resume``), or be in use by another process. A resume needs ``last.pt``, the same
    kind of network (``expected_meta``) and the same data settings as the run's ``config.json``, and a
    readable ``metrics.json``.

    Raises:
        ConfigError: a folder problem, or a resume that would change the data.
        CheckpointError: a resume with a different network or checkpoint kind.
    """
    from pipeline.checkpoints import check_resume, load_checkpoint
    from pipeline.rundir import check_run_kind, lock_is_held

    run_dir = Path(output_dir)
    last = run_dir / marker
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: exists and is not a folder; choose another --output.")
    check_run_kind(run_dir, str(run_config.get("config", "")))
    if is_main_process() and lock_is_held(run_dir):  # the other ranks of this run see rank 0's lock
        raise ConfigError(f"{run_dir}: in use by another run ({run_dir / '.lock'}); wait for it to finish or choose another --output.")
    if last.exists() and not resume:
        hint = ("pass --resume (unoise) or --resume true (monai.bundle run) to continue it, or choose another --output"
                if marker == "checkpoints/last.pt" else "choose another --output")
        raise ConfigError(f"{run_dir}: already holds a run ({last}); {hint}.")
    if resume and not last.exists():
        raise ConfigError(f"{run_dir}: --resume was asked for but {last} does not exist; start a new run without --resume.")
    if resume:
        if expected_meta is not None:
            check_resume(load_checkpoint(last).get("meta", {}), expected_meta, last)
        _check_resume_data(run_dir, run_config)
    return run_dir


def _same(key: str, recorded: Any, asked: Any) -> bool:
    if key in ("dataset_dir", "utility_checkpoint") and recorded is not None and asked is not None:
        return os.path.abspath(os.path.expanduser(str(recorded))) == os.path.abspath(os.path.expanduser(str(asked)))
    return recorded == asked


def _check_resume_data(run_dir: Path, run_config: dict[str, Any]) -> None:
    """A resume continues on the run's own data: its config.json settings and a readable metrics.json."""
    import json

    record, metrics = run_dir / "config.json", run_dir / "metrics.json"
    for path in (record, metrics):
        if path.exists():
            try:
                json.loads(path.read_text())
            except (OSError, ValueError) as err:
                raise ConfigError(f"{path}: cannot be read ({err}); the run folder is damaged: start a new run.") from err
    if not record.is_file():
        return
    recorded = json.loads(record.read_text())
    differ = [f"{key} {recorded[key]!r} in the run, {run_config[key]!r} asked for" for key in RESUME_DATA_KEYS
              if key in recorded and key in run_config and not _same(key, recorded[key], run_config[key])]
    if differ:
        raise ConfigError(f"{record}: --resume would continue on other data ({'; '.join(differ)}); resume with the run's "
                          "own settings or start a new run in another --output.")


def prepare_run_dir(
    output_dir: str | os.PathLike,
    resume: bool,
    run_config: dict[str, Any],
    marker: str = "checkpoints/last.pt",
    subfolders: tuple[str, ...] = ("checkpoints", "tensorboard"),
    expected_meta: dict[str, Any] | None = None,
) -> Path:
    """Check (:func:`check_run_dir`), then lock and create ``RUN_DIR`` and write ``config.json``.

    A refused run leaves the disk as it was: every check runs before anything is created. Then the
    folder is locked against a second process (:mod:`pipeline.rundir`), leftover ``.tmp-*`` files of a
    killed run are removed, and best/last checkpoints are reconciled for the resume.

    Under several processes every rank checks the folder (so all fail alike), but only rank 0 creates it
    and writes ``config.json``; ``multi_gpu_train.json`` makes the other ranks wait for it.

    Args:
        output_dir: the run folder.
        resume: continue the run whose ``marker`` (``checkpoints/last.pt``) is there.
        run_config: the experiment values, written to ``RUN_DIR/config.json``; ``run_config["config"]``
            names the kind of run.
        marker: the file whose presence means "this folder holds a run".
        subfolders: folders created inside the run folder.
        expected_meta: the checkpoint meta this run writes; a resume compares it with ``last.pt``'s.

    Raises:
        ConfigError: the folder already holds a run (or another kind of run), ``resume`` has nothing to
            resume or would change the data, or another process holds the folder.
        CheckpointError: ``resume`` with a different network or checkpoint kind.
    """
    from pipeline.checkpoints import reconcile_best
    from pipeline.rundir import acquire_lock, record_created, remove_temporaries

    run_dir = check_run_dir(output_dir, resume, run_config, marker, expected_meta)
    if not is_main_process():
        return run_dir
    folder_is_new = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    acquire_lock(run_dir)  # before recording: a process refused here must not roll back the owner's folder
    remove_temporaries(run_dir)
    if resume and marker == "checkpoints/last.pt" and reconcile_best(run_dir / "checkpoints"):
        logger.info("%s: best.pt rebuilt from last.pt, whose epoch was the best when the previous run stopped", run_dir)
    for sub in subfolders:
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    record = run_dir / ("config_resume.json" if resume else "config.json")
    record_created(run_dir, folder_is_new, [] if record.exists() else [record])
    write_json_atomic(run_config, record)
    return run_dir


def finish_run_dir(output_dir: str | os.PathLike) -> None:
    """Release the run folder's lock (the configs' ``finalize``; ``atexit`` does it on errors)."""
    from pipeline.rundir import release_lock

    release_lock(output_dir)


def init_noise_from(
    noise_net: torch.nn.Module, checkpoint: str | os.PathLike | None, noise_preset: str, device: torch.device
) -> torch.nn.Module:
    """The "pretrained" variant: start the noise model from a segmentation checkpoint of the same shape.

    Args:
        noise_net: the freshly built noise model.
        checkpoint: a utility checkpoint whose network has the noise preset's shape (e.g. a ``demo`` or
            ``large`` utility for a ``large`` noise model); None leaves the random initialisation.
        noise_preset: the noise model's preset, named in errors.
        device: where the weights are loaded.

    Raises:
        CheckpointError: unreadable checkpoint, or weights of another shape.
    """
    if checkpoint is None:
        return noise_net
    from pipeline.checkpoints import load_network_weights

    meta = load_network_weights(noise_net, checkpoint, noise_preset, device, check_preset=False)
    logger.info("noise model initialised from %s (a '%s' network)", checkpoint, meta.get("preset", "unknown"))
    return noise_net


def prepare_output_dir(
    output_dir: str | os.PathLike, datalist: list[dict[str, Any]], suffixes: list[str], overwrite: bool = False
) -> Path:
    """Check, then create and lock the output folder of ``explain``; refuse to replace earlier outputs unless ``overwrite``.

    The folder must not hold another kind of run; once locked, ``.tmp-*`` leftovers of a killed run go.

    Args:
        output_dir: the folder.
        datalist: entries with ``case`` names; outputs are ``<case><suffix>``.
        suffixes: output name endings, e.g. ``_importance.nii.gz``.
        overwrite: replace existing outputs.

    Raises:
        ConfigError: outputs of these cases are already there and ``overwrite`` is false (names them), the
            folder holds another kind of run, or another process writes into it.
    """
    from pipeline.rundir import acquire_lock, check_run_kind, record_created, remove_temporaries

    folder = Path(output_dir)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder}: exists and is not a folder; choose another --output.")
    check_run_kind(folder, "inference")
    cases = [str(entry["case"]) for entry in datalist]
    existing = [folder / f"{case}{suffix}" for case in cases for suffix in suffixes if (folder / f"{case}{suffix}").exists()]
    if existing and not overwrite:
        shown = ", ".join(p.name for p in existing[:3]) + (" ..." if len(existing) > 3 else "")
        raise ConfigError(f"{folder}: {len(existing)} output file(s) already exist ({shown}); choose another --output or pass --overwrite.")
    folder_is_new = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    acquire_lock(folder)  # before recording: a process refused here must not roll back the owner's folder
    record_created(folder, folder_is_new, [])
    remove_temporaries(folder)
    return folder
