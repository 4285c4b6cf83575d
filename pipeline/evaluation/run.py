"""``unoise evaluate``: load the models and the evaluation slices, run every protocol, write evaluation.json.

Called by ``configs/evaluate.json``. Every explainer gets the same slices: every pancreas slice of every
case of the evaluated split (``test`` by default, ``validation`` to choose settings), or the
``slices_per_case`` slices with the most pancreas per case. Explainers: each U-Noise checkpoint given,
the baselines named in ``baselines`` (occlusion, Grad-CAM, saliency, SmoothGrad) and the null maps
(segmentation, prediction_logits, random, oracle).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from pipeline.networks.checkpoints import check_pair, load_network_from_checkpoint, save_atomic
from pipeline.data import check_roi_size
from pipeline.device import resolve_device
from pipeline.evaluation.compare import evaluate_explainers
from pipeline.evaluation.criteria import compute_criteria, matched_method
from pipeline.evaluation.sampling import attribution_block, load_deterministic, load_uncertainty_noise, sampling_block
from pipeline.evaluation.protocols import check_fractions
from pipeline.evaluation.settings import (BASELINES, NULL_MAPS, check_settings, load_split, resolve_split, sanity_source,
                                         unoise_name, with_input_settings)
from pipeline.evaluation.slices import load_evaluation_slices
from pipeline.evaluation.volumes import (WholeVolume, volume_settings, evaluation_transform,
                                         load_evaluation_volumes, load_whole_volumes, middle_slices, orthogonal_planes,
                                         whole_volume_baselines)
from pipeline.explain import OcclusionMap, build_explainers
from pipeline.explain.layers import check_prefixes, find_decoder_prefixes, find_feature_layer
from pipeline.fileio import write_json_atomic
from pipeline.noise.infill import parse_infill
from pipeline.networks.probabilistic import as_sampler
from pipeline.networks.zoo import check_explainable, load_utility

logger = logging.getLogger(__name__)

def count_blank_maps(maps: dict[str, torch.Tensor]) -> dict[str, int]:
    """Per method, how many of its maps (B, 1, ...) hold no importance anywhere (every value <= 0)."""
    return {name: int((m.flatten(1).amax(1) <= 0).sum()) for name, m in maps.items()}


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
    split: str | None = "test",
    slices_per_case: int | None = None,
    infills: Sequence[str] = ("blur", "mean", "noise", "floor"),
    held_out_infills: Sequence[str] = ("road", "blur:8"),
    occlusion_per_infill: bool = True,
    blur_sigma: float = 4.0,
    ring_mm: float = 10.0,
    baselines: Sequence[str] = (*BASELINES, *NULL_MAPS),
    gradcam_layer: str | None = None,
    occlusion_window: int = 15,
    occlusion_stride: int = 2,
    smoothgrad_samples: int = 25,
    sanity: bool = True,
    sanity_epochs: int | None = None,
    sanity_slices_per_case: int | None = 2,
    sanity_occlusion_stride: int | None = None,
    sanity_decoder: Sequence[str] | None = None,
    shortcut: bool = False,
    cue_ring_mm: float = 5.0,
    pointing_share: float = 0.01,
    bootstrap: int = 1000,
    device: str = "cpu",
    bundle_root: str | None = None,
    allow_outside_paths: bool = False,
    label_values: Sequence[int] | str | None = None,
    strict: bool = False,
    utility_bundle: str | None = None,
    target_channel: int | str | None = None,
    volume_transform: Callable | None = None,
    utility_loaded: tuple[torch.nn.Module, dict[str, Any]] | None = None,
    volume_cost: bool = True,
    sw_overlap: float = 0.25,
    sw_batch_size: int = 4,
    cost_occlusion_strides: Sequence[int] | None = None,
    failed_cases: Sequence[dict[str, str]] = (),
    volume_protocol: str = "whole",
    fractions: Sequence[float] | None = None,
    sanity_dataset: str | None = None,
    ambiguity_samples: int = 16,
    deterministic_utility: str | None = None,
    uncertainty_noise: str | None = None,
    uncertainty_samples: int = 16,
) -> dict:
    """Evaluate every explainer on one split and write ``output_dir/evaluation.json`` and ``maps.pt``.

    ``gradcam_layer`` and ``sanity_decoder`` (the module names the sanity check's decoder stage
    re-initialises) default to what the utility's module tree says (:mod:`pipeline.explain.layers`).
    The split is the one training used (same datalist, fractions and seed); ``split`` None evaluates its test part
    for a utility trained here and every case (``all``) for a bundle or TorchScript utility (:func:`resolve_split`);
    the sanity check retrains where :func:`sanity_source` says (``sanity_dataset``). ``sanity_occlusion_stride``
    (default ``occlusion_stride``) lets the sanity check's occlusion run coarser. ``volume_transform`` is
    the bundle's ``preprocessing`` (evaluate.json passes it; None builds the same chain in Python), and
    ``utility_loaded`` the ``(utility, meta)`` the config loaded for it (None loads it here). With a 3D utility
    and ``volume_cost``, ``volumes`` holds the utility's dice on each whole test volume and each method's cost
    per whole volume (:mod:`pipeline.evaluation.cost`: sliding windows with ``sw_overlap`` / ``sw_batch_size``,
    occlusion costed at ``cost_occlusion_strides``, default the evaluated stride and 2). ``failed_cases`` (what
    :func:`check_inputs` reported with ``on_error`` skip) are left out of the split and listed in ``failed_cases``.
    ``volume_protocol`` (3D only; :mod:`pipeline.evaluation.volumes`): ``whole`` hides voxels over every whole
    volume and runs the networks by sliding window (Grad-CAM, saliency and SmoothGrad are left to ``roi``);
    ``roi`` reads one volume of interest per case. ``fractions``: the curves' visible shares (None: the default 14;
    :func:`pipeline.evaluation.protocols.check_fractions`). A Probabilistic U-Net utility (whose forward is its prior
    mean, so every protocol above judges that one segmentation) is also judged against the raters of a multi-rater set:
    ``probabilistic`` holds GED, diversity and HM-IoU of ``ambiguity_samples`` samples per case, beside the
    ``deterministic_utility`` checkpoint's and the raters' own (:mod:`pipeline.evaluation.sampling`); on the multi-rater
    phantom, ``uncertainty_attribution`` scores the maps on the planted cause of its uncertainty, among them the
    ``uncertainty_noise`` checkpoint's (a noise model trained with ``utility_output`` uncertainty;
    :mod:`pipeline.evaluation.attribution`). Returns the written content.
    """
    limit = check_settings(slices_per_case, infills, held_out_infills, baselines, split, fractions, volume_protocol)
    split = resolve_split(split, utility_bundle, utility_checkpoint)
    fractions = check_fractions(fractions)
    torch.manual_seed(seed)
    device = resolve_device(device)
    utility, utility_meta = utility_loaded or load_utility(utility_checkpoint, device, utility_bundle, target_channel)
    utility = utility.to(device)
    utility_meta = with_input_settings(utility_meta, noise_checkpoints)
    check_explainable(utility_meta, baselines, sanity, utility_bundle or utility_checkpoint)
    volumes = int(utility_meta.get("spatial_dims", 2)) == 3
    if volumes:
        shortcut, infills, held_out_infills = volume_settings(shortcut, infills, held_out_infills,
                                                              str(utility_bundle or utility_checkpoint))
    utility.eval()
    deterministic = load_deterministic(deterministic_utility, utility, utility_meta, utility_checkpoint, device)
    uncertainty_net = load_uncertainty_noise(uncertainty_noise, utility, utility_checkpoint, device)
    splits = load_split(dataset_dir, datalist_key, val_fraction, test_fraction, seed, split, allow_outside_paths)
    left_out = {str(item["case"]) for item in failed_cases}
    splits[split] = [entry for entry in splits[split] if str(entry["case"]) not in left_out]  # same split, less them
    extra_images, extra_masks = (("image_nocue",), ("shortcut",)) if shortcut else ((), ())
    if shortcut:
        from pipeline.evaluation.shortcut import check_shortcut_entries

        check_shortcut_entries(splits[split])
    whole = volumes and volume_protocol == "whole"
    wrap: Callable[[torch.nn.Module], torch.nn.Module] = lambda network: network  # noqa: E731
    if whole:  # every whole volume; the networks run over it by sliding window, as explain runs them
        volume_transform = volume_transform or evaluation_transform(utility_meta, pancreas_labels)
        data = load_whole_volumes(splits[split], pancreas_labels, device, volume_transform)
        roi_size = check_roi_size(utility_meta.get("roi_size"))
        wrap = lambda network: WholeVolume(network, roi_size, sw_batch_size, sw_overlap)  # noqa: E731
        baselines = whole_volume_baselines(baselines)
    elif volumes:  # one volume of interest per case (the utility's patch, centred on the pancreas)
        volume_transform = volume_transform or evaluation_transform(utility_meta, pancreas_labels)
        data = load_evaluation_volumes(splits[split], utility_meta, pancreas_labels, device, volume_transform)
    else:
        data = load_evaluation_slices(splits[split], utility_meta, pancreas_labels, limit, device, extra_images, extra_masks,
                                      volume_transform)
    in_channels = int(utility_meta.get("in_channels", 1))
    needs_layer = "gradcam" in baselines or sanity
    dims = 3 if volumes else 2
    layer = gradcam_layer or (find_feature_layer(utility, in_channels, dims) if needs_layer else None)
    decoder = check_prefixes(utility, sanity_decoder) if sanity_decoder else (
        find_decoder_prefixes(utility, in_channels, layer, dims) if sanity else ())

    noise_models: dict[str, torch.nn.Module] = {}
    noise_metas: dict[str, tuple[str, dict]] = {}
    for path in noise_checkpoints:
        noise_net, meta = load_network_from_checkpoint(path, device, kind="noise", role="--noise")
        check_pair(utility_meta, meta, utility_bundle or utility_checkpoint, path)
        name = unoise_name(meta)
        if name in noise_models:  # same preset/perturbation from another run: keep both
            name = next(f"{name}_{k}" for k in range(2, 100) if f"{name}_{k}" not in noise_models)
        noise_models[name], noise_metas[name] = noise_net, (str(path), meta)
    occlusion_fills = [spec for spec in dict.fromkeys([*infills, *held_out_infills]) if parse_infill(spec)[0] != "road"]
    explainers = build_explainers(wrap(utility), {name: wrap(net) for name, net in noise_models.items()}, baselines, layer,
                                  occlusion_window, occlusion_stride, ring_mm,
                                  seed, blur_sigma, smoothgrad_samples,
                                  occlusion_fills=occlusion_fills if occlusion_per_infill else [infills[0]])
    logger.info("evaluating %s on %d %s of %d %s cases", ", ".join(explainers), len(data["cases"]),
                "whole volumes" if whole else "volumes of interest" if volumes else "slices", len(set(data["cases"])), split)
    result = evaluate_explainers(wrap(utility), explainers, data["image"], data["label"], data["body"], data["cases"],
                                 data["spacing"], fractions, infills, held_out_infills, ring_mm, seed, bootstrap,
                                 blur_sigma)
    maps = result.pop("maps")
    for name, blank in count_blank_maps(maps).items():  # a map without any importance ranks at random (ties): say so
        result["methods"][name]["blank_maps"] = blank
        if blank:
            logger.warning("%s: %d of %d maps hold no importance anywhere (all zero)%s", name, blank, len(maps[name]),
                           "; Grad-CAM at another layer may not (--gradcam-layer, e.g. a shallower encoder stage)"
                           if name == "gradcam" else "")
    for name, explainer in explainers.items():
        if isinstance(explainer, OcclusionMap):
            result["methods"][name]["windows_per_map"] = len(explainer.positions(*data["image"].shape[2:]))
            result["methods"][name]["occlusion_fill"] = explainer.fill
            result["methods"][name]["windows_at_paper_stride"] = len(OcclusionMap(utility, occlusion_window, 2).positions(
                *data["image"].shape[2:]))  # the U-Noise paper's stride: for the cost verdict
            if whole:  # each occluded copy is one sliding-window pass of the utility over the volume
                result["methods"][name]["utility_pass"] = "one sliding-window pass over the whole volume"
    for name, (path, meta) in noise_metas.items():
        result["methods"][name]["checkpoint"] = {"path": path, **{k: meta.get(k) for k in (
            "preset", "perturbation", "objective", "baseline", "infill_draw", "rank_temperature", "target", "area", "min_scale",
            "max_scale", "noise_weight", "deletion_weight", "tv_weight", "init_from", "epochs")}}
    result["protocol"] = {
        "region": "body: HU > -500, largest connected component per slice, holes filled; air is never hidden or counted",
        "unit": ("3D whole volumes: every test volume, voxels ranked, hidden and counted over the whole body volume; "
                 f"the utility and the noise models by sliding window ({utility_meta.get('roi_size')} windows, overlap "
                 f"{sw_overlap}); the ring in mm along every axis") if whole else
                ("3D: per case one volume of interest of the utility's roi_size centred on the pancreas; voxels ranked, "
                 "hidden and counted; the ring in mm along every axis") if volumes else "2D: axial slices",
        "volume_protocol": (volume_protocol if volumes else None),
        "infills": list(infills), "held_out_infills": list(held_out_infills), "blur_sigma_px": blur_sigma,
        "occlusion_fill": ("one occlusion map per infill, its windows filled as that infill hides pixels (occlusion_<infill>); "
                           "under road, the blur-filled one (a ROAD imputation per window would cost a solve per window)")
        if occlusion_per_infill else f"one occlusion map, its windows filled with {infills[0]}",
        "target": "the utility's clean prediction (headline); the label too (methods[name]['label'] metrics)",
        "fractions": result["fractions"], "split": split, "slices": result["slices"], "cases": len(result["cases"]),
        "slices_per_case": "all pancreas slices" if limit is None else limit,
        "intervals": f"percentile bootstrap over cases, {bootstrap} resamples, 95%",
        "paired": f"{result['reference']} minus each method, per case, bootstrap over cases",
        "ring_mm": ring_mm,
    }
    result["settings"] = {"dataset_dir": str(dataset_dir), "utility_checkpoint": str(utility_checkpoint),
                          "utility_bundle": utility_bundle, "target_channel": utility_meta.get("target_channel"),
                          "utility_preset": utility_meta["preset"], "window": utility_meta.get("window"),
                          "spatial_size": utility_meta.get("spatial_size"), "noise_checkpoints": [str(p) for p in noise_checkpoints],
                          "gradcam_layer": layer, "sanity_decoder": list(decoder), "occlusion_window": occlusion_window,
                          "occlusion_stride": occlusion_stride,
                          "occlusion_per_infill": occlusion_per_infill, "smoothgrad_samples": smoothgrad_samples, "seed": seed,
                          "val_fraction": val_fraction, "test_fraction": test_fraction}
    if volumes and volume_cost:
        from pipeline.evaluation.cost import volume_costs

        strides = list(dict.fromkeys(cost_occlusion_strides or (occlusion_stride, 2)))
        logger.info("whole test volumes: the utility's dice and each method's cost per volume")
        result["volumes"] = volume_costs(
            utility, noise_models, splits[split], volume_transform, check_roi_size(utility_meta.get("roi_size")), device,
            sw_overlap, sw_batch_size, layer, in_channels, occlusion_window, strides, gradcam="gradcam" in baselines)
    out = Path(output_dir)
    if shortcut:
        from pipeline.evaluation.shortcut import evaluate_shortcut

        result["shortcut"] = evaluate_shortcut(utility, maps, data, cue_ring_mm, pointing_share, bootstrap, seed)
    if sanity:
        from pipeline.evaluation.sanity import run_sanity_check

        retrain = sanity_source(sanity_dataset, split, dataset_dir, datalist_key, val_fraction, test_fraction, seed,
                                next(iter(noise_metas.values())))
        if (out / "sanity").exists():  # an interrupted evaluation's retrainings: this run redoes them
            shutil.rmtree(out / "sanity")

        result.update(run_sanity_check(
            utility, utility_meta, noise_metas, maps, data, explainers, out / "sanity", sanity_epochs,
            sanity_slices_per_case, retrain["dataset_dir"], retrain["datalist_key"], retrain["seed"], device, bundle_root, layer,
            occlusion_window, sanity_occlusion_stride or occlusion_stride, ring_mm, blur_sigma, smoothgrad_samples,
            retrain["val_fraction"], retrain["test_fraction"],
            decoder_prefixes=decoder, wrap=wrap,
            extra_overrides={"label_values": label_values, "strict": strict, "allow_outside_paths": allow_outside_paths,
                             **({"utility_bundle": utility_bundle, "target_channel": utility_meta.get("target_channel")}
                                if utility_bundle else {})}))
    shown, shown_maps = middle_slices(data, maps) if volumes else (data, maps)  # the report draws axial slices
    save_atomic({"image": shown["image"].cpu(), "label": shown["label"].cpu(), "body": shown["body"].cpu(),
                 "cases": data["cases"], "maps": shown_maps,
                 **({"shortcut": data["shortcut"].cpu()} if shortcut else {}),
                 **({"orthogonal": orthogonal_planes(data, maps)} if volumes else {})}, out / "maps.pt")
    if as_sampler(utility) is not None:
        result["probabilistic"] = sampling_block(as_sampler(utility), utility_meta, splits[split], pancreas_labels, ambiguity_samples,
                                                 deterministic, device, bootstrap, seed)
        if all(entry.get("sign") and entry.get("image_nosign") for entry in splits[split]):
            result["uncertainty_attribution"] = attribution_block(
                as_sampler(utility), utility_meta, splits[split], pancreas_labels, noise_models, uncertainty_net,
                uncertainty_samples, device, bootstrap, seed)
    result["failed_cases"] = [dict(item) for item in failed_cases]
    write_json_atomic(result, out / "evaluation.json")  # after maps.pt; the report (written next) is the run's marker
    return result


def summarise(result: dict) -> str:
    """Headline figures, one line per method and infill, and the paired differences of the reference per infill."""
    protocol = result["protocol"]
    judged, held_out = protocol.get("infills", []), protocol.get("held_out_infills", [])
    unit = {"whole": "whole volumes", "roi": "volumes of interest"}.get(protocol.get("volume_protocol") or "", "slices")
    lines = [f"clean dice {result['clean_dice']:.3f} on {result['slices']} {unit} of {len(result['cases'])} cases "
             f"({protocol['split']} split; body-restricted, against the clean prediction); visibility / deletion AUC "
             f"under each judged infill ({', '.join(judged)})" + (f" and held out ({', '.join(held_out)})" if held_out else "")]
    specs = [*judged, *held_out]
    for name, m in result["methods"].items():
        lines.append(f"{name:28s} " + "  ".join(
            f"{spec} {m['infills'][spec]['visibility_auc']:.3f}/{m['infills'][spec]['deletion_auc']:.3f}"
                                               for spec in specs) + f"  ring {m['ring_over_chance']:.2f}x  {m['ms_per_map']:.1f} ms/map")
    reference, paired = result.get("reference"), result.get("paired", {})
    for other in ("occlusion", "segmentation", "random"):
        names = {spec: matched_method(result["methods"], other, spec, judged[0]) for spec in specs}
        if not all(name in paired for name in names.values()):
            continue
        lines.append(f"{reference} - {other} (n={paired[other]['visibility_auc']['n']} cases): " + "  ".join(
            f"{spec} " + "/".join(f"{paired[names[spec]][f'{spec}_{k}']['mean']:+.3f}[{paired[names[spec]][f'{spec}_{k}']['ci95'][0]:+.3f},"
                                  f"{paired[names[spec]][f'{spec}_{k}']['ci95'][1]:+.3f}]" for k in ("visibility_auc", "deletion_auc"))
            for spec in specs))
    for criterion in compute_criteria(result):
        lines.append(("PASS " if criterion["passed"] else "FAIL ") + criterion["words"])
    volumes = result.get("volumes")
    if volumes:
        lines.append(f"whole test volumes: utility dice {volumes['dice_mean']:.3f} (" + ", ".join(
            f"{c['case']} {c['dice']:.3f}" for c in volumes["cases"]) + ")")
        lines.append("ms per whole volume: " + ", ".join(
            f"{name} {m['ms_per_volume']:,.0f}" + (" (extrapolated)" if m.get("extrapolated") else "")
            for name, m in volumes["methods"].items()))
        ratios = {k: v for k, v in volumes["ratios"].items() if k.endswith(f"_over_{reference}")}
        lines.append(f"per whole volume, {reference} is faster than: " + ", ".join(
            f"{k.removesuffix(f'_over_{reference}')} {v:,.1f}x" for k, v in ratios.items()))
    if "sanity" in result:
        lines.append("sanity |Spearman| (all weights random): " + ", ".join(f"{k} {v:.2f}" for k, v in result["sanity"].items()))
    if "shortcut" in result:
        cut = result["shortcut"]
        lines.append(f"shortcut: dice with cue {cut['dice_with_cue']:.3f}, without {cut['dice_without_cue']:.3f}; " + ", ".join(
            f"{k} cue {v['cue_share_over_chance']:.1f}x / pointing {v['pointing_rate']:.0%}" for k, v in cut["methods"].items()))
    lines += _sampling_lines(result.get("probabilistic")) + _attribution_lines(result.get("uncertainty_attribution"))
    for item in result.get("failed_cases", []):
        lines.append(f"left out (failed its checks): {item['case']}: {item['error']}")
    return "\n".join(lines)


def _sampling_lines(block: dict | None) -> list[str]:
    """The ``probabilistic`` block in three lines: each metric for each model and the raters, then the paired verdict."""
    if not block:
        return []
    if "skipped" in block:
        return [f"probabilistic: skipped ({block['skipped']})"]

    def show(entry: dict) -> str:
        return f"{entry['mean']:.3f} [{entry['ci95'][0]:.3f}, {entry['ci95'][1]:.3f}]"

    lines = [f"probabilistic ({block['samples']} samples per case, n={block['cases']} cases, raters per case "
             f"{block['raters_per_case']}):"]
    for key in ("ged", "diversity", "hm_iou"):
        lines.append(f"  {key:9s} " + "  ".join(f"{name} {show(entry)}" for name, entry in block[key].items()))
    for key, entry in block.get("paired", {}).items():
        if key != "note":
            lines.append(f"  {key} probabilistic - deterministic: {entry['mean']:+.3f} [{entry['ci95'][0]:+.3f}, "
                         f"{entry['ci95'][1]:+.3f}] (n={entry['n']})")
    return lines


def _attribution_lines(block: dict | None) -> list[str]:
    """The ``uncertainty_attribution`` block: the premise (reliance), then each map's share and pointing on the sign."""
    if not block:
        return []
    if "skipped" in block:
        return [f"uncertainty attribution: skipped ({block['skipped']})"]
    reliance = block["reliance"]
    lines = [f"uncertainty attribution ({block['slices']} slices of {block['cases']} cases showing the remote sign): entropy on "
             f"the lesion {reliance['entropy_on_lesion_with_sign']:.3f} bits with the sign, "
             f"{reliance['entropy_on_lesion_without_sign']:.3f} without"]
    lines += [f"  {name:36s} sign {m['share_over_chance']:.2f}x its body share, pointing {m['pointing_rate']:.0%}"
              for name, m in block["methods"].items()]
    return lines


__all__ = ["count_blank_maps", "run_evaluation", "summarise"]
