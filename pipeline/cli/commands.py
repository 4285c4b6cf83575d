"""What each ``unoise`` subcommand does once its options are parsed: run a bundle config, or a data step here."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.bundle import check_override_keys, config_files, default_bundle_root, run_bundle
from pipeline.errors import ConfigError


def _print_training_summary(output: str) -> None:
    folder = Path(output)
    metrics = folder / "metrics.json"
    if metrics.is_file():
        summary = json.loads(metrics.read_text())
        best = summary.get("best", {})
        last = summary["epochs"][-1] if summary.get("epochs") else {}
        figures = ", ".join(f"{k} {v:.4f}" for k, v in best.items() if k != "epoch")
        print(f"trained {last.get('epoch', 0)} epochs; best {figures} at epoch {best.get('epoch', '-')}")
    written = [name for name in ("checkpoints/best.pt", "checkpoints/last.pt", "tensorboard/", "metrics.json")
               if (folder / name.rstrip("/")).exists()]
    print(f"run folder: {output} ({', '.join(written) or 'nothing written'})")


def cmd_presets(args: argparse.Namespace) -> int:
    from pipeline.networks import NETWORK_PRESETS, build_unet, count_parameters

    print(f"{'preset':8s} {'channels per level':28s} {'downsamplings':>13s} {'parameters':>12s}")
    for name, preset in NETWORK_PRESETS.items():
        size = count_parameters(build_unet(name, in_channels=args.in_channels))
        print(f"{name:8s} {', '.join(map(str, preset.channels)):28s} {preset.downsamplings:>13d} {size:>12,d}")
    return 0


OVERLAYS_3D = {"train_utility": "train_3d", "train_noise": "train_noise_3d", "inference": "inference_3d"}


def _overlays(config: str, args: argparse.Namespace) -> list[str]:
    """The configs layered over ``config``: the 3D one with ``--spatial-dims 3``, or, without the option, when the
    models say so (:func:`_spatial_dims`)."""
    dims = getattr(args, "spatial_dims", None)
    return [OVERLAYS_3D[config]] if (dims if dims is not None else _spatial_dims(config, args)) == 3 else []


def _spatial_dims(config: str, args: argparse.Namespace) -> int:
    """The dimensionality the models give: ``explain`` the noise checkpoint's, ``train-noise`` the utility's (a
    bundle's metadata, a checkpoint's meta); 2 for a new utility, a TorchScript file or what cannot be read (the
    run then refuses it naming the file)."""
    import logging

    from pipeline.errors import UNoiseError

    source = args.noise if config == "inference" else (args.utility_bundle or args.utility) if config == "train_noise" else None
    if not source:
        return 2
    try:
        if config == "train_noise" and args.utility_bundle:
            from pipeline.networks.zoo import bundle_spatial_dims

            dims = bundle_spatial_dims(source)
        else:
            from pipeline.networks.checkpoints import checkpoint_spatial_dims

            dims = checkpoint_spatial_dims(source)
    except (UNoiseError, OSError, ValueError):
        return 2
    if dims == 3:
        logging.getLogger(__name__).info("%s holds a 3D network: the 3D configs (--spatial-dims 3)", source)
    return dims


def _run_training(config: str, args: argparse.Namespace, overrides: dict[str, Any], extra: Sequence[str] = ()) -> int:
    """Run a training config with the command's overrides (and ``extra`` overlays), then print the run's best figures."""
    overrides = {**overrides, "output_dir": args.output, **_check_overrides(args), **args.overrides}
    if args.resume:
        overrides["resume"] = True
    run_bundle(config, overrides, args.bundle_root, _overlays(config, args) + list(extra))
    _print_training_summary(args.output)
    return 0


def cmd_train_utility(args: argparse.Namespace) -> int:
    extra = []
    if args.kind == "probabilistic":
        if args.spatial_dims == 3:
            raise ConfigError("--kind probabilistic trains on 2D slices; leave out --spatial-dims 3.")
        extra.append("train_probabilistic")
    return _run_training("train_utility", args, {"dataset_dir": args.dataset}, extra)


def cmd_train_denoiser(args: argparse.Namespace) -> int:
    return _run_training("train_utility", args, {"dataset_dir": args.dataset, "denoise_mode": args.mode}, ["train_denoiser"])


def cmd_train_noise(args: argparse.Namespace) -> int:
    overrides = {"dataset_dir": args.dataset, **_utility_overrides(args)}
    if args.init_from:
        overrides["init_from"] = args.init_from
    return _run_training("train_noise", args, overrides)


def cmd_explain(args: argparse.Namespace) -> int:
    overrides = {"inputs": list(args.input), "output_dir": args.output, "noise_checkpoint": args.noise,
                 **_utility_overrides(args), **_check_overrides(args), **args.overrides}
    if args.overlay:
        overrides["overlay"] = True
    if args.overwrite:
        overrides["overwrite"] = True
    if args.output_format != "nifti":
        overrides["output_format"] = args.output_format
    if args.on_error != "auto":
        overrides["on_error"] = args.on_error
    from pipeline import distributed

    overlays = _overlays("inference", args)
    sharded = distributed.launched_by_torchrun()  # `torchrun ... -m pipeline.cli explain`: the cases over the ranks
    if sharded:
        overlays.append("multi_gpu_inference")
        overrides["leave_process_group"] = False  # left below, after the summary, with the exit status
        distributed.quiet_other_ranks()  # from the start: only rank 0 reports progress
    run_bundle("inference", overrides, args.bundle_root, overlays)
    if sharded and not distributed.is_main_process():
        distributed.cleanup(0)  # rank 0 reports for all
    status = _explain_summary(args)
    if sharded:
        distributed.cleanup(status)
    return status


def _explain_summary(args: argparse.Namespace) -> int:
    """Print this run's cases from manifest.json; 1 when any failed or lacks outputs it asked for (a DICOM input's
    DICOM objects under ``--output-format both``)."""
    from pipeline.outputs.manifest import status_counts, this_run_cases

    cases = this_run_cases(args.output)  # earlier runs' cases stay listed in the file
    counts = status_counts(cases)
    partial = sum(1 for c in cases if c.get("note"))
    print(f"explained {counts['done']} volume(s), {counts['skipped']} skipped (done before), {counts['failed']} failed"
          + (f", {partial} with NIfTI maps only" if partial else "") + f": {args.output} (manifest.json)")
    for case in cases:
        detail = f"{case['seconds']:.1f} s" if case["status"] == "done" else (case["error"] or "")
        print(f"  {case['case']:24s} {case['status']:8s} {detail}" + (f"; {case['note']}" if case.get("note") else ""))
    return 1 if counts["failed"] or partial else 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pipeline.evaluation.run import summarise

    overrides = {"dataset_dir": args.dataset, **_utility_overrides(args), "output_dir": args.output,
                 "noise_checkpoints": list(args.noise), **_check_overrides(args), **args.overrides}
    if args.on_error != "auto":
        overrides["on_error"] = args.on_error
    run_bundle("evaluate", overrides, args.bundle_root)
    result = json.loads((Path(args.output) / "evaluation.json").read_text())
    print(summarise(result))
    print(f"report: {Path(args.output) / 'report' / 'report.html'}")
    return 1 if result.get("failed_cases") else 0


def cmd_denoise(args: argparse.Namespace) -> int:
    from pipeline.outputs.manifest import status_counts, this_run_cases

    overrides = {"inputs": list(args.input), "denoiser_checkpoint": args.denoiser, "output_dir": args.output,
                 "output_format": args.output_format, "overwrite": bool(args.overwrite), **_check_overrides(args),
                 **args.overrides}
    overrides.pop("strict", None)  # (the denoiser reads any CT; no intensity check to make stricter)
    run_bundle("denoise_inference", overrides, args.bundle_root)
    return 1 if status_counts(this_run_cases(args.output))["failed"] else 0


def cmd_audit_dose(args: argparse.Namespace) -> int:
    denoisers = {}
    for item in args.denoiser:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--denoiser takes NAME=CHECKPOINT (e.g. n2n=runs/n2n/checkpoints/last.pt), got {item!r}.")
        denoisers[name] = path
    choice = args.denoise_with or ("n2n" if "n2n" in denoisers else next(iter(denoisers), None))
    overrides = {"dataset_dir": args.dataset, **_utility_overrides(args), "output_dir": args.output, "denoisers": denoisers,
                 "denoise_with": choice, **_check_overrides(args), **args.overrides}
    if args.noise:
        overrides["noise_checkpoint"] = args.noise
    run_bundle("audit_dose", overrides, args.bundle_root)
    print(f"wrote {Path(args.output) / 'dose_audit.json'}" + (f", {Path(args.output) / 'denoise.json'}" if choice else "")
          + f" and {Path(args.output) / 'report' / 'dose.png'}")
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    from pipeline.benchmark import format_table, run_benchmark
    from pipeline.fileio import write_json_atomic

    if args.table:
        try:
            record = json.loads(Path(args.table).read_text())
            print(format_table(record))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ConfigError(f"{args.table}: not a benchmark.json written by `unoise benchmark` ({type(err).__name__}: {err}).") from err
        return 0
    if args.output.exists() and not args.overwrite:
        raise ConfigError(f"{args.output}: already exists; choose another --output or pass --overwrite.")
    if args.overrides and args.utility is None:
        raise ConfigError(f"--{next(iter(args.overrides))}: config overrides go to the dice check's train_noise.json "
                          "runs, which need --utility and --dataset.")
    if args.overrides:
        check_override_keys(config_files(args.bundle_root or default_bundle_root(), "train_noise"), args.overrides)
    result = run_benchmark(
        spatial_size=args.spatial_size, batch_size=args.batch_size, utility_preset=args.utility_preset,
        noise_preset=args.noise_preset, repeats=args.repeats, warmup=args.warmup, device=args.device,
        cases=args.cases, slices=args.slices, bundle_root=args.bundle_root, utility_checkpoint=args.utility,
        dataset=args.dataset, dice_epochs=args.dice_epochs, dice_overrides=args.overrides, work_dir=args.work_dir,
    )
    write_json_atomic(result, args.output)
    print(format_table(result))
    print(f"wrote {args.output}")
    return 0


def _utility_overrides(args: argparse.Namespace) -> dict[str, Any]:
    given = [flag for flag, value in (("--utility", args.utility), ("--utility-bundle", args.utility_bundle),
                                      ("--utility-torchscript", args.utility_torchscript)) if value]
    if not given:
        raise ConfigError("no utility: pass --utility CHECKPOINT, --utility-bundle DIR or --utility-torchscript FILE.")
    if len(given) > 1:
        raise ConfigError(f"pass one utility, got {' and '.join(given)}.")
    if args.utility and args.target_channel is not None:
        raise ConfigError("--target-channel chooses a class of a --utility-bundle or --utility-torchscript; a --utility "
                          "checkpoint has one output.")
    if args.utility_torchscript:
        from pipeline.networks.zoo import is_torchscript

        if not Path(args.utility_torchscript).is_file():
            raise ConfigError(f"{args.utility_torchscript}: no such file; pass the TorchScript file (torch.jit.save).")
        if not is_torchscript(args.utility_torchscript):
            raise ConfigError(f"{args.utility_torchscript}: not a TorchScript archive (torch.jit.save writes a zip with "
                              "code/ and constants.pkl); a U-Noise checkpoint goes to --utility.")
        return {"utility_checkpoint": args.utility_torchscript, "target_channel": args.target_channel}
    overrides: dict[str, Any] = {"utility_checkpoint": args.utility}
    if args.utility_bundle:
        overrides.update(utility_bundle=args.utility_bundle, target_channel=args.target_channel)
    return overrides


def _check_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The check switches given on the command line, as config overrides."""
    overrides: dict[str, Any] = {}
    if getattr(args, "strict", False):
        overrides["strict"] = True
    if getattr(args, "allow_outside_paths", False):
        overrides["allow_outside_paths"] = True
    if getattr(args, "series", None):
        overrides["series"] = args.series
    if getattr(args, "resample_uneven", False):
        overrides["resample_uneven"] = True
    return overrides


