"""Data-path benchmark: phantom generation, load + window, and slices from the cache. Writes JSON.

    python scripts/bench_data.py --output bench_data.json            # 24 cases, 128 x 128 x 48
    python scripts/bench_data.py --cases 4 --size 64 --slices 16     # toy size (the tests run this)

Each figure is the median of ``--repeats`` runs; machine facts are recorded beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from pipeline.data import SliceDataset, build_volume_dataset, build_volume_transforms, load_datalist
from pipeline.phantom import write_phantom_dataset


def _median_seconds(work, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(cases: int, size: int, slices: int, spatial_size: int | None, repeats: int) -> dict:
    """Time the three stages on a fresh phantom set; returns the result dict."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "phantom"
        generate = _median_seconds(lambda: write_phantom_dataset(root, cases=cases, size=size, slices=slices, seed=0), repeats)
        datalist = load_datalist(root)
        chain = build_volume_transforms(spatial_size=spatial_size)
        load = _median_seconds(lambda: [chain(entry) for entry in datalist], repeats)
        volumes = build_volume_dataset(datalist, chain, cache="memory", progress=False)
        dataset = SliceDataset(volumes, policy="all")

        def read_all() -> None:
            for i in range(len(dataset)):
                dataset[i]

        cached = _median_seconds(read_all, repeats)
        disk_volumes = build_volume_dataset(datalist, chain, cache="disk", cache_dir=Path(tmp) / "cache", progress=False)
        disk_dataset = SliceDataset(disk_volumes, policy="all")  # first pass fills the disk cache
        disk = _median_seconds(lambda: [disk_dataset[i] for i in range(len(disk_dataset))], repeats)
    return {
        "settings": {"cases": cases, "size": size, "slices": slices, "spatial_size": spatial_size, "repeats": repeats},
        "phantom_cases_per_s": cases / generate,
        "phantom_seconds": generate,
        "load_window_volumes_per_s": cases / load,
        "cached_slices_per_s_memory": len(dataset) / cached,
        "cached_slices_per_s_disk": len(disk_dataset) / disk,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=24)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--slices", type=int, default=48)
    parser.add_argument("--spatial-size", type=int, default=None, help="in-plane resize (default: keep)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=Path("bench_data.json"))
    args = parser.parse_args(argv)
    result = run(args.cases, args.size, args.slices, args.spatial_size, args.repeats)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in result.items() if k != "machine"}, indent=2))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
