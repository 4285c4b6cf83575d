"""Choose the Probabilistic U-Net's KL weight on the validation split of a multi-rater phantom set.

For each ``beta`` (the weight of KL(posterior || prior) in nats per image; ``null`` is 1 / pixels, the paper's ELBO for
a per-pixel mean reconstruction), trains ``unoise train-utility --kind probabilistic`` with the demo's settings, then
scores the *validation* cases (never the test split) with 16 samples each: D^2_GED, diversity and HM-IoU against the
raters (:mod:`pipeline.evaluation.sampling`), beside the raters' own spread. Writes one JSON with the figures per
beta; the lowest validation GED is the choice.

Example::

    python scripts/probabilistic_settings.py --dataset data/phantom_raters --work-dir runs/prob_settings \\
        --output runs/prob_settings/study.json --betas "[null, 0.001, 0.01, 0.1]"
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from pipeline.bundle import run_bundle
from pipeline.data import build_volume_transforms, load_datalist, split_datalist
from pipeline.evaluation.sampling import evaluate_sampling
from pipeline.fileio import write_json_atomic
from pipeline.networks.checkpoints import load_network_from_checkpoint

SPLIT = {"val_fraction": 0.125, "test_fraction": 0.25, "seed": 0}  # the demo's split (make demo-ambiguous)
GRID = {"preset": "medium", "spatial_size": 96, "batch_size": 8, "device": "cpu"}


def study(dataset: Path, work_dir: Path, betas: list[float | None], epochs: int, samples: int) -> dict[str, Any]:
    validation = split_datalist(load_datalist(dataset), SPLIT["val_fraction"], SPLIT["test_fraction"], SPLIT["seed"])["validation"]
    transform = build_volume_transforms("pancreas", GRID["spatial_size"], rater_mode="all")
    rows = []
    for beta in betas:
        name = "beta_pixels" if beta is None else f"beta_{beta:g}"
        run = work_dir / name
        if not (run / "checkpoints" / "last.pt").is_file():
            run_bundle("train_utility", {**SPLIT, **GRID, "dataset_dir": str(dataset), "output_dir": str(run), "epochs": epochs,
                                         "early_stop_patience": epochs, "beta": beta}, overlays=["train_probabilistic"])
        network, meta = load_network_from_checkpoint(run / "checkpoints" / "last.pt", kind="utility")
        block = evaluate_sampling(network.eval(), validation, transform, samples, bootstrap=1000, seed=0)
        metrics = json.loads((run / "metrics.json").read_text())["epochs"][-1]
        rows.append({"name": name, "beta": beta, "val_dice_3d_mean_prediction": metrics.get("val_dice_3d"),
                     **{key: block[key] for key in ("ged", "diversity", "hm_iou")}})
        logging.info("%s: GED %.3f, diversity %.3f (raters %.3f), HM-IoU %.3f", name, block["ged"]["probabilistic"]["mean"],
                     block["diversity"]["probabilistic"]["mean"], block["diversity"]["raters"]["mean"],
                     block["hm_iou"]["probabilistic"]["mean"])
    best = min(rows, key=lambda r: r["ged"]["probabilistic"]["mean"])
    return {"dataset": str(dataset), "split": "validation", "cases": len(validation), "samples": samples, "epochs": epochs,
            "rows": rows, "chosen": {"name": best["name"], "beta": best["beta"], "by": "lowest validation D^2_GED"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, required=True, help="a multi-rater set (unoise phantom --raters 4)")
    parser.add_argument("--work-dir", "--work_dir", type=Path, required=True, help="one training run per beta here")
    parser.add_argument("--output", type=Path, required=True, help="the study's JSON")
    parser.add_argument("--betas", default="[null, 0.001, 0.01, 0.1]", help="JSON list of KL weights (null: 1 / pixels)")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--samples", type=int, default=16)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    result = study(args.dataset, args.work_dir, json.loads(args.betas), args.epochs, args.samples)
    write_json_atomic(result, args.output)
    print(json.dumps({"chosen": result["chosen"], "rows": [{"name": r["name"], "ged": r["ged"]["probabilistic"]["mean"],
                                                            "diversity": r["diversity"]["probabilistic"]["mean"]}
                                                           for r in result["rows"]]}, indent=1))


if __name__ == "__main__":
    main()
