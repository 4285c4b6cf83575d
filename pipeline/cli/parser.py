"""The ``unoise`` command line: subcommands, their options (hyphens, the underscore form accepted) and the
``--key value`` overrides passed on to the bundle configs."""

from __future__ import annotations

import argparse
import ast
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError
from pipeline.cli.commands import (cmd_benchmark, cmd_evaluate, cmd_explain, cmd_inspect,
                                     cmd_phantom, cmd_presets, cmd_split, cmd_train_denoiser, cmd_train_noise,
                                     cmd_train_utility, cmd_audit_dose, cmd_denoise)


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


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pancreas-labels", type=parse_value, default=[1, 2],
                        help='label values that mean pancreas, merged into one class (default "[1, 2]": MSD)')
    parser.add_argument("--label-values", type=parse_value, default=None,
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
    parser.add_argument("--allow-outside-paths", dest="allow_outside_paths", action="store_true",
                        help="accept datalist paths outside the datalist's folder (.., absolute paths)")
    if series:
        parser.add_argument("--series", default=None, metavar="UID",
                            help="SeriesInstanceUID to read from a DICOM folder holding several series")
        parser.add_argument("--resample-uneven", dest="resample_uneven", type=_parse_bool,
                            default=False, metavar="BOOL",
                            help="true: a DICOM series with a missing slice or uneven steps is resampled linearly onto "
                                 "an even grid at its median step (maps then lie on that grid: NIfTI only), not refused")


def _add_utility_options(parser: argparse.ArgumentParser) -> None:
    """``--utility CHECKPOINT``, ``--utility-bundle DIR`` (a model-zoo bundle) or ``--utility-torchscript FILE``, and the class."""
    parser.add_argument("--utility", default=None, help="utility checkpoint (train-utility RUN_DIR/checkpoints/best.pt)")
    parser.add_argument("--utility-bundle", dest="utility_bundle", default=None, metavar="DIR",
                        help="a MONAI model-zoo bundle as the utility (configs/metadata.json, configs/inference.json, models/model.pt)")
    parser.add_argument("--utility-torchscript", dest="utility_torchscript", default=None, metavar="FILE",
                        help="a TorchScript segmentation network (torch.jit.save) as the utility; give its CT window "
                             "with --window and its input size with --spatial-size")
    parser.add_argument("--target-channel", dest="target_channel", type=parse_value, default=None,
                        help="the explained output channel of a bundle or TorchScript utility: an index (or a bundle's "
                             "channel_def name); default the first class that is not the background")


def _add_dims_option(parser: argparse.ArgumentParser) -> None:
    """``--spatial-dims 3``: the 3D configs layered over the 2D ones (see :data:`pipeline.cli.commands.OVERLAYS_3D`)."""
    parser.add_argument("--spatial-dims", dest="spatial_dims", type=int, choices=(2, 3), default=None,
                        help="3: volumetric networks on patches, sliding-window inference (layers configs/*_3d.json); "
                             "default: what the utility (train-noise) or noise checkpoint (explain) holds, 2 otherwise")


def _add_on_error_option(command: argparse.ArgumentParser, what: str) -> None:
    command.add_argument("--on-error", dest="on_error", choices=["auto", "skip", "stop"], default="auto",
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
    phantom.add_argument("--test-cases", type=int, default=0, dest="test_cases",
                         help="extra unlabelled cases in imagesTs/ (default 0)")
    phantom.add_argument("--shortcut", choices=["marker"], default=None,
                         help="the shortcut benchmark: copy the gland onto other slices (a coin toss labels one), plant "
                              "a bright cue in front of the labelled one, and write the cue masks and twins without the cue")
    phantom.add_argument("--raters", type=int, default=0,
                         help="N annotations per training case (labelsTr/<case>_rater<k>.nii.gz) whose disagreement is "
                              "known: boundary shifts, the tumour in or out, a missed lobule, and a borderline lesion "
                              "that every rater includes when a remote sign shows (default 0: one label per case)")
    phantom.add_argument("--dicom", action="store_true",
                         help="also write each test case as a DICOM CT series folder, dicomTs/<case>/ (for explain's DICOM path)")
    phantom.set_defaults(func=cmd_phantom)

    inspect = sub.add_parser("inspect", help="validate a dataset and print its summary")
    inspect.add_argument("--dataset", required=True, help="MSD folder, datalist JSON or folder of images")
    _add_data_options(inspect)
    inspect.add_argument("--json", action="store_true", help="print the summary as JSON")
    _add_on_error_option(inspect, "a case that cannot be read or fails a check: report it and summarise the others "
                                  "(exit status 1), or stop at it")
    inspect.set_defaults(func=cmd_inspect)

    split = sub.add_parser("split", help="split a dataset by patient into training/validation/test datalist JSON")
    split.add_argument("--dataset", required=True, help="MSD folder, datalist JSON or folder of images")
    split.add_argument("--output", required=True, help="datalist JSON to write")
    split.add_argument("--val", type=float, default=0.1, help="validation share of patients (default 0.1)")
    split.add_argument("--test", type=float, default=0.1, help="test share of patients (default 0.1)")
    split.add_argument("--seed", type=int, default=0)
    split.add_argument("--key", default="training", help="datalist key to split (default training)")
    split.add_argument("--allow-outside-paths", dest="allow_outside_paths", action="store_true",
                       help="accept datalist paths outside the datalist's folder")
    split.set_defaults(func=cmd_split)

    presets = sub.add_parser("presets", help="list the network presets with their parameter counts")
    presets.add_argument("--in-channels", type=int, default=1, dest="in_channels")
    presets.set_defaults(func=cmd_presets)

    train = sub.add_parser("train-utility", help="train the pancreas segmentation UNet (configs/train_utility.json)",
                           epilog="Any other --key value overrides that config key, as with `python -m monai.bundle "
                                  "run`, e.g. --epochs 2 --spatial-size 64 --device cpu --preset demo.")
    train.add_argument("--dataset", required=True, help="MSD folder, datalist JSON or folder (dataset_dir)")
    train.add_argument("--kind", choices=["deterministic", "probabilistic"], default="deterministic",
                       help="deterministic: one segmentation per image (default); probabilistic: a Probabilistic U-Net "
                            "that samples plausible segmentations, trained on several raters' labels "
                            "(configs/train_probabilistic.json)")
    _add_dims_option(train)
    train.add_argument("--output", required=True, help="run folder (output_dir)")
    train.add_argument("--resume", action="store_true", help="continue the run in --output from checkpoints/last.pt")
    _add_check_options(train, series=False)
    train.set_defaults(func=cmd_train_utility, takes_overrides=True)

    noise = sub.add_parser("train-noise", help="train the U-Noise model against a frozen utility (configs/train_noise.json)",
                           epilog="Any other --key value overrides that config key, e.g. --noise-preset small "
                                  "--noise-weight 0.03 --target label --perturbation additive --max-scale 0.4 --epochs 5.")
    noise.add_argument("--dataset", required=True, help="dataset the utility was trained on (same split by seed)")
    _add_utility_options(noise)
    _add_dims_option(noise)
    noise.add_argument("--output", required=True, help="run folder (output_dir)")
    noise.add_argument("--init-from", dest="init_from", default=None,
                       help="start the noise model from a checkpoint of the same shape ('pretrained' variant)")
    noise.add_argument("--resume", action="store_true", help="continue the run in --output from checkpoints/last.pt")
    _add_check_options(noise, series=False)
    noise.set_defaults(func=cmd_train_noise, takes_overrides=True)

    denoiser = sub.add_parser("train-denoiser", help="train a CT denoiser on simulated lower-dose scans: Noise2Clean, "
                              "Noise2Noise or Neural Egg Separation (configs/train_utility.json + configs/train_denoiser.json)",
                              epilog="Any other --key value overrides a config key, e.g. --denoise-doses \"[0.25, 0.125]\" "
                                     "--dose-noise-model image --denoise-loss l1 --nes-rounds 3 --epochs 20.")
    denoiser.add_argument("--dataset", required=True, help="full-dose CT (labels not needed): MSD folder, datalist JSON or folder")
    denoiser.add_argument("--mode", choices=["n2c", "n2n", "nes"], default="n2n",
                          help="n2c: clean targets (the reference); n2n: two independent noisy scans per slice (default); "
                               "nes: noisy scans and noise-only scans of a water cylinder, iterated (--nes-rounds)")
    denoiser.add_argument("--output", required=True, help="run folder (output_dir)")
    denoiser.add_argument("--resume", action="store_true", help="continue the run in --output from checkpoints/last.pt")
    _add_check_options(denoiser, series=False)
    denoiser.set_defaults(func=cmd_train_denoiser, takes_overrides=True)

    explain = sub.add_parser("explain", help="write importance maps and segmentations of CT volumes (configs/inference.json)")
    explain.add_argument("--input", required=True, nargs="+",
                         help="NIfTI files, DICOM series folders, folders of images, MSD folders or datalists")
    _add_dims_option(explain)
    explain.add_argument("--output", required=True, help="folder for <case>_importance.nii.gz, <case>_seg.nii.gz "
                         "(and .dcm with --output-format), manifest.json")
    explain.add_argument("--noise", required=True, help="noise-model checkpoint (train-noise RUN_DIR/checkpoints/best.pt)")
    _add_utility_options(explain)
    explain.add_argument("--overlay", action="store_true", help="also write <case>_overlay.png")
    explain.add_argument("--output-format", dest="output_format", choices=["nifti", "dicom", "both"],
                         default="nifti", help="nifti (default); dicom: <case>_seg.dcm (DICOM SEG) and "
                         "<case>_importance.dcm (Parametric Map) of DICOM series inputs, which carry the source's "
                         "patient and study; both: NIfTI for every case and DICOM where the input is a DICOM series")
    explain.add_argument("--overwrite", action="store_true", help="replace outputs already in --output (a re-run "
                         "otherwise skips the cases manifest.json lists as done with the same models and settings)")
    _add_on_error_option(explain, "a case that cannot be read or explained: skip it and go on, or stop")
    _add_check_options(explain)
    explain.set_defaults(func=cmd_explain, takes_overrides=True)

    evaluate = sub.add_parser("evaluate", help="judge U-Noise against occlusion, gradient methods and null maps "
                              "(configs/evaluate.json); writes evaluation.json and report/",
                              epilog="Any other --key value overrides that config key, e.g. --split validation "
                                     "--slices-per-case 3 --infills \"['blur', 'floor']\" --held-out-infills \"['road']\" --shortcut true "
                                     "--sanity false, --sanity-dataset DIR (where the sanity check retrains); "
                                     "with a 3D utility --volume-protocol roi (one volume of interest per "
                                     "case instead of every whole volume).")
    evaluate.add_argument("--dataset", required=True, help="labelled cases: every one for a bundle or TorchScript utility; "
                          "for a utility trained here, the test part of the split it trained on (same seed and fractions)")
    _add_utility_options(evaluate)
    evaluate.add_argument("--noise", required=True, nargs="+", help="one or more noise-model checkpoints")
    evaluate.add_argument("--output", required=True, help="run folder for evaluation.json and report/")
    _add_check_options(evaluate, series=False)
    _add_on_error_option(evaluate, "a test case that cannot be read or fails a check: leave it out of the figures "
                                   "(listed, exit status 1), or stop; the cases the sanity check retrains on must pass")
    evaluate.set_defaults(func=cmd_evaluate, takes_overrides=True)

    denoise = sub.add_parser("denoise", help="write denoised CT volumes on the input grid with a train-denoiser checkpoint "
                             "(configs/denoise_inference.json); NIfTI, and DICOM for DICOM series with --output-format both")
    denoise.add_argument("--input", required=True, nargs="+",
                         help="NIfTI files, DICOM series folders, folders of images, MSD folders or datalists")
    denoise.add_argument("--denoiser", required=True, help="a train-denoiser checkpoint (RUN/checkpoints/last.pt)")
    denoise.add_argument("--output", required=True, help="folder for <case>_denoised.nii.gz (and <case>_denoised/ DICOM) "
                         "and manifest.json")
    denoise.add_argument("--output-format", dest="output_format", choices=["nifti", "both"], default="nifti",
                         help="nifti (default); both: also a DICOM CT series for each DICOM series input")
    denoise.add_argument("--overwrite", action="store_true", help="replace outputs already in --output")
    _add_check_options(denoise)
    denoise.set_defaults(func=cmd_denoise, takes_overrides=True)

    audit = sub.add_parser("audit-dose", help="how the utility, its U-Noise maps and a denoiser fare at simulated lower "
                           "dose (configs/audit_dose.json); writes dose_audit.json, denoise.json and report/dose.png",
                           epilog="Any other --key value overrides that config key, e.g. --doses \"[1, 0.5, 0.25, 0.125]\" "
                                  "--noise-models \"['projection']\" --split all --max-cases 4.")
    audit.add_argument("--dataset", required=True, help="labelled cases: for a utility trained here, the test part of its "
                       "split (same seed and fractions); --split all for a bundle or TorchScript utility")
    _add_utility_options(audit)
    audit.add_argument("--noise", default=None, help="a noise-model checkpoint: how its maps shift with dose")
    audit.add_argument("--denoiser", nargs="+", default=[], metavar="NAME=CHECKPOINT",
                       help="denoisers to score, e.g. n2n=RUN/checkpoints/last.pt n2c=... nes=...")
    audit.add_argument("--denoise-with", dest="denoise_with", default=None, metavar="NAME",
                       help="the denoiser put in front of the utility (default: n2n when given, else the first)")
    audit.add_argument("--output", required=True, help="run folder for dose_audit.json, denoise.json and report/")
    _add_check_options(audit, series=False)
    audit.set_defaults(func=cmd_audit_dose, takes_overrides=True)

    bench = sub.add_parser("benchmark", help="time training steps, explainers and the data path; writes benchmark.json",
                           epilog="Any other --key value overrides a train_noise.json key of the dice check's runs "
                                  "(e.g. the split of the utility's run: --val-fraction 0.15 --test-fraction 0.15).")
    bench.add_argument("--output", type=Path, default=Path("benchmark.json"), help="JSON to write (default benchmark.json)")
    bench.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    bench.add_argument("--table", default=None, metavar="JSON", help="only print the table of an existing benchmark.json")
    bench.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")
    bench.add_argument("--spatial-size", dest="spatial_size", type=int, default=256,
                       help="slice size in pixels (default 256)")
    bench.add_argument("--batch-size", dest="batch_size", type=int, default=8, help="default 8")
    bench.add_argument("--utility-preset", dest="utility_preset", default="paper",
                       help="utility network of the steps (default paper)")
    bench.add_argument("--noise-preset", dest="noise_preset", default="large",
                       help="noise model of the steps and the ratios (default large)")
    bench.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (default 3)")
    bench.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    bench.add_argument("--cases", type=int, default=4, help="phantom cases the bundle trainer uses (default 4)")
    bench.add_argument("--slices", type=int, default=16, help="slices per phantom case (default 16)")
    bench.add_argument("--utility", default=None, help="trained utility checkpoint for the dice check (with --dataset)")
    bench.add_argument("--dataset", default=None, help="the utility's dataset, for the dice check")
    bench.add_argument("--dice-epochs", dest="dice_epochs", type=int, default=9,
                       help="noise-training epochs per precision in the dice check (default 9, the demo's schedule)")
    bench.add_argument("--work-dir", dest="work_dir", type=Path, default=None,
                       help="keep the phantom set and the benchmark's runs here (default: a temporary folder)")
    bench.set_defaults(func=cmd_benchmark, takes_overrides=True)
    for command in sub.choices.values():  # "--target" must reach the config, not be read as --target-channel
        command.allow_abbrev = False
        # after the subcommand too (unoise train-utility --bundle-root DIR); absent there, the top-level value stands
        command.add_argument("--bundle-root", type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def hyphenate(argv: Sequence[str]) -> list[str]:
    """Option names in their one spelling: ``--output_format x`` -> ``--output-format x``, ``--noise_preset=small``
    -> ``--noise-preset=small`` (options and config overrides alike; values are left as they are)."""
    out = []
    for token in argv:
        if token.startswith("--") and len(token) > 2:
            key, sep, value = token[2:].partition("=")
            token = "--" + key.replace("_", "-") + sep + value
        out.append(token)
    return out


__all__ = ["build_parser", "hyphenate", "parse_overrides", "parse_value"]
