"""Measuring tools of the benchmark: median timings, peak memory, FLOP counts, the machine's description."""

from __future__ import annotations

import gc
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import ConfigError


def time_runs(function: Callable[[], Any], repeats: int, warmup: int, device: torch.device) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``function()`` after ``warmup`` untimed calls.

    CUDA work is synchronised before each clock reading, so queued kernels are counted.
    """
    if repeats < 1 or warmup < 0:
        raise ConfigError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}.")
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        function()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA kernels (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def _proc_status_mb(field: str) -> float | None:
    """A memory field of /proc/self/status (``VmHWM`` peak resident, ``VmRSS`` resident) in MiB; None off Linux."""
    status = Path("/proc/self/status")
    if not status.is_file():
        return None
    for line in status.read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024.0
    return None


def _reset_rss_peak() -> bool:
    """Reset VmHWM to the current resident size (Linux ``clear_refs`` 5); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, Any]]:
    """Peak memory of the enclosed work, filled into the yielded dict on exit.

    CUDA: ``peak_mb`` = ``torch.cuda.max_memory_allocated`` (tensors only), ``kind`` ``cuda_allocated``.
    CPU (Linux): ``peak_mb`` = the process's peak resident memory while the block ran (the peak is reset
    on entry), ``kind`` ``cpu_rss``; it includes everything the process holds (Python, libraries, caches).
    ``start_mb`` is the memory on entry and ``increase_mb`` = ``peak_mb - start_mb``, what the enclosed
    work added at its peak. Off Linux the CPU figures are None.
    """
    record: dict[str, Any] = {}
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device) / 2**20
        yield record
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        record.update(peak_mb=round(peak, 1), start_mb=round(start, 1), increase_mb=round(peak - start, 1),
                      kind="cuda_allocated")
        return
    gc.collect()
    reset = _reset_rss_peak()
    start = _proc_status_mb("VmRSS")
    yield record
    peak = _proc_status_mb("VmHWM") if reset else None
    known = peak is not None and start is not None
    record.update(peak_mb=None if peak is None else round(peak, 1), kind="cpu_rss",
                  start_mb=None if start is None else round(start, 1),
                  increase_mb=round(peak - start, 1) if known else None)


def count_flops(function: Callable[[], Any]) -> int:
    """Floating-point operations of one call of ``function()``, counted by PyTorch's ``FlopCounterMode``.

    Counts matrix products and convolutions (forward and backward), which are nearly all of a UNet's work.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        function()
    return int(counter.get_total_flops())


def describe_machine(device: torch.device) -> dict[str, Any]:
    """What the figures were measured on: CPU model and cores, threads, GPU, library versions."""
    import ignite
    import monai

    from pipeline.device import BF16_CPU_FLAGS, cpu_flags

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file() and cpu in ("", platform.machine()):
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        cpu = names[0] if names else cpu
    machine: dict[str, Any] = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_bf16_instructions": sorted(cpu_flags() & set(BF16_CPU_FLAGS)),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "ignite": ignite.__version__,
    }
    return machine
