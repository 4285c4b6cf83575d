"""Several processes, one run: process group, rank queries, reductions and rank-0-only outputs.

``configs/multi_gpu_train.json`` layers these over a training config started with ``torchrun``: one
process per GPU (or several CPU processes with ``gloo``, for testing), gradients averaged by PyTorch's
``DistributedDataParallel``, validation slices shared out by MONAI's ``DistributedSampler``. Every rank
trains and validates; only rank 0 writes files (checkpoints, ``metrics.json``, TensorBoard,
``config.json``, ``datalist.json``).

The rank queries work before the process group exists too: they read the ``RANK`` and ``WORLD_SIZE``
variables ``torchrun`` sets, so a bundle's ``initialize`` expressions can ask "am I rank 0?" before the
device is resolved. In a plain single process every query answers rank 0 of 1 and every reduction
returns its input, so single-process runs behave exactly as without this module.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events

from pipeline.errors import ConfigError

logger = logging.getLogger(__name__)

TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError as err:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer; unset it or let torchrun set it.") from err


def is_distributed() -> bool:
    """True once a process group of more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _launched_by_torchrun() -> bool:
    """Every variable ``torchrun`` sets is there, for more than one process.

    A lone ``RANK`` (as some cluster schedulers set for other purposes) is not enough: a single-process
    run that took it for its rank would silently write no checkpoints.
    """
    return all(name in os.environ for name in TORCHRUN_VARIABLES) and _env_int("WORLD_SIZE", 1) > 1


def get_rank() -> int:
    """This process's rank: from the process group when it exists, else ``$RANK`` under torchrun, else 0."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return _env_int("RANK", 0) if _launched_by_torchrun() else 0


def get_world_size() -> int:
    """Number of processes: from the process group when it exists, else ``$WORLD_SIZE``, else 1."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return _env_int("WORLD_SIZE", 1) if _launched_by_torchrun() else 1


def is_main_process() -> bool:
    """True on rank 0 (and in any single-process run): the process that writes the run's files."""
    return get_rank() == 0


def init_distributed(device: str | torch.device = "auto", timeout_minutes: float = 30.0) -> torch.device:
    """Join the process group ``torchrun`` set up and return this process's device.

    CUDA (``auto`` with a GPU, or ``cuda``) uses the ``nccl`` backend and the device ``cuda:$LOCAL_RANK``
    (also made the current CUDA device); ``cpu`` (or ``auto`` without a GPU) uses ``gloo``. Calling it
    again returns the same device without re-initialising.

    Args:
        device: ``auto``, ``cpu`` or ``cuda``. A numbered ``cuda:N`` is refused: each process takes the
            GPU of its local rank (choose GPUs with ``CUDA_VISIBLE_DEVICES``).
        timeout_minutes: how long a collective waits for the other processes before failing.

    Returns:
        The device of this process.

    Raises:
        ConfigError: not started by ``torchrun`` (its environment variables are missing), a numbered
            CUDA device, CUDA asked for but absent, or fewer visible GPUs than local processes.
    """
    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing and not dist.is_initialized():
        raise ConfigError(
            f"multi_gpu_train.json / multi_gpu_inference.json need the process environment torchrun sets "
            f"({', '.join(missing)} missing); start it with `torchrun --nproc_per_node N -m monai.bundle run ...`, or "
            "drop that config from --config_file for a single process."
        )
    name = str(device)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cpu", "cuda"):
        raise ConfigError(
            f"device must be 'auto', 'cpu' or 'cuda' with multi_gpu_train.json, got {str(device)!r}; each process "
            "uses cuda:$LOCAL_RANK, so choose the GPUs with CUDA_VISIBLE_DEVICES instead of a device number."
        )
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device 'cuda' was asked for but CUDA is not available here; use --device cpu (gloo).")
        local_rank = _env_int("LOCAL_RANK", 0)
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"local rank {local_rank} has no GPU: {torch.cuda.device_count()} visible; start at most that many "
                "processes per node (--nproc_per_node)."
            )
        resolved = torch.device("cuda", local_rank)
        torch.cuda.set_device(resolved)
        backend = "nccl"
    else:
        resolved, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_minutes))
        logger.info("process group: rank %d of %d, backend %s, device %s", get_rank(), get_world_size(), backend, resolved)
    return resolved


def barrier(device: torch.device | None = None) -> None:
    """Wait until every process gets here (nothing to wait for in a single process).

    Args:
        device: the run's device; with NCCL the barrier runs on it.
    """
    if not is_distributed():
        return
    if device is not None and device.type == "cuda" and dist.get_backend() == "nccl":
        dist.barrier(device_ids=[device.index if device.index is not None else torch.cuda.current_device()])
    else:
        dist.barrier()


