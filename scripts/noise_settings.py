"""Choose U-Noise training settings on the validation split: train each setting, evaluate all, write a table.

Every setting is a set of ``train_noise.json`` overrides. Each is trained against the same utility on the
same split (``unoise train-noise``), then all are evaluated together on the *validation* split (never
the test split) with the default protocol (body-restricted, against the clean prediction, under every
judged infill and the held-out ones), beside occlusion (one map per infill) and the null maps, and the
table of every setting tried is written to ``--output`` (JSON) and printed (markdown): per infill the
visibility / deletion AUC, and per setting how many paired comparisons against occlusion and the
segmentation map it loses and wins under the judged infills. A run folder that already holds a
setting's checkpoint is reused.

Example (after ``make demo``)::

    python scripts/noise_settings.py --dataset data/phantom --utility runs/demo-*/utility/checkpoints/last.pt \\
        --work-dir runs/noise-settings --output noise_settings.json --slices-per-case 3 --occlusion-stride 8
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from pipeline.bundle import run_bundle
from pipeline.evaluation.compare import paired_against
from pipeline.evaluation.criteria import infill_verdicts
from pipeline.evaluation.run import run_evaluation
from pipeline.fileio import write_json_atomic

MIX = ["blur", "mean", "noise", "floor"]
CURVES = {"objective": "curves", "baseline": MIX, "deletion_weight": 1.0, "noise_weight": 0.01}
# The grid behind the bundle's defaults (docs/unoise.md, "Choosing the noise settings"): the blur-only blend default of
# earlier releases, then the curves objective toward the mixture of infills with the deletion term, over
# the soft top-p's edge (rank_temperature).
DEFAULT_GRID: list[dict[str, Any]] = [
    {"name": "blend_blur", "overrides": {"objective": "blend", "baseline": "blur", "noise_weight": 0.06,
                                         "deletion_weight": 0.0}},
    {"name": "curves_mix_del_bound_a0.01", "overrides": {**CURVES, "rank_temperature": 0.1}},
    {"name": "curves_mix_del_a0.01_T0.5", "overrides": {**CURVES, "rank_temperature": 0.5}},
    {"name": "curves_mix_del_a0.01_T1", "overrides": {**CURVES, "rank_temperature": 1.0}},
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="the utility's dataset")
    parser.add_argument("--utility", required=True, help="utility checkpoint")
    parser.add_argument("--work-dir", type=Path, required=True, help="run folders of the settings and the evaluation")
    parser.add_argument("--output", type=Path, default=Path("noise_settings.json"))
    parser.add_argument("--grid", type=Path, default=None, help="JSON list of {name, overrides} (default: the built-in grid)")
    parser.add_argument("--epochs", type=int, default=9, help="noise-training epochs per setting (default 9, the demo's)")
    parser.add_argument("--val-fraction", type=float, default=0.125, help="the utility's split (default: the demo's)")
    parser.add_argument("--test-fraction", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--slices-per-case", type=int, default=5, help="validation slices per case (most pancreas)")
    parser.add_argument("--occlusion-stride", type=int, default=4)
    parser.add_argument("--bootstrap", type=int, default=1000, help="resamples of the paired intervals")
    parser.add_argument("--spatial-dims", type=int, choices=(2, 3), default=2,
                        help="3: a 3D utility; each setting trains with configs/train_noise_3d.json layered on")
    parser.add_argument("--occlusion-window", type=int, default=None, help="occlusion window (default: evaluate.json's; "
                        "the 3D demo uses 8)")
    parser.add_argument("--device", default="auto")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    grid = json.loads(args.grid.read_text()) if args.grid else DEFAULT_GRID
    split = {"val_fraction": args.val_fraction, "test_fraction": args.test_fraction, "seed": args.seed}
    checkpoints = {}
    for setting in grid:
        run_dir = args.work_dir / setting["name"]
        checkpoint = run_dir / "checkpoints" / "best.pt"
        if not checkpoint.is_file():
            run_bundle("train_noise", {**split, "dataset_dir": args.dataset, "utility_checkpoint": args.utility,
                                       "output_dir": str(run_dir), "epochs": args.epochs, "device": args.device,
                                       **setting["overrides"]}, overlays=["train_noise_3d"] if args.spatial_dims == 3 else [])
        checkpoints[setting["name"]] = str(checkpoint)
    evaluation_dir = args.work_dir / "evaluation"
    result = run_evaluation(args.dataset, args.utility, list(checkpoints.values()), str(evaluation_dir), split="validation",
                            slices_per_case=args.slices_per_case, occlusion_stride=args.occlusion_stride,
                            baselines=("occlusion", "segmentation", "random"), sanity=False, device=args.device,
                            **({"occlusion_window": args.occlusion_window} if args.occlusion_window else {}), **split)
    by_path = {m["checkpoint"]["path"]: name for name, m in result["methods"].items() if "checkpoint" in m}
    protocol = result["protocol"]
    specs = [*protocol["infills"], *protocol["held_out_infills"]]
    case_names = result["cases"]
    rows = []
    for setting in grid:
        name = by_path[checkpoints[setting["name"]]]
        method = result["methods"][name]
        paired = paired_against(result["methods"], name, case_names, args.bootstrap, args.seed,
                                tuple(f"{spec}_{k}" for spec in specs for k in ("visibility_auc", "deletion_auc")))
        judged = {**result, "reference": name, "paired": paired}
        verdicts = {f"{other}_{metric}": {group: infill_verdicts(judged, other, metric, list(protocol[group]))
                                          for group in ("infills", "held_out_infills")}
                    for other in ("occlusion", "segmentation") for metric in ("visibility_auc", "deletion_auc")}
        rows.append({"name": setting["name"], "overrides": setting["overrides"], "infills": method["infills"],
                     "ring_over_chance": method["ring_over_chance"], "verdicts": verdicts,
                     "losses": sum(not v["no_loss"] for g in verdicts.values() for v in g["infills"]),
                     "wins": sum(v["beats"] for g in verdicts.values() for v in g["infills"])})
    baselines = {name: {"infills": m["infills"], "ring_over_chance": m["ring_over_chance"]}
                 for name, m in result["methods"].items() if "checkpoint" not in m}
    record = {"split": "validation", "cases": result["cases"], "slices": result["slices"], "epochs": args.epochs,
              "utility": args.utility, "protocol": protocol, "settings": rows, "baselines": baselines}
    write_json_atomic(record, args.output)
    print(f"validation split: {result['slices']} slices of {len(result['cases'])} cases; {args.epochs} epochs per setting; "
          f"visibility / deletion AUC per infill ({', '.join(protocol['held_out_infills'])} held out)")
    print("| setting | " + " | ".join(specs) + " | ring | losses / wins (judged infills, vs occlusion and segmentation) |")
    print("|---|" + "---|" * (len(specs) + 2))
    for row in rows:
        print(f"| {row['name']} | " + " | ".join(f"{row['infills'][s]['visibility_auc']:.3f} / {row['infills'][s]['deletion_auc']:.3f}"
                                               for s in specs) + f" | {row['ring_over_chance']:.2f}x | {row['losses']} / {row['wins']} |")
    for name, values in baselines.items():
        print(f"| {name} (baseline) | " + " | ".join(f"{values['infills'][s]['visibility_auc']:.3f} / "
                                                    f"{values['infills'][s]['deletion_auc']:.3f}" for s in specs)
              + f" | {values['ring_over_chance']:.2f}x | |")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
