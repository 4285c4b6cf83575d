"""Model-randomisation sanity check (Adebayo et al. 2018): do the maps change when the model is destroyed?

The utility's weights are re-initialised in a cascade (its decoder first, then every weight); every
method explains the randomised utility again, and the rank correlation with its maps for the trained
utility is measured. A map that still looks the same explains the image, not the model.

- U-Noise is not re-run but re-*trained* against each randomised utility, with the training config of
  its own run (``train_noise.json``, the settings recorded in its checkpoint) on a scaled-down schedule
  (``sanity_epochs``, default a third of its epochs), on the training split only; the last checkpoint is
  used, so the evaluated slices play no part in it.
- Spearman's rho is computed per slice (per volume in 3D) over body pixels (air would agree for free) and
  averaged; the check passes at |rho| <= 0.3. In 3D the retraining layers ``train_noise_3d.json`` on, and
  ``wrap`` runs the randomised utility and the retrained noise models as the evaluated ones ran (over whole
  volumes by sliding window). For methods with a signed attribution (saliency, SmoothGrad) the rank
  correlation of the signed maps is reported too; their maps are absolute values already (Adebayo et al.
  report both variants).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.networks.checkpoints import load_network_from_checkpoint, save_atomic
from pipeline.evaluation.slices import top_slices_per_case
from pipeline.evaluation.stats import compute_spearman
from pipeline.explain import UNoiseMap, build_explainers
from pipeline.networks import NETWORK_PRESETS

logger = logging.getLogger(__name__)

PASS_BELOW = 0.3
DECODER_PREFIXES = ("ups", "final_conv")  # LevelUNet's; other networks': pipeline.explain.layers.find_decoder_prefixes
# checkpoint meta keys that are train_noise.json settings, copied into the retraining
RETRAIN_KEYS = ("perturbation", "baseline", "infill_draw", "objective", "rank_temperature", "blur_sigma", "target", "area",
                "min_scale", "max_scale", "noise_weight", "agreement_target", "multiplier_rate",
                "deletion_weight", "tv_weight", "batch_size", "learning_rate", "train_slices", "other_fraction",
                "window", "spatial_size", "pancreas_labels")


def randomise_layers(network: torch.nn.Module, prefixes: Sequence[str] | None = None, seed: int = 0) -> torch.nn.Module:
    """Re-initialise (in place) the modules whose names start with one of ``prefixes`` (all when None)."""
    torch.manual_seed(seed)
    for name, module in network.named_modules():
        chosen = prefixes is None or any(name == p or name.startswith(p + ".") for p in prefixes)  # ups.1 is not ups.10
        if chosen and hasattr(module, "reset_parameters"):
            module.reset_parameters()
        if chosen and hasattr(module, "reset_running_stats"):
            module.reset_running_stats()
    return network


def retrain_overrides(meta: dict[str, Any], epochs: int | None) -> dict[str, Any]:
    """``train_noise.json`` overrides that repeat a noise run's settings on a schedule of ``epochs`` (default a third)."""
    own_chain = ("window", "spatial_size") if meta.get("utility_bundle") else ()  # a bundle's own preprocessing sets them
    overrides = {key: meta[key] for key in RETRAIN_KEYS if meta.get(key) is not None and key not in own_chain}
    if meta.get("network_config"):
        overrides["noise_network_config"] = meta["network_config"]  # the very network, whatever it is
    if meta.get("preset") in NETWORK_PRESETS:
        overrides["noise_preset"] = meta["preset"]
    original = int(meta.get("epochs") or 3)
    overrides["epochs"] = int(epochs) if epochs else max(1, round(original / 3))
    return overrides


def retrain_noise(meta: dict[str, Any], utility_path: Path, output_dir: Path, epochs: int | None, dataset_dir: str,
                  datalist_key: str, val_fraction: float, test_fraction: float, seed: int, device: torch.device,
                  bundle_root: str, extra_overrides: dict[str, Any] | None = None) -> torch.nn.Module:
    """Train a fresh noise model against the utility in ``utility_path`` with the run's own config; returns last.pt's network.

    ``extra_overrides`` are the evaluation's own settings (``label_values``, ``strict``, ``allow_outside_paths``,
    and a bundle utility's ``utility_bundle`` / ``target_channel``), so the retraining accepts exactly the data
    the evaluation accepted and rebuilds the same utility network.
    """
    from pipeline.bundle import bundle_logging_file, bundle_workflow

    root = Path(bundle_root)
    overlays = ["train_noise_3d"] if int(meta.get("spatial_dims", 2)) == 3 else []
    overrides = retrain_overrides(meta, epochs)
    overrides.update(dataset_dir=str(dataset_dir), datalist_key=datalist_key, val_fraction=val_fraction,
                     test_fraction=test_fraction, seed=seed, device=str(device), utility_checkpoint=str(utility_path),
                     output_dir=str(output_dir), init_from=None, **(extra_overrides or {}))
    logger.info("sanity check: retraining the noise model for %d epochs against %s", overrides["epochs"], utility_path)
    quiet = bundle_logging_file(root) is False  # unoise's console: the retraining's epoch lines are not the evaluation's
    chatty = [logging.getLogger(name) for name in ("pipeline.handlers.training_log", "pipeline.data.slices")]
    levels = [item.level for item in chatty]
    try:
        for item in chatty if quiet else ():
            item.setLevel(logging.WARNING)
        # the training workflow of `unoise train-noise` (train_noise.json), in this process, into its own folder
        workflow = bundle_workflow("train_noise", overrides, root, overlays)
        workflow.run()
        workflow.finalize()
    finally:
        for item, level in zip(chatty, levels):
            item.setLevel(level)
    network, _ = load_network_from_checkpoint(output_dir / "checkpoints" / "last.pt", device)
    return network.eval()


