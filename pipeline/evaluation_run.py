"""``unoise evaluate``: load the models and the test slices, run every protocol, write evaluation.json and the report.

Called by ``configs/evaluate.json``. Explainers compared: each U-Noise checkpoint given, Grad-CAM and occlusion
on the utility, a random map and the oracle, all on the same slices: the ``slices_per_case`` slices with the most
pancreas of each test case.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pipeline.baselines import GradCAMMap, OcclusionMap, OracleMap, RandomMap, UNoiseMap
from pipeline.checkpoints import load_network_from_checkpoint, save_atomic
from pipeline.data import build_slice_dataset, load_datalist, split_datalist
from pipeline.evaluate import (
    compute_ranked_spearman,
    evaluate_explainers,
    randomise_layers,
    train_noise_briefly,
)
from pipeline.fileio import write_json_atomic
from pipeline.engines import resolve_device
from pipeline.networks import build_unet, get_preset

logger = logging.getLogger(__name__)


def unoise_name(meta: dict[str, Any]) -> str:
    """``unoise_<preset>_<perturbation>[_pretrained]`` from a noise checkpoint's meta."""
    name = f"unoise_{meta.get('preset', 'unknown')}_{meta.get('perturbation', 'additive')}"
    return name + ("_pretrained" if meta.get("init_from") else "")


def select_slices(dataset: Any, slices_per_case: int) -> list[int]:
    """Indices of the ``slices_per_case`` slices with the most pancreas in each case."""
    by_case: dict[str, list[tuple[float, int]]] = {}
    for i in range(len(dataset)):
        item = dataset[i]
        by_case.setdefault(item["case"], []).append((float(item["label"].sum()), i))
    chosen = []
    for case in sorted(by_case):
        chosen += [i for _, i in sorted(by_case[case], reverse=True)[:slices_per_case]]
    return sorted(chosen)


def run_evaluation(
    dataset_dir: str,
    utility_checkpoint: str,
    noise_checkpoints: Sequence[str],
    output_dir: str,
    datalist_key: str = "training",
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    pancreas_labels: Sequence[int] = (1, 2),
    slices_per_case: int = 3,
    hidden_baseline: str = "floor",
    ring_mm: float = 10.0,
    gradcam_layer: str | None = None,
    occlusion_window: int = 15,
    occlusion_stride: int = 2,
    sanity: bool = True,
    sanity_steps: int = 60,
    bootstrap: int = 1000,
    device: str = "cpu",
) -> dict:
    """Evaluate every explainer on the test split and write ``output_dir/evaluation.json``.

    The split is the one training used (same datalist, fractions and seed). Returns the written content.
    """
    torch.manual_seed(seed)
    device = resolve_device(device)
    utility, utility_meta = load_network_from_checkpoint(utility_checkpoint, device)
    utility.eval()
    splits = split_datalist(load_datalist(dataset_dir, datalist_key), val_fraction, test_fraction, seed)
    part = "test" if splits["test"] else "validation"
    slices = build_slice_dataset(splits[part], window=utility_meta.get("window", "pancreas"),
                                 spatial_size=utility_meta.get("spatial_size"), pancreas_labels=pancreas_labels,
                                 policy="pancreas", progress=False)
    chosen = select_slices(slices, slices_per_case)
    items = [slices[i] for i in chosen]
    image = torch.stack([item["image"] for item in items]).to(device)  # (N, C, H, W)
    label = torch.stack([item["label"] for item in items]).to(device)  # (N, 1, H, W)
    cases = [item["case"] for item in items]
    spacing = torch.stack([item["spacing"] for item in items])
    layer = gradcam_layer or f"downs.{get_preset(utility_meta['preset']).downsamplings - 1}"

    explainers: dict[str, Any] = {}
    noise_models: dict[str, tuple[torch.nn.Module, dict]] = {}
    for path in noise_checkpoints:
        noise_net, meta = load_network_from_checkpoint(path, device)
        name = unoise_name(meta)
        if name in noise_models:  # same preset/perturbation from another run: keep both
            name = next(f"{name}_{k}" for k in range(2, 100) if f"{name}_{k}" not in noise_models)
        noise_models[name] = (noise_net, meta)
        explainers[name] = UNoiseMap(noise_net)
    explainers["gradcam"] = GradCAMMap(utility, layer)
    occlusion = OcclusionMap(utility, occlusion_window, occlusion_stride)
    explainers["occlusion"] = occlusion
    explainers["random"] = RandomMap(seed)
    explainers["oracle"] = OracleMap()
    logger.info("evaluating %s on %d slices of %d %s cases", ", ".join(explainers), len(items), len(set(cases)), part)
    result = evaluate_explainers(utility, explainers, image, label, cases, spacing, baseline=hidden_baseline,
                                 ring_mm=ring_mm, seed=seed, bootstrap=bootstrap)
    maps = result.pop("maps")
    result["methods"]["occlusion"]["windows_per_map"] = len(occlusion.positions(*image.shape[-2:]))
    for name, (_, meta) in noise_models.items():
        result["methods"][name]["checkpoint"] = {k: meta.get(k) for k in ("preset", "perturbation", "init_from",
                                                                         "min_scale", "max_scale", "noise_weight")}
    result["settings"] = {"dataset_dir": str(dataset_dir), "split": part, "slices_per_case": slices_per_case,
                          "utility_checkpoint": str(utility_checkpoint), "utility_preset": utility_meta["preset"],
                          "noise_checkpoints": [str(p) for p in noise_checkpoints], "gradcam_layer": layer,
                          "occlusion_window": occlusion_window, "occlusion_stride": occlusion_stride,
                          "hidden_baseline": hidden_baseline, "seed": seed}
    if sanity:
        result["sanity"], result["sanity_cascade"] = run_sanity_check(
            utility, noise_models, maps, image, label, occlusion_window, occlusion_stride, layer, sanity_steps, seed)
    out = Path(output_dir)
    write_json_atomic(result, out / "evaluation.json")
    save_atomic({"image": image.cpu(), "label": label.cpu(), "cases": cases, "maps": maps}, out / "maps.pt")
    return result


