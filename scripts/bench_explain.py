"""Cost of one explanation against one utility forward pass, per 256 x 256 slice, on this machine. Writes JSON.

    python scripts/bench_explain.py --output bench_explain.json
    python scripts/bench_explain.py --size 64 --repeats 2     # toy size (the tests run this)

A U-Noise map is one forward pass of the noise model (importance = 1 - sigmoid(logits)); the reference is one
forward pass of the ``paper`` utility (the authors' 5-level UNet). Both are timed in the default (contiguous)
memory format and in channels-last (what ``explain`` uses), each network and input in the same format.
Medians of ``--repeats`` timed runs after warm-up, networks in eval mode under ``torch.inference_mode``,
weights random (cost does not depend on them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from pipeline.networks import build_unet, count_parameters
from pipeline.noise import apply_tolerance, importance_from_tolerance


def time_ms(function, repeats: int, warmup: int = 2) -> float:
    """Median milliseconds of ``function()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def run(size: int, repeats: int, utility_preset: str = "paper") -> dict:
    torch.manual_seed(0)
    result: dict = {"settings": {"size": size, "repeats": repeats, "threads": torch.get_num_threads(),
                                 "utility_preset": utility_preset}}
    formats = {"": torch.contiguous_format, "channels_last_": torch.channels_last}
    with torch.inference_mode():
        for prefix, memory_format in formats.items():
            image = torch.rand(1, 1, size, size).contiguous(memory_format=memory_format)
            utility = build_unet(utility_preset).eval().to(memory_format=memory_format)
            utility_ms = time_ms(lambda: utility(image), repeats)
            result[f"{prefix}utility_forward_ms"] = utility_ms
            result["utility_parameters"] = count_parameters(utility)
            for preset in ("small", "medium", "large"):
                noise_net = build_unet(preset).eval().to(memory_format=memory_format)
                noise_ms = time_ms(lambda: importance_from_tolerance(apply_tolerance(noise_net(image))), repeats)
                result[f"{prefix}unoise_{preset}_ms"] = noise_ms
                result[f"{prefix}unoise_{preset}_over_utility"] = noise_ms / utility_ms
                result[f"unoise_{preset}_parameters"] = count_parameters(noise_net)
    result["machine"] = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                         "cpu_count": os.cpu_count(), "torch": torch.__version__}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="slice size in pixels (default 256)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--output", type=Path, default=Path("bench_explain.json"))
    args = parser.parse_args(argv)
    result = run(args.size, args.repeats)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    for key, value in result.items():
        if key.endswith(("_ms", "_over_utility")):
            print(f"{key:28s} {value:10.3f}")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
