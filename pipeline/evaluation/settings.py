"""What ``unoise evaluate`` checks before the run folder exists: its settings, its inputs (the split, both
checkpoints, the dataset's cases) and the utility's input settings the noise checkpoints recorded."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any


from pipeline.networks.checkpoints import check_kind, check_pair, load_checkpoint
from pipeline.data import check_channels, check_training_split, load_datalist, split_datalist, validate_datalist
from pipeline.data.validate import DatasetSummary, record_failure, resolve_on_error
from pipeline.errors import ConfigError, DataError
from pipeline.evaluation.protocols import check_fractions
from pipeline.evaluation.volumes import VOLUME_PROTOCOLS
from pipeline.noise.infill import INFILLS, parse_infill
from pipeline.networks.zoo import check_explainable, is_torchscript, load_utility

logger = logging.getLogger(__name__)

BASELINES = ("occlusion", "gradcam", "saliency", "smoothgrad")
NULL_MAPS = ("segmentation", "prediction_logits", "random", "oracle")
SPLITS = ("test", "validation", "training", "all")


def unoise_name(meta: dict[str, Any]) -> str:
    """``unoise_<preset>_<perturbation>[_pretrained]`` from a noise checkpoint's meta."""
    name = f"unoise_{meta.get('preset', 'unknown')}_{meta.get('perturbation', 'additive')}"
    return name + ("_pretrained" if meta.get("init_from") else "")


def with_input_settings(utility_meta: dict[str, Any], noise_checkpoints: Sequence[str]) -> dict[str, Any]:
    """The utility's meta with the CT ``window`` and ``spatial_size`` its inputs had.

    Our checkpoints and bundles record them; a TorchScript utility does not, and then the noise models
    (trained on exactly the utility's input) say it; they must agree with each other.
    """
    meta = dict(utility_meta)
    missing = [key for key in ("window", "spatial_size") if key not in meta]
    noise_metas = {str(path): load_checkpoint(path).get("meta", {}) for path in noise_checkpoints} if missing else {}
    for key in missing:
        values = {path: noise_meta.get(key) for path, noise_meta in noise_metas.items()}
        if len({repr(v) for v in values.values()}) > 1:
            raise ConfigError(f"the noise checkpoints were trained on different {key}s ({values}); evaluate the models of "
                              "one utility input at a time.")
        if values:
            meta[key] = next(iter(values.values()))
    return meta


def check_settings(slices_per_case: Any, infills: Sequence[str], held_out_infills: Sequence[str], baselines: Sequence[str],
                   split: str, fractions: Sequence[float] | None = None, volume_protocol: str = "whole",
                   ambiguity_samples: int = 16, uncertainty_samples: int = 16) -> int | None:
    """Refuse bad evaluation settings before any work; returns the slice limit (None: all slices)."""
    check_fractions(fractions)
    for key, value in (("ambiguity_samples", ambiguity_samples), ("uncertainty_samples", uncertainty_samples)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key} must be a positive integer (latent draws per image, e.g. 16), got {value!r}.")
    if volume_protocol not in VOLUME_PROTOCOLS:
        raise ConfigError(f"volume_protocol must be one of {VOLUME_PROTOCOLS} (3D: every whole volume, or one volume of "
                          f"interest per case), got {volume_protocol!r}.")
    if slices_per_case in (None, "all"):
        limit = None
    elif isinstance(slices_per_case, bool) or not isinstance(slices_per_case, int) or slices_per_case < 1:
        raise ConfigError(f"slices_per_case must be a positive integer or null (every pancreas slice), got {slices_per_case!r}.")
    else:
        limit = slices_per_case
    for key, specs in (("infills", infills), ("held_out_infills", held_out_infills)):
        if isinstance(specs, str) or not isinstance(specs, (list, tuple)):
            raise ConfigError(f"{key} must be a list of infills, e.g. \"['blur', 'mean']\", got {specs!r}.")
        for spec in specs:
            try:
                parse_infill(spec)
            except ConfigError as err:
                raise ConfigError(f"{key}: {err}") from err
    if not infills:
        raise ConfigError(f"infills is empty: give at least one infill to judge the maps with, e.g. \"['blur']\" (of {INFILLS}).")
    unknown = [b for b in baselines if b not in (*BASELINES, *NULL_MAPS)]
    if unknown:
        raise ConfigError(f"unknown baselines {unknown}; choose from {[*BASELINES, *NULL_MAPS]}.")
    if split is not None and split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS} or null (test for a utility trained here, all for a bundle or "
                          f"TorchScript utility), got {split!r} (choose settings on 'validation', report on 'test').")
    return limit