def launched_by_torchrun() -> bool:
    """Whether this process is one of several that ``torchrun`` started (its variables set, ``WORLD_SIZE`` > 1)."""
    return _launched_by_torchrun()


def cleanup(exit_code: int = 0) -> None:
    """Leave the process group (the bundle's ``finalize``); nothing to do when there is none.

    Every rank first waits for the others: a rank that destroys the group while rank 0 is still writing
    its last checkpoint can make gloo abort the process ("terminate called without an active exception").
    A ``torchrun`` worker then exits at once (``os._exit(exit_code)``, after flushing its logs): this is the last
    step of the run, and the interpreter's own teardown of the gloo objects can abort too.
    """
    if dist.is_available() and dist.is_initialized():
        if dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()
        if _launched_by_torchrun():
            # The run is over and every file is written. gloo's worker threads can still abort the interpreter's
            # teardown ("terminate called without an active exception", exit -6, about one run in ten on a loaded
            # CPU; pytorch/pytorch#190489): a torchrun worker leaves now, its output flushed.
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(exit_code)


def quiet_other_ranks() -> None:
    """On ranks above 0, drop INFO and DEBUG log records everywhere: only rank 0 reports progress.

    Warnings and errors still show on every rank. ``logging.disable`` covers loggers and handlers made
    later too (MONAI's ``StatsHandler`` adds its own when the engines are built), and leaves the loggers'
    levels alone, so ``StatsHandler`` does not warn that its logger is muted.
    """
    if not is_main_process():
        logging.disable(logging.INFO)


def gather_objects(value: Any) -> list[Any]:
    """Every rank's ``value`` (picklable), in rank order; ``[value]`` in a single process.

    A collective: every rank must call it, the same number of times and in the same order.
    """
    if not is_distributed():
        return [value]
    import ignite.distributed as idist

    # wrapped, so that any value (None, a number, a string) takes Ignite's object path and comes back as it went
    return [item[0] for item in idist.all_gather((value,))]


def sum_over_ranks(values: Mapping[str, float]) -> dict[str, float]:
    """Key-wise sum of each rank's ``values``, added in rank order (so every rank gets the same numbers).

    Keys missing on a rank count as 0. In a single process the input comes back unchanged. A collective,
    as :func:`gather_objects`.
    """
    total: dict[str, float] = {}
    for rank_values in gather_objects(dict(values)):
        for key, value in rank_values.items():
            total[key] = total[key] + value if key in total else value
    return total


class NullSummaryWriter:
    """Stands in for TensorBoard's ``SummaryWriter`` on ranks above 0: every method accepts anything and does nothing.

    ``_get_file_writer()`` returns the stand-in itself: MONAI's 3D image plots (animated GIFs) write through it.
    """

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)

        def ignore(*args: Any, **kwargs: Any) -> Any:
            return self if name == "_get_file_writer" else None

        return ignore


def build_summary_writer(log_dir: str | os.PathLike, **kwargs: Any) -> Any:
    """TensorBoard ``SummaryWriter`` on rank 0 (and in a single process), a :class:`NullSummaryWriter` elsewhere.

    One set of event files per run, however many processes train it.

    Args:
        log_dir: the run's ``tensorboard/`` folder.
        kwargs: passed to ``SummaryWriter``.
    """
    if not is_main_process():
        return NullSummaryWriter()
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(log_dir), **kwargs)


class BroadcastBuffers:
    """Copy rank 0's module buffers (BatchNorm running statistics) to every rank when an engine starts.

    ``DistributedDataParallel`` averages gradients, so the weights agree on every rank, but each rank
    updates its BatchNorm running statistics with its own batches after DDP's broadcast. Attached to the
    evaluator, this makes every rank validate exactly the model rank 0 saves in its checkpoints. Does
    nothing in a single process.

    Args:
        module: the trained network (a ``DistributedDataParallel`` wrapper is unwrapped).
        src: the rank whose buffers are copied.
    """

    def __init__(self, module: torch.nn.Module, src: int = 0) -> None:
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"BroadcastBuffers needs a torch.nn.Module, got {type(module).__name__}.")
        self.module = module.module if isinstance(module, torch.nn.parallel.DistributedDataParallel) else module
        self.src = src

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine | None = None) -> None:
        if not is_distributed():
            return
        with torch.no_grad():
            for buffer in self.module.buffers():
                dist.broadcast(buffer, src=self.src)
