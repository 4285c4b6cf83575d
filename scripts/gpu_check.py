"""The chain on a CUDA GPU, end to end at small size, with its figures written to JSON (``make gpu-check``).

    python scripts/gpu_check.py --output gpu_check.json [--work runs/gpu_check]

Phantoms, one epoch of each training with AMP (the configs' default on CUDA), ``explain`` of the test
volumes, ``evaluate`` without the sanity check and a quick ``unoise benchmark``, every step as a user runs
it (``python -m pipeline ...`` in a fresh process, ``--device cuda``). Meant to finish in under 8 minutes on
one GPU. On a machine without CUDA it says so and exits 0: nothing here can be checked there.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

SPLIT = ["--val-fraction", "0.2", "--test-fraction", "0.2", "--seed", "0"]


def _step(name: str, args: list[str], record: dict, timeout: int) -> None:
    """Run ``python -m pipeline ARGS``; record its seconds and exit status; stop the check on a failure."""
    started = time.perf_counter()
    print(f"== {name}: unoise {' '.join(args)}", flush=True)
    result = subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, timeout=timeout)
    record["steps"][name] = {"seconds": round(time.perf_counter() - started, 1), "returncode": result.returncode}
    print(result.stdout[-1500:], end="", flush=True)
    if result.returncode != 0:
        record["steps"][name]["stderr_tail"] = result.stderr[-3000:]
        raise RuntimeError(f"{name} failed (exit {result.returncode}): {result.stderr.strip().splitlines()[-1:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="gpu_check.json", help="the JSON record (default: gpu_check.json)")
    parser.add_argument("--work", default="runs/gpu_check", help="the folder of the check's data and runs (replaced)")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device on this machine (torch.cuda.is_available() is False); nothing to check here. "
              "Run it where a GPU is: make gpu-check")
        return 0
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    data, utility, noise = work / "phantom", work / "utility", work / "noise"
    record: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
                    "python": platform.python_version(), "steps": {}}
    started = time.perf_counter()
    try:
        _step("phantom", ["phantom", "--out", str(data), "--cases", "12", "--size", "64", "--slices", "16", "--seed", "0",
                          "--test-cases", "2"], record, 120)
        _step("train_utility", ["train-utility", "--dataset", str(data), "--output", str(utility), *SPLIT, "--device", "cuda",
                                "--preset", "small", "--spatial-size", "64", "--epochs", "1", "--batch-size", "8"], record, 300)
        _step("train_noise", ["train-noise", "--dataset", str(data), "--utility", str(utility / "checkpoints" / "last.pt"),
                              "--output", str(noise), *SPLIT, "--device", "cuda", "--noise-preset", "small", "--epochs", "1",
                              "--batch-size", "8"], record, 300)
        _step("explain", ["explain", "--input", str(data / "imagesTs"), "--output", str(work / "explain"), "--device", "cuda",
                          "--noise", str(noise / "checkpoints" / "best.pt"), "--utility", str(utility / "checkpoints" / "last.pt")],
              record, 120)
        _step("evaluate", ["evaluate", "--dataset", str(data), "--utility", str(utility / "checkpoints" / "last.pt"), "--noise",
                           str(noise / "checkpoints" / "best.pt"), "--output", str(work / "evaluation"), *SPLIT, "--device", "cuda",
                           "--sanity", "false", "--slices-per-case", "2", "--occlusion-stride", "8", "--bootstrap", "200"],
              record, 300)
        _step("benchmark", ["benchmark", "--output", str(work / "benchmark.json"), "--device", "cuda", "--spatial-size", "64",
                            "--batch-size", "8", "--repeats", "3", "--warmup", "1", "--cases", "4", "--slices", "8"], record, 300)
        for name, path in (("utility", utility / "metrics.json"), ("noise", noise / "metrics.json")):
            record[name] = json.loads(path.read_text()).get("epochs", [{}])[-1]
        evaluation = json.loads((work / "evaluation" / "evaluation.json").read_text())
        record["evaluation"] = {"clean_dice": evaluation["clean_dice"],
                                **{name: {k: m[k] for k in ("visibility_auc", "deletion_auc", "ms_per_map")}
                                   for name, m in evaluation["methods"].items()}}
        record["benchmark"] = json.loads((work / "benchmark.json").read_text())
        record["passed"] = True
    except Exception as err:  # the record says where it stopped
        record["passed"], record["error"] = False, str(err)
    record["seconds"] = round(time.perf_counter() - started, 1)
    Path(args.output).write_text(json.dumps(record, indent=2, default=str))
    print(f"gpu-check {'passed' if record['passed'] else 'FAILED'} in {record['seconds']:.0f} s on {record['device']}: "
          f"{args.output}")
    return 0 if record["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