def run_sanity_check(utility: torch.nn.Module, noise_models: dict[str, tuple[torch.nn.Module, dict]],
                     maps: dict[str, torch.Tensor], image: torch.Tensor, label: torch.Tensor, window: int, stride: int,
                     layer: str, steps: int, seed: int) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Adebayo et al.: randomise the utility (decoder first, then all weights), explain again, compare ranks.

    U-Noise is retrained for ``steps`` steps against each randomised utility, on the evaluated slices.
    Returns ``({method: spearman with all weights random}, {method: {"decoder": rho, "all": rho}})``.
    """
    cascade: dict[str, dict[str, float]] = {}
    batches = [(image[i : i + 8], label[i : i + 8]) for i in range(0, image.shape[0], 8)]
    for stage, prefixes in (("decoder", ("ups", "final_conv")), ("all", None)):
        random_utility = randomise_layers(copy.deepcopy(utility), prefixes, seed).eval()
        after = {"gradcam": GradCAMMap(random_utility, layer)(image),
                 "occlusion": OcclusionMap(random_utility, window, stride)(image)}
        for name, (noise_net, meta) in noise_models.items():
            fresh = build_unet(meta["preset"], in_channels=int(meta.get("in_channels", 1)))
            trained = train_noise_briefly(fresh, random_utility, batches, steps, float(meta.get("min_scale", 0.0)),
                                          float(meta.get("max_scale", 0.4)), meta.get("perturbation", "additive"),
                                          float(meta.get("noise_weight", 0.01)))
            after[name] = UNoiseMap(trained)(image)
        for name, new_maps in after.items():
            cascade.setdefault(name, {})[stage] = compute_ranked_spearman(maps[name], new_maps.detach().float().cpu())
        logger.info("sanity check (%s randomised): %s", stage, {k: round(v[stage], 3) for k, v in cascade.items()})
    return {name: values["all"] for name, values in cascade.items()}, cascade


def summarise(result: dict) -> str:
    """Headline figures, one line per method."""
    lines = [f"clean dice {result['clean_dice']:.3f} on {result['slices']} slices of {len(result['cases'])} cases"]
    for name, m in result["methods"].items():
        lines.append(f"{name:28s} visibility AUC {m['visibility_auc']:.3f}  dice@50% {m['dice_at_50']:.3f}  "
                     f"deletion AUC {m['deletion_auc']:.3f}  ring {m['ring_share']:.2f} (chance {m['ring_chance']:.2f})  "
                     f"{m['ms_per_map']:.1f} ms/map")
    if "sanity" in result:
        lines.append("sanity (Spearman, all weights random): " + ", ".join(f"{k} {v:.2f}" for k, v in result["sanity"].items()))
    return "\n".join(lines)


__all__ = ["run_evaluation", "run_sanity_check", "select_slices", "summarise", "unoise_name"]