def cmd_phantom(args: argparse.Namespace) -> int:
    from pipeline.phantom import write_phantom_dataset

    path = write_phantom_dataset(args.out, cases=args.cases, size=args.size, slices=args.slices, seed=args.seed,
                                 test_cases=args.test_cases, shortcut=args.shortcut, raters=args.raters)
    kind = f" with the '{args.shortcut}' shortcut (cue masks in shortcutsTr/, twins without it in imagesTr_nocue/)" if args.shortcut else ""
    if args.raters:
        kind = (f" with {args.raters} raters each (labelsTr/<case>_rater<k>.nii.gz; the borderline lesion in lesionsTr/, "
                "the remote sign in signsTr/)")
    print(f"wrote {args.cases} training + {args.test_cases} test phantom cases{kind}: {path}")
    if args.dicom:
        from pipeline.dicom.ct_series import write_dicom_copies

        folders = write_dicom_copies(Path(args.out) / "imagesTs", Path(args.out) / "dicomTs")
        print(f"wrote {len(folders)} test case(s) as DICOM series: {Path(args.out) / 'dicomTs'}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from pipeline.data import load_datalist, validate_datalist, with_series

    datalist = with_series(load_datalist(args.dataset, key=args.key, allow_outside_paths=args.allow_outside_paths), args.series,
                           args.resample_uneven)
    summary = validate_datalist(datalist, pancreas_labels=args.pancreas_labels, label_values=args.label_values,
                                strict=args.strict, on_error=args.on_error)
    if args.json:
        print(json.dumps(summary.as_dict(), indent=2))
    else:
        verdict = f"{len(summary.failed)} of {len(datalist)} case(s) failed" if summary.failed else "valid"
        print(f"dataset: {args.dataset} ({args.key}) - {verdict}")
        print(summary.format())
    return 1 if summary.failed else 0


def cmd_split(args: argparse.Namespace) -> int:
    from pipeline.data import image_paths, load_datalist, split_datalist, write_datalist

    splits = split_datalist(load_datalist(args.dataset, key=args.key, allow_outside_paths=args.allow_outside_paths),
                            args.val, args.test, args.seed)
    path = write_datalist(splits, args.output)
    print(f"{path}: " + ", ".join(f"{name} {len(cases)}" for name, cases in splits.items()) + " cases (split by patient)")
    folder = Path(path).resolve().parent
    if any(folder not in Path(path).parents for part in splits.values() for e in part for path in image_paths(e)):
        print(f"note: its paths leave {folder}; commands reading it need --allow-outside-paths (or write it inside the dataset folder)")
    return 0


__all__ = ["OVERLAYS_3D", "cmd_audit_dose", "cmd_benchmark", "cmd_denoise", "cmd_evaluate", "cmd_explain", "cmd_inspect", "cmd_phantom",
           "cmd_presets", "cmd_split", "cmd_train_denoiser", "cmd_train_noise", "cmd_train_utility"]
