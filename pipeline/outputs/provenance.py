"""Provenance of a run's outputs: which tool, libraries, device and checkpoints made them.

``run_provenance`` is the per-run part of ``OUTPUT_DIR/manifest.json``; ``short_provenance`` the few words a
NIfTI header's ``descrip`` (80 bytes) can hold. Checkpoints are named by their SHA-256, so a map can be traced
to the exact weights that made it even after files are renamed or moved.
"""

from __future__ import annotations

import hashlib
import os
import platform
from collections.abc import Iterable
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

TOOL = "unoise-pipeline"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in ``chunk`` pieces (checkpoints can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def tool_version() -> str:
    try:
        return metadata.version(TOOL)
    except metadata.PackageNotFoundError:  # a source tree that is not installed
        return "unknown"


def run_provenance(checkpoints: dict[str, str | os.PathLike | None], device: Any, config: dict[str, Any] | None = None,
                   extra_files: Iterable[str | os.PathLike] = ()) -> dict[str, Any]:
    """Tool and library versions, the device, the resolved settings, and each checkpoint's path and SHA-256.

    Args:
        checkpoints: role -> file (``None`` entries are left out), e.g. ``{"utility": ..., "noise": ...}``.
        device: the torch device the run used.
        config: the run's resolved settings (JSON-ready).
        extra_files: other files the outputs depend on (a bundle's weights), hashed the same way.
    """
    import monai

    files = {role: str(path) for role, path in checkpoints.items() if path is not None and Path(path).is_file()}
    files.update({str(path): str(path) for path in extra_files if Path(path).is_file()})
    return {
        "tool": TOOL, "tool_version": tool_version(), "torch": torch.__version__, "monai": monai.__version__,
        "python": platform.python_version(), "device": str(device),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "checkpoints": {role: {"path": path, "sha256": sha256_file(path)} for role, path in files.items()},
        "config": config or {},
    }


def short_provenance(provenance: dict[str, Any], limit: int = 80) -> str:
    """``unoise <version> u:<sha8> n:<sha8>``: what fits a NIfTI ``descrip`` (80 bytes)."""
    hashes = " ".join(f"{role[0]}:{entry['sha256'][:8]}" for role, entry in provenance.get("checkpoints", {}).items()
                      if role in ("utility", "noise"))
    return f"unoise {provenance.get('tool_version', '?')} {hashes}".strip()[:limit]


__all__ = ["TOOL", "run_provenance", "sha256_file", "short_provenance", "tool_version"]
