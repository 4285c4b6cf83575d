"""The ``unoise`` command (also ``python -m pipeline``).

Data subcommands run here directly; the training and inference subcommands run the bundle configs in
``bundles/pancreas_ct_unoise/configs`` with ``--key value`` overrides, as ``python -m monai.bundle run``
does. Problems with the user's input (our own :class:`~pipeline.errors.UNoiseError`) print one line
(``error: ...``) and exit with status 2; pass ``--traceback`` to see the full stack. Any other exception
is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.bundle import check_override_keys, config_files, default_bundle_root, run_bundle, user_error
from pipeline.errors import ConfigError

logger = logging.getLogger("pipeline")


def parse_value(text: str) -> Any:
    """A command-line value as Python: ``2`` -> 2, ``"[7]"`` -> [7], ``null``/``true`` -> None/True, JSON, else the text."""
    lowered = {"null": None, "none": None, "true": True, "false": False}
    if text.lower() in lowered:
        return lowered[text.lower()]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        pass
    try:
        return json.loads(text)  # JSON spellings too: {"args": {"x": true}}
    except ValueError:
        return text


def parse_overrides(extra: Sequence[str]) -> dict[str, Any]:
    """``["--epochs", "2", "--device=cpu", "--noise-preset", "small"]`` -> ``{"epochs": 2, "device": "cpu", "noise_preset":
    "small"}``: hyphens in a key become underscores (the config's spelling), values as in :func:`parse_value`."""
    overrides: dict[str, Any] = {}
    items = list(extra)
    while items:
        flag = items.pop(0)
        if not flag.startswith("--") or len(flag) < 3:
            raise ConfigError(f"expected --key value pairs after the options, got {flag!r}.")
        key, sep, value = flag[2:].partition("=")
        if not sep:
            if not items or items[0].startswith("--"):
                raise ConfigError(f"--{key} needs a value (e.g. --{key} 2); config overrides are --key value pairs.")
            value = items.pop(0)
        overrides[key.replace("-", "_")] = parse_value(value)  # config keys are snake_case: --held-out-infills too
    return overrides


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


def _cmd_presets(args: argparse.Namespace) -> int:
    from pipeline.networks import NETWORK_PRESETS, build_unet, count_parameters

    print(f"{'preset':8s} {'channels per level':28s} {'downsamplings':>13s} {'parameters':>12s}")
    for name, preset in NETWORK_PRESETS.items():
        size = count_parameters(build_unet(name, in_channels=args.in_channels))
        print(f"{name:8s} {', '.join(map(str, preset.channels)):28s} {preset.downsamplings:>13d} {size:>12,d}")
    return 0


OVERLAYS_3D = {"train_utility": "train_3d", "train_noise": "train_noise_3d", "inference": "inference_3d"}


def _overlays(config: str, args: argparse.Namespace) -> list[str]:
    """The configs layered over ``config``: the 3D one with ``--spatial-dims 3``."""
    return [OVERLAYS_3D[config]] if getattr(args, "spatial_dims", 2) == 3 else []


def _run_training(config: str, args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    """Run a training config with the command's overrides, then print the run's best figures."""
    overrides = {**overrides, "output_dir": args.output, **_check_overrides(args), **args.overrides}
    if args.resume:
        overrides["resume"] = True
    run_bundle(config, overrides, args.bundle_root, _overlays(config, args))
    _print_training_summary(args.output)
    return 0


def _cmd_train_utility(args: argparse.Namespace) -> int:
    return _run_training("train_utility", args, {"dataset_dir": args.dataset})


def _cmd_train_noise(args: argparse.Namespace) -> int:
    overrides = {"dataset_dir": args.dataset, **_utility_overrides(args)}
    if args.init_from:
        overrides["init_from"] = args.init_from
    return _run_training("train_noise", args, overrides)


def _cmd_explain(args: argparse.Namespace) -> int:
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
    """Print this run's cases from manifest.json; 1 when any failed."""
    manifest = json.loads((Path(args.output) / "manifest.json").read_text())
    cases = [case for case in manifest["cases"] if case.get("run", 0) == 0]  # this run's (earlier runs' stay listed)
    counts = {status: sum(1 for c in cases if c["status"] == status) for status in ("done", "skipped", "failed")}
    print(f"explained {counts['done']} volume(s), {counts['skipped']} skipped (done before), {counts['failed']} failed: "
          f"{args.output} (manifest.json)")
    for case in cases:
        detail = f"{case['seconds']:.1f} s" if case["status"] == "done" else (case["error"] or "")
        print(f"  {case['case']:24s} {case['status']:8s} {detail}")
    return 1 if counts["failed"] else 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
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


def _cmd_benchmark(args: argparse.Namespace) -> int:
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


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pancreas_labels", "--pancreas-labels", type=parse_value, default=[1, 2],
                        help='label values that mean pancreas, merged into one class (default "[1, 2]": MSD)')
    parser.add_argument("--label_values", "--label-values", type=parse_value, default=None,
                        help='all values a label may hold (default: 0 plus pancreas_labels; "any": no check)')
    parser.add_argument("--key", default="training", help="datalist key to read (training, validation, test)")
    _add_check_options(parser)


def _parse_bool(text: str) -> bool:
    """``true`` / ``false`` (also yes/no, 1/0), as a bundle's JSON booleans read on the command line."""
    value = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}.get(str(text).strip().lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value


def _add_check_options(parser: argparse.ArgumentParser, series: bool = True) -> None:
    """The input checks' switches (``strict``, ``allow_outside_paths``, ``series``) of every command that reads data."""
    parser.add_argument("--strict", action="store_true",
                        help="refuse volumes whose intensities do not look like CT in HU (default: warn, naming the case)")
    parser.add_argument("--allow-outside-paths", "--allow_outside_paths", dest="allow_outside_paths", action="store_true",
                        help="accept datalist paths outside the datalist's folder (.., absolute paths)")
    if series:
        parser.add_argument("--series", default=None, metavar="UID",
                            help="SeriesInstanceUID to read from a DICOM folder holding several series")
        parser.add_argument("--resample-uneven", "--resample_uneven", dest="resample_uneven", type=_parse_bool,
                            default=False, metavar="BOOL",
                            help="true: a DICOM series with a missing slice or uneven steps is resampled linearly onto "
                                 "an even grid at its median step (maps then lie on that grid: NIfTI only), not refused")


def _add_utility_options(parser: argparse.ArgumentParser) -> None:
    """``--utility CHECKPOINT``, ``--utility-bundle DIR`` (a model-zoo bundle) or ``--utility-torchscript FILE``, and the class."""
    parser.add_argument("--utility", default=None, help="utility checkpoint (train-utility RUN_DIR/checkpoints/best.pt)")
    parser.add_argument("--utility-bundle", "--utility_bundle", dest="utility_bundle", default=None, metavar="DIR",
                        help="a MONAI model-zoo bundle as the utility (configs/metadata.json, configs/inference.json, models/model.pt)")
    parser.add_argument("--utility-torchscript", "--utility_torchscript", dest="utility_torchscript", default=None, metavar="FILE",
                        help="a TorchScript segmentation network (torch.jit.save) as the utility; give its CT window "
                             "with --window and its input size with --spatial_size")
    parser.add_argument("--target-channel", "--target_channel", dest="target_channel", type=parse_value, default=None,
                        help="the explained output channel of a bundle or TorchScript utility: an index (or a bundle's "
                             "channel_def name); default the first class that is not the background")


def _add_dims_option(parser: argparse.ArgumentParser) -> None:
    """``--spatial-dims 3``: the 3D configs layered over the 2D ones (see :data:`OVERLAYS_3D`)."""
    parser.add_argument("--spatial-dims", "--spatial_dims", dest="spatial_dims", type=int, choices=(2, 3), default=2,
                        help="3: volumetric networks on patches, sliding-window inference (layers configs/*_3d.json)")


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
        from pipeline.zoo import is_torchscript

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


def _cmd_phantom(args: argparse.Namespace) -> int:
    from pipeline.phantom import write_phantom_dataset

    path = write_phantom_dataset(args.out, cases=args.cases, size=args.size, slices=args.slices, seed=args.seed,
                                 test_cases=args.test_cases, shortcut=args.shortcut)
    kind = f" with the '{args.shortcut}' shortcut (cue masks in shortcutsTr/, twins without it in imagesTr_nocue/)" if args.shortcut else ""
    print(f"wrote {args.cases} training + {args.test_cases} test phantom cases{kind}: {path}")
    if args.dicom:
        from pipeline.phantom_dicom import write_dicom_copies

        folders = write_dicom_copies(Path(args.out) / "imagesTs", Path(args.out) / "dicomTs")
        print(f"wrote {len(folders)} test case(s) as DICOM series: {Path(args.out) / 'dicomTs'}")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
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


def _cmd_split(args: argparse.Namespace) -> int:
    from pipeline.data import image_paths, load_datalist, split_datalist, write_datalist

    splits = split_datalist(load_datalist(args.dataset, key=args.key, allow_outside_paths=args.allow_outside_paths),
                            args.val, args.test, args.seed)
    path = write_datalist(splits, args.output)
    print(f"{path}: " + ", ".join(f"{name} {len(cases)}" for name, cases in splits.items()) + " cases (split by patient)")
    folder = Path(path).resolve().parent
    if any(folder not in Path(path).parents for part in splits.values() for e in part for path in image_paths(e)):
        print(f"note: its paths leave {folder}; commands reading it need --allow_outside_paths (or write it inside the dataset folder)")
    return 0


def _add_on_error_option(command: argparse.ArgumentParser, what: str) -> None:
    command.add_argument("--on-error", "--on_error", dest="on_error", choices=["auto", "skip", "stop"], default="auto",
                         help=f"{what} (default auto: skip in a batch of several cases, stop on a single one)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unoise", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--traceback", action="store_true", help="show the full stack on errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="the full engine log (Ignite, MONAI's StatsHandler, the bundle's logging.conf) "
                        "and every library warning")
    parser.add_argument("--bundle-root", type=Path, default=None, help="bundle folder (default: the one in this checkout)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    phantom = sub.add_parser("phantom", help="write synthetic abdominal CT phantoms in the MSD Task07 layout")
    phantom.add_argument("--out", required=True, help="output folder (dataset.json, imagesTr/, labelsTr/, imagesTs/)")
    phantom.add_argument("--cases", type=int, default=24, help="training cases with labels (default 24)")
    phantom.add_argument("--size", type=int, default=128, help="in-plane size in pixels (default 128)")
    phantom.add_argument("--slices", type=int, default=48, help="axial slices per volume (default 48)")
    phantom.add_argument("--seed", type=int, default=0, help="same seed, same volumes (default 0)")
    phantom.add_argument("--test-cases", "--test_cases", type=int, default=0, dest="test_cases",
                         help="extra unlabelled cases in imagesTs/ (default 0)")
    phantom.add_argument("--shortcut", choices=["marker"], default=None,
                         help="the shortcut benchmark: copy the gland onto other slices (a coin toss labels one), plant "
                              "a bright cue in front of the labelled one, and write the cue masks and twins without the cue")
    phantom.add_argument("--dicom", action="store_true",
                         help="also write each test case as a DICOM CT series folder, dicomTs/<case>/ (for explain's DICOM path)")
    phantom.set_defaults(func=_cmd_phantom)

    inspect = sub.add_parser("inspect", help="validate a dataset and print its summary")
    inspect.add_argument("--dataset", required=True, help="MSD folder, datalist JSON or folder of images")
    _add_data_options(inspect)
    inspect.add_argument("--json", action="store_true", help="print the summary as JSON")
    _add_on_error_option(inspect, "a case that cannot be read or fails a check: report it and summarise the others "
                                  "(exit status 1), or stop at it")
    inspect.set_defaults(func=_cmd_inspect)

    split = sub.add_parser("split", help="split a dataset by patient into training/validation/test datalist JSON")
    split.add_argument("--dataset", required=True, help="MSD folder, datalist JSON or folder of images")
    split.add_argument("--output", required=True, help="datalist JSON to write")
    split.add_argument("--val", type=float, default=0.1, help="validation share of patients (default 0.1)")
    split.add_argument("--test", type=float, default=0.1, help="test share of patients (default 0.1)")
    split.add_argument("--seed", type=int, default=0)
    split.add_argument("--key", default="training", help="datalist key to split (default training)")
    split.add_argument("--allow-outside-paths", "--allow_outside_paths", dest="allow_outside_paths", action="store_true",
                       help="accept datalist paths outside the datalist's folder")
    split.set_defaults(func=_cmd_split)

    presets = sub.add_parser("presets", help="list the network presets with their parameter counts")
    presets.add_argument("--in-channels", "--in_channels", type=int, default=1, dest="in_channels")
    presets.set_defaults(func=_cmd_presets)

    train = sub.add_parser("train-utility", help="train the pancreas segmentation UNet (configs/train_utility.json)",
                           epilog="Any other --key value overrides that config key, as with `python -m monai.bundle "
                                  "run`, e.g. --epochs 2 --spatial_size 64 --device cpu --preset demo.")
    train.add_argument("--dataset", required=True, help="MSD folder, datalist JSON or folder (dataset_dir)")
    _add_dims_option(train)
    train.add_argument("--output", required=True, help="run folder (output_dir)")
    train.add_argument("--resume", action="store_true", help="continue the run in --output from checkpoints/last.pt")
    _add_check_options(train, series=False)
    train.set_defaults(func=_cmd_train_utility, takes_overrides=True)

    noise = sub.add_parser("train-noise", help="train the U-Noise model against a frozen utility (configs/train_noise.json)",
                           epilog="Any other --key value overrides that config key, e.g. --noise_preset small "
                                  "--noise_weight 0.03 --target label --perturbation additive --max_scale 0.4 --epochs 5.")
    noise.add_argument("--dataset", required=True, help="dataset the utility was trained on (same split by seed)")
    _add_utility_options(noise)
    _add_dims_option(noise)
    noise.add_argument("--output", required=True, help="run folder (output_dir)")
    noise.add_argument("--init-from", "--init_from", dest="init_from", default=None,
                       help="start the noise model from a checkpoint of the same shape ('pretrained' variant)")
    noise.add_argument("--resume", action="store_true", help="continue the run in --output from checkpoints/last.pt")
    _add_check_options(noise, series=False)
    noise.set_defaults(func=_cmd_train_noise, takes_overrides=True)

    explain = sub.add_parser("explain", help="write importance maps and segmentations of CT volumes (configs/inference.json)")
    explain.add_argument("--input", required=True, nargs="+",
                         help="NIfTI files, DICOM series folders, folders of images, MSD folders or datalists")
    _add_dims_option(explain)
    explain.add_argument("--output", required=True, help="folder for <case>_importance.nii.gz, <case>_seg.nii.gz "
                         "(and .dcm with --output-format), manifest.json")
    explain.add_argument("--noise", required=True, help="noise-model checkpoint (train-noise RUN_DIR/checkpoints/best.pt)")
    _add_utility_options(explain)
    explain.add_argument("--overlay", action="store_true", help="also write <case>_overlay.png")
    explain.add_argument("--output-format", "--output_format", dest="output_format", choices=["nifti", "dicom", "both"],
                         default="nifti", help="nifti (default); dicom: <case>_seg.dcm (DICOM SEG) and "
                         "<case>_importance.dcm (Parametric Map) of DICOM series inputs, which carry the source's "
                         "patient and study; both: NIfTI for every case and DICOM where the input is a DICOM series")
    explain.add_argument("--overwrite", action="store_true", help="replace outputs already in --output (a re-run "
                         "otherwise skips the cases manifest.json lists as done with the same models and settings)")
    _add_on_error_option(explain, "a case that cannot be read or explained: skip it and go on, or stop")
    _add_check_options(explain)
    explain.set_defaults(func=_cmd_explain, takes_overrides=True)

    evaluate = sub.add_parser("evaluate", help="judge U-Noise against occlusion, gradient methods and null maps "
                              "(configs/evaluate.json); writes evaluation.json and report/",
                              epilog="Any other --key value overrides that config key, e.g. --split validation "
                                     "--slices-per-case 3 --infills \"['blur', 'floor']\" --held-out-infills \"['road']\" --shortcut true "
                                     "--sanity false; with a 3D utility --volume-protocol roi (one volume of interest per "
                                     "case instead of every whole volume).")
    evaluate.add_argument("--dataset", required=True, help="dataset the models were trained on (same split by seed)")
    _add_utility_options(evaluate)
    evaluate.add_argument("--noise", required=True, nargs="+", help="one or more noise-model checkpoints")
    evaluate.add_argument("--output", required=True, help="run folder for evaluation.json and report/")
    _add_check_options(evaluate, series=False)
    _add_on_error_option(evaluate, "a test case that cannot be read or fails a check: leave it out of the figures "
                                   "(listed, exit status 1), or stop; the cases the sanity check retrains on must pass")
    evaluate.set_defaults(func=_cmd_evaluate, takes_overrides=True)

    bench = sub.add_parser("benchmark", help="time training steps, explainers and the data path; writes benchmark.json",
                           epilog="Any other --key value overrides a train_noise.json key of the dice check's runs "
                                  "(e.g. the split of the utility's run: --val_fraction 0.15 --test_fraction 0.15).")
    bench.add_argument("--output", type=Path, default=Path("benchmark.json"), help="JSON to write (default benchmark.json)")
    bench.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    bench.add_argument("--table", default=None, metavar="JSON", help="only print the table of an existing benchmark.json")
    bench.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")
    bench.add_argument("--spatial-size", "--spatial_size", dest="spatial_size", type=int, default=256,
                       help="slice size in pixels (default 256)")
    bench.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=8, help="default 8")
    bench.add_argument("--utility-preset", "--utility_preset", dest="utility_preset", default="paper",
                       help="utility network of the steps (default paper)")
    bench.add_argument("--noise-preset", "--noise_preset", dest="noise_preset", default="large",
                       help="noise model of the steps and the ratios (default large)")
    bench.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (default 3)")
    bench.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    bench.add_argument("--cases", type=int, default=4, help="phantom cases the bundle trainer uses (default 4)")
    bench.add_argument("--slices", type=int, default=16, help="slices per phantom case (default 16)")
    bench.add_argument("--utility", default=None, help="trained utility checkpoint for the dice check (with --dataset)")
    bench.add_argument("--dataset", default=None, help="the utility's dataset, for the dice check")
    bench.add_argument("--dice-epochs", "--dice_epochs", dest="dice_epochs", type=int, default=9,
                       help="noise-training epochs per precision in the dice check (default 9, the demo's schedule)")
    bench.add_argument("--work-dir", "--work_dir", dest="work_dir", type=Path, default=None,
                       help="keep the phantom set and the benchmark's runs here (default: a temporary folder)")
    bench.set_defaults(func=_cmd_benchmark, takes_overrides=True)
    for command in sub.choices.values():  # "--target" must reach the config, not be read as --target-channel
        command.allow_abbrev = False
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``unoise``; returns the exit status."""
    from pipeline.console import configure_console

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "takes_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    configure_console(args.verbose)
    try:
        args.overrides = parse_overrides(extra)
        return int(args.func(args) or 0)
    except Exception as err:
        refusal = user_error(err)
        if refusal is None or args.traceback:
            raise
        from pipeline.distributed import get_rank, get_world_size

        rank = f"rank {get_rank()}: " if get_world_size() > 1 and get_rank() > 0 else ""  # under torchrun
        print(f"error: {rank}{refusal}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        from pipeline.bundle import set_log_mode

        set_log_mode("full")  # a later run in this process (the Python API, a notebook) logs as monai.bundle does


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
