"""Where and how the networks run: the device, CPU bf16 autocast, the memory format, loader workers.

MONAI's ``amp`` flag autocasts on CUDA only; :class:`AutocastInferer` brings bf16 autocast to CPUs with
bf16 instructions.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from monai.inferers import Inferer, SimpleInferer

from pipeline.errors import ConfigError


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


__all__ = ["AutocastInferer", "BF16_CPU_FLAGS", "build_inferer", "cpu_autocast_dtype", "cpu_flags", "cpu_has_bf16", "memory_format",
           "resolve_device", "resolve_workers"]
