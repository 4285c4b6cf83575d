"""Do the noise-training defaults transfer to a segmentation model we did not train? A study on phantoms.

Builds a model-zoo-layout bundle the way a user brings one: a MONAI ``UNet`` with residual units and 3 softmax classes
(background, pancreas, the rest of the body), trained with plain torch (not the project's training code) on phantom
slices. Then, for each noise setting (default: the bundle's defaults and the earlier blur-only ``blend`` objective,
each without and with the agreement target of 0.9 that adapts the area weight), trains U-Noise label-free on a folder
of images (``unoise train-noise``: its validation split gives ``val_agreement``), evaluates every noise model on a
separate labelled phantom set under the default protocol beside the null maps (the model's own segmentation, random)
and writes, per setting: the agreement reached, its distance to the target, and visibility per infill with the paired
difference against the segmentation map (interval over cases).

Example::

    python scripts/foreign_bundle.py --work-dir runs/foreign --output runs/foreign/study.json
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import torch

from pipeline.bundle import run_bundle
from pipeline.data import build_slice_dataset, load_datalist
from pipeline.evaluation.compare import paired_against
from pipeline.evaluation.run import run_evaluation
from pipeline.fileio import write_json_atomic
from pipeline.phantom import write_phantom_dataset

NETWORK_DEF = {"_target_": "UNet", "spatial_dims": 2, "in_channels": 1, "out_channels": 3, "channels": [16, 32, 64, 128],
               "strides": [2, 2, 2], "num_res_units": 2}
BLEND = {"objective": "blend", "baseline": "blur", "noise_weight": 0.06, "deletion_weight": 0.0}  # the earlier default
SETTINGS: list[dict[str, Any]] = [
    {"name": "defaults", "overrides": {}},
    {"name": "agreement_target_0.9", "overrides": {"agreement_target": 0.9}},
    {"name": "blend_blur", "overrides": BLEND},
    {"name": "blend_blur_target_0.9", "overrides": {**BLEND, "agreement_target": 0.9}},
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", type=Path, required=True, help="phantoms, the bundle, the runs and the evaluation")
    parser.add_argument("--output", type=Path, required=True, help="the study's JSON")
    parser.add_argument("--settings", type=Path, default=None, help="JSON list of {name, overrides} (default: the bundle's "
                        "defaults and the earlier blur-only blend, each without and with agreement_target 0.9)")
    parser.add_argument("--cases", type=int, default=16, help="phantoms the bundle trains on, and U-Noise on their images")
    parser.add_argument("--eval-cases", type=int, default=10, help="the separate labelled set the maps are judged on")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--slices", type=int, default=24)
    parser.add_argument("--bundle-epochs", type=int, default=15, help="plain-torch epochs of the bundle's network")
    parser.add_argument("--epochs", type=int, default=6, help="noise-training epochs per setting")
    parser.add_argument("--slices-per-case", type=int, default=3)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--device", default="auto")
    return parser.parse_args()


def write_bundle(root: Path, data: Path, epochs: int, size: int) -> Path:
    """configs/metadata.json, configs/inference.json (hard-coded cuda, as bundles are written) and models/model.pt."""
    from monai.networks.nets import UNet

    (root / "configs").mkdir(parents=True, exist_ok=True)
    (root / "models").mkdir(exist_ok=True)
    (root / "configs" / "metadata.json").write_text(json.dumps({
        "name": "foreign_pancreas", "version": "0.1.0",
        "network_data_format": {"inputs": {"image": {"type": "image", "format": "hounsfield", "num_channels": 1,
                                                     "spatial_shape": [size, size]}},
                                "outputs": {"pred": {"type": "image", "num_channels": 3,
                                                     "channel_def": {"0": "background", "1": "pancreas", "2": "body"}}}}}))
    (root / "configs" / "inference.json").write_text(json.dumps({
        "imports": ["$import torch"], "bundle_root": ".", "device": "$torch.device('cuda:0')", "network_def": NETWORK_DEF,
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"}, {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -100, "a_max": 240, "b_min": 0.0, "b_max": 1.0,
             "clip": True}]}}))
    torch.manual_seed(0)
    network = UNet(**{k: v for k, v in NETWORK_DEF.items() if k != "_target_"})
    slices = build_slice_dataset(load_datalist(data), window=[-100, 240], spatial_size=size, policy="mixed",
                                 other_fraction=0.5, progress=False)
    loader = torch.utils.data.DataLoader(slices, batch_size=16, shuffle=True)
    optimizer = torch.optim.Adam(network.parameters(), lr=0.003)
    for epoch in range(epochs):
        total = 0.0
        for batch in loader:
            target = (batch["body"] > 0.5).long()[:, 0] * 2
            target[batch["label"][:, 0] > 0.5] = 1
            loss = torch.nn.functional.cross_entropy(network(batch["image"]), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss)
        logging.info("bundle network epoch %d/%d: loss %.4f", epoch + 1, epochs, total / max(1, len(loader)))
    torch.save(network.state_dict(), root / "models" / "model.pt")
    return root


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    settings = json.loads(args.settings.read_text()) if args.settings else SETTINGS
    work = args.work_dir
    train_data, eval_data, images = work / "phantom_train", work / "phantom_eval", work / "images_only"
    if not (train_data / "dataset.json").is_file():
        write_phantom_dataset(train_data, cases=args.cases, size=args.size, slices=args.slices, seed=21)
    if not (eval_data / "dataset.json").is_file():
        write_phantom_dataset(eval_data, cases=args.eval_cases, size=args.size, slices=args.slices, seed=22)
    images.mkdir(parents=True, exist_ok=True)
    for path in sorted((train_data / "imagesTr").glob("*.nii.gz")):  # label-free: a folder of CT volumes
        if not (images / path.name).is_file():
            (images / path.name).write_bytes(path.read_bytes())
    bundle = work / "bundle"
    if not (bundle / "models" / "model.pt").is_file():
        write_bundle(bundle, train_data, args.bundle_epochs, args.size)
    checkpoints, reached = {}, {}
    for setting in settings:
        run_dir = work / setting["name"]
        checkpoint = run_dir / "checkpoints" / "best.pt"
        if not checkpoint.is_file():
            run_bundle("train_noise", {"dataset_dir": str(images), "utility_bundle": str(bundle), "utility_checkpoint": None,
                                       "output_dir": str(run_dir), "epochs": args.epochs, "device": args.device,
                                       **setting["overrides"]})
        checkpoints[setting["name"]] = str(checkpoint)
        record = json.loads((run_dir / "metrics.json").read_text())
        epochs = record["epochs"]
        best = min(epochs, key=lambda e: e.get("val_objective", float("inf")))  # lower is better
        reached[setting["name"]] = {key: {"best_epoch": best.get(key), "last_epoch": epochs[-1].get(key)}
                                    for key in ("val_agreement", "val_mean_tolerance", "val_ring_ratio", "train_area_weight")}
    result = run_evaluation(str(eval_data), None, list(checkpoints.values()), str(work / "evaluation"), split="all",
                            utility_bundle=str(bundle), slices_per_case=args.slices_per_case, baselines=("segmentation", "random"),
                            sanity=False, device=args.device)
    by_path = {m["checkpoint"]["path"]: name for name, m in result["methods"].items() if "checkpoint" in m}
    specs = [*result["protocol"]["infills"], *result["protocol"]["held_out_infills"]]
    rows = []
    for setting in settings:
        name = by_path[checkpoints[setting["name"]]]
        paired = paired_against(result["methods"], name, result["cases"], args.bootstrap, 0,
                                tuple(f"{spec}_visibility_auc" for spec in specs))
        target = setting["overrides"].get("agreement_target", 0.9)
        agreement = reached[setting["name"]]["val_agreement"]["best_epoch"]
        rows.append({"name": setting["name"], "overrides": setting["overrides"], "training": reached[setting["name"]],
                     "agreement_target": target, "distance_to_target": None if agreement is None else abs(agreement - target),
                     "visibility": {spec: result["methods"][name]["infills"][spec]["visibility_auc"] for spec in specs},
                     "minus_segmentation": {spec: paired["segmentation"][f"{spec}_visibility_auc"] for spec in specs},
                     "minus_random": {spec: paired["random"][f"{spec}_visibility_auc"] for spec in specs}})
    nulls = {name: {spec: m["infills"][spec]["visibility_auc"] for spec in specs}
             for name, m in result["methods"].items() if "checkpoint" not in m}
    write_json_atomic({"cases": result["cases"], "slices": result["slices"], "epochs": args.epochs, "settings": rows,
                       "nulls": nulls, "protocol": result["protocol"]}, args.output)
    print(f"{len(result['cases'])} labelled cases ({result['slices']} slices) of a separate phantom set; visibility AUC, "
          "and the paired difference against the model's own segmentation map [95% interval]")
    for row in rows:
        agreement = row["training"]["val_agreement"]["best_epoch"]
        print(f"{row['name']}: val_agreement {agreement:.3f} (target {row['agreement_target']}), area weight "
              f"{row['training']['train_area_weight']['last_epoch']}")
        for spec in specs:
            diff = row["minus_segmentation"][spec]
            print(f"  {spec}: {row['visibility'][spec]:.3f}  vs segmentation {diff['mean']:+.3f} "
                  f"[{diff['ci95'][0]:+.3f}, {diff['ci95'][1]:+.3f}] n={diff['n']}")
    for name, values in nulls.items():
        print(f"{name}: " + ", ".join(f"{spec} {v:.3f}" for spec, v in values.items()))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