def resolve_split(split: str | None, utility_bundle: str | None, utility_checkpoint: str | None) -> str:
    """The evaluated part: ``split`` as given; None: ``test`` of the split training used for a utility trained here,
    ``all`` (every case of the labelled set) for a model-zoo bundle or a TorchScript file, trained elsewhere."""
    if split is not None:
        return split
    foreign = bool(utility_bundle) or bool(utility_checkpoint and is_torchscript(utility_checkpoint))
    return "all" if foreign else "test"


def sanity_source(sanity_dataset: str | None, split: str, dataset_dir: str, datalist_key: str, val_fraction: float,
                  test_fraction: float, seed: int, noise: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    """Where the sanity check retrains U-Noise: the training part of ``sanity_dataset`` (this run's fractions and
    seed); without it, of the evaluated set's split training used, or, when every case is evaluated (``all``), of the
    set the first noise model (``noise``: its checkpoint path and meta) was trained on, as its checkpoint records it."""
    if sanity_dataset or split != "all":
        return {"dataset_dir": str(sanity_dataset) if sanity_dataset else dataset_dir, "datalist_key": datalist_key,
                "val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed}
    path, meta = noise
    if not meta.get("dataset_dir"):
        raise ConfigError(f"{path}: records no training set for the sanity check's retraining when every case is "
                          "evaluated; pass --sanity-dataset DIR (images the utility can segment) or --sanity false.")
    return {key: meta.get(key, default) for key, default in (("dataset_dir", None), ("datalist_key", "training"),
                                                              ("val_fraction", 0.1), ("test_fraction", 0.1), ("seed", 0))}


def load_split(dataset_dir: str, datalist_key: str, val_fraction: float, test_fraction: float, seed: int, split: str,
               allow_outside_paths: bool = False) -> dict[str, list[dict]]:
    """The split training used (same datalist, fractions and seed); the evaluated part must not be empty.

    Raises:
        ConfigError: the evaluated part is empty.
    """
    datalist = load_datalist(dataset_dir, datalist_key, allow_outside_paths)
    splits = {**split_datalist(datalist, val_fraction, test_fraction, seed), "all": list(datalist)}
    if not splits[split]:
        raise ConfigError(f"{dataset_dir}: the {split} split is empty with val_fraction {val_fraction} and test_fraction "
                          f"{test_fraction}; raise the fraction or evaluate another split.")
    return splits


def check_inputs(
    dataset_dir: str,
    utility_checkpoint: str,
    noise_checkpoints: Sequence[str],
    datalist_key: str = "training",
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    pancreas_labels: Sequence[int] = (1, 2),
    split: str = "test",
    label_values: Sequence[int] | str | None = None,
    strict: bool = False,
    allow_outside_paths: bool = False,
    sanity: bool = False,
    shortcut: bool = False,
    utility_bundle: str | None = None,
    target_channel: int | str | None = None,
    baselines: Sequence[str] = (),
    on_error: str = "auto",
    sanity_dataset: str | None = None,
    utility_output: str = "segmentation",
    uncertainty_noise: str | None = None,
) -> list[dict[str, str]]:
    """Every check of an evaluation, before its run folder is created; returns the evaluated split's failing cases.

    Checkpoints are of the right kind (``--utility`` a utility, ``--noise`` noise models trained
    against that utility's network), the split exists and is not empty, and its cases pass
    :func:`pipeline.data.validate_datalist` with labels and hold pancreas. With ``sanity`` the training
    and validation parts the sanity check retrains on (:func:`sanity_source`) pass the training checks too; with
    ``shortcut`` every case has its cue mask and twin, whose headers are checked.

    With ``on_error`` ``skip`` (``auto``: when the split holds several cases) a case of the evaluated split that
    fails its checks is reported (``{"case", "input", "error"}``) and left out of the evaluation; the cases the
    sanity check retrains on must all pass (a retraining cannot leave one out).

    Raises:
        ConfigError, CheckpointError, DataError: the first problem found (or every evaluated case failed).
    """
    if not noise_checkpoints:
        raise ConfigError("evaluate needs at least one noise-model checkpoint (--noise RUN_DIR/checkpoints/best.pt).")
    if utility_bundle:
        from pipeline.networks.zoo import load_bundle_utility

        utility_meta = load_bundle_utility(utility_bundle, "cpu", target_channel)[1]
    elif utility_checkpoint and is_torchscript(utility_checkpoint):
        utility_meta = load_utility(utility_checkpoint, "cpu", None, target_channel)[1]
    else:
        utility_meta = dict(load_checkpoint(utility_checkpoint).get("meta", {}))
        check_kind(utility_meta, utility_checkpoint, "utility", "--utility")
    check_explainable(utility_meta, baselines, sanity, str(utility_bundle or utility_checkpoint))  # TorchScript: no module tree
    utility_meta["utility_output"] = utility_output  # what this evaluation explains (the checkpoint's own run: its segmentation)
    if uncertainty_noise:  # the noise model of the uncertainty must belong to this utility too
        if not str(utility_meta.get("network_config", {}).get("target", "")).endswith("ProbabilisticUNet"):
            raise ConfigError(f"uncertainty_noise {uncertainty_noise} explains a probabilistic utility's uncertainty; "
                              f"{utility_bundle or utility_checkpoint} is not a Probabilistic U-Net.")
        check_pair({**utility_meta, "utility_output": "uncertainty"}, dict(load_checkpoint(uncertainty_noise).get("meta", {})),
                   utility_bundle or utility_checkpoint, uncertainty_noise)
    if int(utility_meta.get("spatial_dims", 2)) == 3:  # 3D skips the shortcut benchmark (volume_settings says so), so not checked
        shortcut = False
    noise_metas = []
    for path in noise_checkpoints:
        noise_meta = dict(load_checkpoint(path).get("meta", {}))
        check_kind(noise_meta, path, "noise", "--noise")
        check_pair(utility_meta, noise_meta, utility_bundle or utility_checkpoint, path)
        noise_metas.append((str(path), noise_meta))
    split = resolve_split(split, utility_bundle, utility_checkpoint)
    splits = load_split(dataset_dir, datalist_key, val_fraction, test_fraction, seed, split, allow_outside_paths)
    for entry in splits[split]:  # the multi-rater phantom's masks and twin, read by the attribution after the maps
        for key in ("sign", "lesion", "image_nosign"):
            if entry.get(key) and not Path(entry[key]).is_file():
                raise DataError(f"{entry[key]}: the {key} file of case {entry.get('case')} is missing; write the set again "
                                "(unoise phantom --raters N) or drop the key from its datalist entry.")
    retrain = sanity_source(sanity_dataset, split, dataset_dir, datalist_key, val_fraction, test_fraction, seed,
                            noise_metas[0]) if sanity else None
    if retrain is not None and retrain["dataset_dir"] != dataset_dir:  # another set: its own training checks
        retrain_splits = load_split(retrain["dataset_dir"], retrain["datalist_key"], retrain["val_fraction"],
                                    retrain["test_fraction"], retrain["seed"], "training", allow_outside_paths)
        check_channels(retrain_splits["training"] + retrain_splits["validation"], int(utility_meta.get("in_channels", 1)),
                       retrain["dataset_dir"])
        summary = validate_datalist(retrain_splits["training"] + retrain_splits["validation"], pancreas_labels, label_values,
                                    require_labels=False, progress=False, strict=strict)
        check_training_split(summary, retrain_splits, retrain["dataset_dir"], parts=("training", "validation"),
                             require_pancreas=any("label" in entry for entry in retrain_splits["training"]))
        retrain = None  # checked: the evaluated set's own parts need no training checks
    parts = tuple(dict.fromkeys([split, *(("training", "validation") if retrain is not None else ())]))
    others = [entry for part in parts if part != split for entry in splits[part]]
    check_channels(others, int(utility_meta.get("in_channels", 1)), dataset_dir)
    skip = resolve_on_error(on_error, splits[split]) == "skip"
    failed, passed = [], []
    for entry in splits[split]:  # per case, so that skip leaves out a case of the wrong channel count too
        try:
            check_channels([entry], int(utility_meta.get("in_channels", 1)), dataset_dir)
            if shortcut:
                from pipeline.data import load_volume
                from pipeline.evaluation.shortcut import SHORTCUT_KEYS, check_shortcut_entries

                check_shortcut_entries([entry])
                for key in SHORTCUT_KEYS:
                    load_volume(entry[key])  # header, size and 3D checks; geometry follows the image's in the transforms
            passed.append(entry)
        except DataError as err:
            if not skip:
                raise
            record_failure(failed, entry, err)
    if not passed:
        raise DataError(f"every case of the {split} split failed its checks ({len(failed)}); the first: {failed[0]['error']}")
    evaluated = validate_datalist(passed, pancreas_labels, label_values, require_labels=True, progress=False,
                                  strict=strict, on_error="skip" if skip else "stop")
    evaluated.failed[:0] = failed
    summary = validate_datalist(others, pancreas_labels, label_values, require_labels=True, progress=False,
                                strict=strict) if others else None
    cases = evaluated.cases + (summary.cases if summary else [])
    check_training_split(DatasetSummary(cases, evaluated.pancreas_labels), splits, dataset_dir, parts=parts)
    return evaluated.failed


__all__ = ["BASELINES", "NULL_MAPS", "SPLITS", "unoise_name", "with_input_settings", "check_settings", "load_split", "check_inputs", "resolve_split",
           "sanity_source"]
