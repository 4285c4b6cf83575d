"""Checkpoint files: atomic writes, safe loads, clear errors for truncated or mismatched files.

A checkpoint is a plain dict loadable with ``torch.load(path, weights_only=True)``::

    {"model": state_dict, "meta": {"preset": "demo", "in_channels": 1, "out_channels": 1, "epoch": 3,
     "metric_name": "val_dice_3d", "metric": 0.91, "best_metric": 0.91, "best_epoch": 3},
     "optimizer": ..., "scheduler": ..., "trainer": ...}   # the last three only in resumable checkpoints
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import UNoiseError
from pipeline.fileio import atomic_path
from pipeline.networks import get_preset


class CheckpointError(UNoiseError, ValueError):
    """A checkpoint is missing, truncated, or does not fit the network being built."""


def save_atomic(content: dict[str, Any], path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file beside ``path``, fsync, then rename over it.

    A crash mid-write leaves the previous file intact and no partial file under the final name.
    """
    with atomic_path(path) as tmp:
        torch.save(content, tmp)
    return Path(path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict with ``weights_only=True``.

    Raises:
        CheckpointError: missing file, truncated/corrupt file, or not one of our checkpoint dicts.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; check the path (runs write RUN_DIR/checkpoints/best.pt and last.pt).")
    try:
        content = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError... for damaged files
        raise CheckpointError(
            f"{path}: cannot be loaded ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no detail'}); "
            "the file is truncated or not a PyTorch checkpoint: use the other checkpoint of the run "
            "(best.pt / last.pt) or train again."
        ) from err
    if not isinstance(content, dict) or "model" not in content:
        raise CheckpointError(f"{path}: not a U-Noise checkpoint (expected a dict with a 'model' state dict).")
    return content


def load_network_weights(
    network: torch.nn.Module, path: str | os.PathLike, preset: str, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load a checkpoint's weights into ``network`` built from ``preset``.

    Returns:
        The checkpoint's ``meta`` dict.

    Raises:
        CheckpointError: the file cannot be read, or its weights belong to another architecture; the
            message names the preset the checkpoint was trained with and the one expected.
    """
    content = load_checkpoint(path, map_location)
    meta = dict(content.get("meta", {}))
    trained = meta.get("preset")
    if trained is not None and trained != preset:
        get_preset(preset)
        raise CheckpointError(
            f"{path}: checkpoint holds a '{trained}' network but preset '{preset}' was expected; "
            f"pass --preset {trained} (or the checkpoint of a '{preset}' model)."
        )
    try:
        network.load_state_dict(content["model"])
    except RuntimeError as err:
        raise CheckpointError(
            f"{path}: weights do not fit the '{preset}' network (trained as {trained or 'unknown preset'}, "
            f"in/out channels {meta.get('in_channels', '?')}/{meta.get('out_channels', '?')}): "
            f"{str(err).splitlines()[0]}; build the network the checkpoint was trained with."
        ) from err
    return meta
