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
from pipeline.networks import build_unet, get_preset


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
    network: torch.nn.Module,
    path: str | os.PathLike,
    preset: str,
    map_location: str | torch.device = "cpu",
    check_preset: bool = True,
) -> dict[str, Any]:
    """Load a checkpoint's weights into ``network`` built from ``preset``.

    Args:
        network: the freshly built network.
        path: checkpoint file.
        preset: the preset ``network`` was built from (named in errors).
        map_location: where tensors are loaded.
        check_preset: refuse a checkpoint recorded under another preset name; False compares only the
            weights' shapes (a ``demo`` utility may initialise a ``large`` noise model of the same shape).

    Returns:
        The checkpoint's ``meta`` dict.

    Raises:
        CheckpointError: the file cannot be read, or its weights belong to another architecture; the
            message names the preset the checkpoint was trained with and the one expected.
    """
    return _load_state(network, load_checkpoint(path, map_location), path, preset, check_preset)


def _load_state(network: torch.nn.Module, content: dict[str, Any], path: str | os.PathLike, preset: str,
                check_preset: bool) -> dict[str, Any]:
    meta = dict(content.get("meta", {}))
    trained = meta.get("preset")
    if check_preset and trained is not None and trained != preset:
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
            f"{' '.join(line.strip() for line in str(err).splitlines()[:2])[:300]}; use a checkpoint of a '{preset}'-shaped network "
            f"(`unoise presets` lists the shapes) or build the network it was trained with."
        ) from err
    return meta


def load_network_from_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Build the network a checkpoint records (preset, channels) and load its weights.

    Returns:
        ``(network, meta)``; the network is on ``map_location``.

    Raises:
        CheckpointError: unreadable file, or no ``meta["preset"]`` to build from.
    """
    content = load_checkpoint(path, map_location)
    meta = dict(content.get("meta", {}))
    if "preset" not in meta:
        raise CheckpointError(f"{path}: the checkpoint records no network preset; it was not written by a U-Noise run.")
    network = build_unet(meta["preset"], in_channels=int(meta.get("in_channels", 1)),
                         out_channels=int(meta.get("out_channels", 1)))
    _load_state(network, content, path, meta["preset"], check_preset=True)
    return network.to(map_location), meta
