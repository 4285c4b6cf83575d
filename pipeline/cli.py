"""The ``unoise`` command (also ``python -m pipeline``).

Data subcommands run here directly; the training and inference subcommands run the bundle configs in
``bundles/pancreas_ct_unoise/configs`` with ``--key value`` overrides, as ``python -m monai.bundle run``
does. Problems with the user's input print one line (``error: ...``) and exit with status 2; pass
``--traceback`` to see the full stack.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from pipeline.errors import UNoiseError

logger = logging.getLogger("pipeline")


def parse_value(text: str) -> Any:
    """A command-line value as Python: ``2`` -> 2, ``"[7]"`` -> [7], ``null``/``true`` -> None/True, else the text."""
    lowered = {"null": None, "none": None, "true": True, "false": False}
    if text.lower() in lowered:
        return lowered[text.lower()]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pancreas_labels", "--pancreas-labels", type=parse_value, default=[1, 2],
                        help='label values that mean pancreas, merged into one class (default "[1, 2]": MSD)')
    parser.add_argument("--label_values", "--label-values", type=parse_value, default=None,
                        help='all values a label may hold (default: 0 plus pancreas_labels; "any": no check)')
    parser.add_argument("--key", default="training", help="datalist key to read (training, validation, test)")


def _cmd_phantom(args: argparse.Namespace) -> int:
    from pipeline.phantom import write_phantom_dataset

    path = write_phantom_dataset(args.out, cases=args.cases, size=args.size, slices=args.slices, seed=args.seed,
                                 test_cases=args.test_cases)
    print(f"wrote {args.cases} training + {args.test_cases} test phantom cases: {path}")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from pipeline.data import load_datalist, validate_datalist

    datalist = load_datalist(args.dataset, key=args.key)
    summary = validate_datalist(datalist, pancreas_labels=args.pancreas_labels, label_values=args.label_values)
    if args.json:
        print(json.dumps(summary.as_dict(), indent=2))
    else:
        print(f"dataset: {args.dataset} ({args.key}) - valid")
        print(summary.format())
    return 0


def _cmd_split(args: argparse.Namespace) -> int:
    from pipeline.data import load_datalist, split_datalist, write_datalist

    splits = split_datalist(load_datalist(args.dataset, key=args.key), args.val, args.test, args.seed)
    path = write_datalist(splits, args.output)
    print(f"{path}: " + ", ".join(f"{name} {len(cases)}" for name, cases in splits.items()) + " cases (split by patient)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unoise", description=__doc__.split("\n\n")[0])
    parser.add_argument("--traceback", action="store_true", help="show the full stack on errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    phantom = sub.add_parser("phantom", help="write synthetic abdominal CT phantoms in the MSD Task07 layout")
    phantom.add_argument("--out", required=True, help="output folder (dataset.json, imagesTr/, labelsTr/, imagesTs/)")
    phantom.add_argument("--cases", type=int, default=24, help="training cases with labels (default 24)")
    phantom.add_argument("--size", type=int, default=128, help="in-plane size in pixels (default 128)")
    phantom.add_argument("--slices", type=int, default=48, help="axial slices per volume (default 48)")
    phantom.add_argument("--seed", type=int, default=0, help="same seed, same volumes (default 0)")
    phantom.add_argument("--test-cases", "--test_cases", type=int, default=0, dest="test_cases",
                         help="extra unlabelled cases in imagesTs/ (default 0)")
    phantom.set_defaults(func=_cmd_phantom)

    inspect = sub.add_parser("inspect", help="validate a dataset and print its summary")
    inspect.add_argument("--dataset", required=True, help="MSD folder, datalist JSON or folder of images")
    _add_data_options(inspect)
    inspect.add_argument("--json", action="store_true", help="print the summary as JSON")
    inspect.set_defaults(func=_cmd_inspect)

    split = sub.add_parser("split", help="split a dataset by patient into training/validation/test datalist JSON")
    split.add_argument("--dataset", required=True, help="MSD folder, datalist JSON or folder of images")
    split.add_argument("--output", required=True, help="datalist JSON to write")
    split.add_argument("--val", type=float, default=0.1, help="validation share of patients (default 0.1)")
    split.add_argument("--test", type=float, default=0.1, help="test share of patients (default 0.1)")
    split.add_argument("--seed", type=int, default=0)
    split.add_argument("--key", default="training", help="datalist key to split (default training)")
    split.set_defaults(func=_cmd_split)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``unoise``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return int(args.func(args) or 0)
    except (UNoiseError, ValueError, FileNotFoundError) as err:
        if args.traceback:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
