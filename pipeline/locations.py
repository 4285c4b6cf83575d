"""Where the shipped bundle lives: its root and the config every run is layered on (``common.json``)."""

from __future__ import annotations

import os
from pathlib import Path

COMMON_CONFIG = "common.json"  # layered under every run config: the preprocessing chain


def default_bundle_root() -> Path:
    """The bundle shipped with this checkout (``$UNOISE_BUNDLE`` overrides it)."""
    return Path(os.environ.get("UNOISE_BUNDLE", Path(__file__).resolve().parent.parent / "bundles" / "pancreas_ct_unoise"))


__all__ = ["COMMON_CONFIG", "default_bundle_root"]