def run_sanity_check(utility: torch.nn.Module, utility_meta: dict[str, Any], noise_metas: dict[str, tuple[str, dict]],
                     maps: dict[str, torch.Tensor], data: dict[str, Any], explainers: dict[str, Any],
                     out_dir: Path, sanity_epochs: int | None, slices_per_case: int | None, dataset_dir: str,
                     datalist_key: str, seed: int, device: torch.device, bundle_root: str | None, layer: str,
                     occlusion_window: int, occlusion_stride: int, ring_mm: float, blur_sigma: float,
                     smoothgrad_samples: int, val_fraction: float = 0.1, test_fraction: float = 0.1,
                     decoder_prefixes: Sequence[str] = DECODER_PREFIXES, extra_overrides: dict[str, Any] | None = None,
                     wrap: Callable[[torch.nn.Module], torch.nn.Module] | None = None) -> dict[str, Any]:
    """The cascade for every method; returns ``sanity``, ``sanity_detail`` and ``sanity_protocol`` for evaluation.json.

    ``utility`` is the bare network (its layer names are the cascade's); ``wrap`` (None: none) turns a network into
    what the explainers ran on (the whole-volume protocol's sliding window).
    """
    wrap = wrap or (lambda network: network)
    if bundle_root is None:
        raise ValueError("the sanity check retrains U-Noise with the bundle's train_noise.json: pass bundle_root.")
    rows = top_slices_per_case([float(v) for v in data["label"].flatten(1).sum(1)], data["cases"], slices_per_case)
    image, label, body = data["image"][rows], data["label"][rows], data["body"][rows].cpu()
    spacing = data["spacing"][rows]
    # occlusion once, with the first judged fill (the occlusion_<infill> maps are the same method with other fills)
    baselines = [name for name in explainers if name not in noise_metas and not name.startswith("occlusion_")]
    fill = getattr(explainers.get("occlusion"), "fill", "blur")
    detail: dict[str, dict[str, Any]] = {name: {} for name in explainers if not name.startswith("occlusion_")}
    for stage, prefixes in (("decoder", tuple(decoder_prefixes)), ("all", None)):
        random_utility = randomise_layers(copy.deepcopy(utility), prefixes, seed).eval()
        after = build_explainers(wrap(random_utility), {}, baselines, layer, occlusion_window, occlusion_stride, ring_mm,
                                 seed, blur_sigma, smoothgrad_samples, occlusion_fills=[fill])
        new_maps = {name: explainer(image, label, spacing, **({"body": data["body"][rows]} if getattr(explainer, "uses_body", False)
                                                               else {})).detach().float().cpu()
                    for name, explainer in after.items()}
        utility_path = out_dir / stage / "utility_randomised.pt"
        save_atomic({"model": random_utility.state_dict(), "meta": {**utility_meta, "randomised": stage}}, utility_path)
        for name, (_, meta) in noise_metas.items():
            network = retrain_noise(meta, utility_path, out_dir / stage / name, sanity_epochs, dataset_dir, datalist_key,
                                    val_fraction, test_fraction, seed, device, bundle_root, extra_overrides)
            new_maps[name] = UNoiseMap(wrap(network))(image).detach().float().cpu()
        for name, new in new_maps.items():
            rho = compute_spearman(maps[name][rows], new, body)
            entry = {"rho": float(np.mean(rho)), "abs_rho": float(abs(np.mean(rho))), "slices": len(rows)}
            if hasattr(explainers[name], "attribution"):
                signed = compute_spearman(explainers[name].attribution(image).cpu(), after[name].attribution(image).cpu(), body)
                entry["rho_signed"] = float(np.mean(signed))
            detail[name][stage] = entry
        logger.info("sanity check (%s randomised): %s", stage, {k: round(v[stage]["rho"], 3) for k, v in detail.items()})
    for entry in detail.values():
        entry["passed"] = entry["all"]["abs_rho"] <= PASS_BELOW
    return {
        "sanity": {name: entry["all"]["abs_rho"] for name, entry in detail.items()},
        "sanity_detail": detail,
        "sanity_protocol": {
            "cascade": {"decoder": list(decoder_prefixes), "all": "every weight"}, "pass": f"|rho| <= {PASS_BELOW}",
            "rho": "Spearman per slice (volume) over body pixels, mean over slices (volumes)", "slices": len(rows),
            "unoise": "retrained against each randomised utility on the training split (train_noise.json with the "
                      "checkpoint's settings, last epoch), epochs: " + ", ".join(
                          f"{n} {retrain_overrides(m, sanity_epochs)['epochs']}" for n, (_, m) in noise_metas.items()),
        },
    }


__all__ = ["DECODER_PREFIXES", "PASS_BELOW", "randomise_layers", "retrain_noise", "retrain_overrides", "run_sanity_check"]
