"""The ``unoise`` command (also ``python -m pipeline``).

Data subcommands run here directly; the training and inference subcommands run the bundle configs in
``bundles/pancreas_ct_unoise/configs`` with ``--key value`` overrides, as ``python -m monai.bundle run``
does. Problems with the user's input (our own :class:`~pipeline.errors.UNoiseError`) print one line
(``error: ...``) and exit with status 2; pass ``--traceback`` to see the full stack. Any other exception
is a bug and shows its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pipeline.errors import user_error
from pipeline.cli.parser import build_parser, hyphenate, parse_overrides, parse_value


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``unoise``; returns the exit status."""
    from pipeline.console import configure_console

    parser = build_parser()
    args, extra = parser.parse_known_args(hyphenate(sys.argv[1:] if argv is None else argv))
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


__all__ = ["build_parser", "main", "parse_overrides", "parse_value"]


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
