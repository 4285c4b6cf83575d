"""Checkpoint files: atomic writes, safe loads, clear errors for truncated or mismatched files.

A checkpoint is a plain dict loadable with ``torch.load(path, weights_only=True)``::

    {"model": state_dict, "meta": {"kind": "utility", "preset": "demo", "in_channels": 1, "out_channels": 1,
     "epoch": 3, "metric_name": "val_dice_3d", "metric": 0.91, "best_metric": 0.91, "best_epoch": 3},
     "optimizer": ..., "scheduler": ..., "trainer": ...}   # the last three only in resumable checkpoints

``meta["kind"]`` says what the network is: ``utility`` (the segmentation model, written by
``train-utility``) or ``noise`` (the U-Noise model, written by ``train-noise``); every command refuses the
wrong kind. Checkpoints written before the key existed are recognised by their other meta keys.
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import UNoiseError
from pipeline.fileio import atomic_path
from pipeline.networks import build_network, get_preset, network_name, preset_config

logger = logging.getLogger(__name__)


class CheckpointError(UNoiseError, ValueError):
    """A checkpoint is missing, truncated, or does not fit the network being built."""


CHECKPOINT_KINDS = {"utility": "the segmentation model, written by train-utility",
                    "noise": "the U-Noise model, written by train-noise",
                    "denoiser": "a CT denoiser, written by train-denoiser"}
# what a resume must not change
RESUME_KEYS = ("kind", "preset", "network_config", "in_channels", "out_channels", "utility_preset", "utility_target_channel")


def checkpoint_kind(meta: dict[str, Any]) -> str:
    """``utility``, ``noise`` or ``other``: ``meta["kind"]``, else inferred (noise checkpoints record a utility)."""
    if meta.get("kind"):
        return str(meta["kind"])
    if "utility_preset" in meta or "perturbation" in meta:
        return "noise"
    return "utility" if "preset" in meta else "other"


def check_kind(meta: dict[str, Any], path: str | os.PathLike, kind: str, role: str) -> None:
    """Refuse a checkpoint of another kind than ``role`` takes, naming both.

    Args:
        meta: the checkpoint's ``meta``.
        path: the file, named in the error.
        kind: the kind expected (``utility`` or ``noise``).
        role: the option it was given as (``--utility``, ``--noise``...).
    """
    found = checkpoint_kind(meta)
    if found != kind:
        what = CHECKPOINT_KINDS.get(found, "not written by a U-Noise run")
        raise CheckpointError(
            f"{path}: {role} takes a {kind} checkpoint ({CHECKPOINT_KINDS[kind]}) but this is a {found} checkpoint "
            f"({what}); pass the {kind} run's checkpoints/best.pt as {role}."
        )


def check_resume(meta: dict[str, Any], expected: dict[str, Any], path: str | os.PathLike) -> None:
    """Refuse a resume whose network or kind differs from the run's ``last.pt``, naming each difference."""
    recorded = {key: meta.get(key) for key in RESUME_KEYS}
    recorded["kind"] = checkpoint_kind(meta)
    wanted = {key: expected.get(key) for key in RESUME_KEYS}
    wanted["kind"] = checkpoint_kind(expected)
    differ = [f"{key} {recorded[key]!r} in the run, {wanted[key]!r} asked for" for key in RESUME_KEYS
              if wanted[key] is not None and recorded[key] is not None and recorded[key] != wanted[key]]
    if differ:
        raise CheckpointError(f"{path}: --resume would continue a different network ({'; '.join(differ)}); resume with "
                              "the run's own settings (see its config.json) or start a new run in another --output.")


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
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the checkpoint is empty (0 bytes); use the other checkpoint of the run "
                              "(best.pt / last.pt) or train again.")
    try:
        content = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError... for damaged files
        raise CheckpointError(f"{path}: cannot be loaded ({_load_reason(err)}); use the other checkpoint of the run "
                              "(best.pt / last.pt) or train again.") from err
    if not isinstance(content, dict) or "model" not in content:
        raise CheckpointError(f"{path}: not a U-Noise checkpoint (expected a dict with a 'model' state dict).")
    return content


def _load_reason(err: BaseException) -> str:
    """Why torch refused a file, without torch's advice to switch the weights-only protection off."""
    text = str(err)
    if isinstance(err, pickle.UnpicklingError) or "weights_only" in text or "Weights only" in text:
        return ("it holds Python objects beyond tensors and plain values, which are never unpickled here "
                "(weights-only load); it was not written by U-Noise")
    first = text.strip().splitlines()[0] if text.strip() else "no detail"
    return f"{type(err).__name__}: {first[:200]}; the file is truncated or not a PyTorch checkpoint"


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
    return load_state(network, load_checkpoint(path, map_location), path, preset, check_preset)


def load_state(network: torch.nn.Module, content: dict[str, Any], path: str | os.PathLike, preset: str,
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
    path: str | os.PathLike, map_location: str | torch.device = "cpu", kind: str | None = None, role: str | None = None,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Build the network a checkpoint records (``network_config``; older ones: preset, channels) and load its weights.

    Args:
        path: the checkpoint.
        map_location: device of the network.
        kind: refuse a checkpoint of another kind (``utility`` or ``noise``); None accepts any.
        role: the option the path came from, named in the error (default ``--<kind>``).

    Returns:
        ``(network, meta)``; the network is on ``map_location``.

    Raises:
        CheckpointError: unreadable file, wrong kind, no network record to build from, or the weights of a
            model-zoo bundle's network (those load only with that bundle, :func:`pipeline.networks.zoo.load_utility`).
    """
    content = load_checkpoint(path, map_location)
    meta = dict(content.get("meta", {}))
    if kind is not None:
        check_kind(meta, path, kind, role or f"--{kind}")
    if meta.get("bundle"):  # a bundle network's weights (the sanity check's randomised copy): built by pipeline.networks.zoo only
        raise CheckpointError(f"{path}: holds weights of the bundle {meta['bundle']}; a checkpoint never chooses code to "
                              "run: pass that bundle as --utility-bundle (utility_bundle) too.")
    if "network_config" not in meta and "preset" not in meta:
        raise CheckpointError(f"{path}: the checkpoint records no network (network_config or preset); it was not written "
                              "by a U-Noise run.")
    # the network record (any MONAI network); checkpoints older than the record name a preset of the factory
    config = meta.get("network_config") or _preset_record(meta, path)
    try:
        network = build_network(config)
    except UNoiseError as err:
        raise CheckpointError(f"{path}: its network cannot be built ({err})") from err
    except Exception as err:  # an allowed network class refusing its recorded args
        raise CheckpointError(f"{path}: its network cannot be built ({type(err).__name__}: {err})") from err
    load_state(network, content, path, network_name(config), check_preset=False)
    return network.to(map_location), meta


def load_denoiser(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """A denoiser checkpoint's network, in eval mode, and its meta (``hu_scale``: HU per unit of its input)."""
    network, meta = load_network_from_checkpoint(path, map_location, kind="denoiser", role="--denoiser")
    if not isinstance(meta.get("hu_scale"), (int, float)) or not meta["hu_scale"] > 0:
        raise CheckpointError(f"{path}: the denoiser checkpoint records no hu_scale (HU per unit of its input); "
                              "write it with unoise train-denoiser.")
    return network.eval(), meta


def _preset_record(meta: dict[str, Any], path: str | os.PathLike) -> dict:
    """The network record of an older checkpoint that names only its preset and channels."""
    try:
        return preset_config(str(meta["preset"]), int(meta.get("in_channels", 1)), int(meta.get("out_channels", 1)))
    except UNoiseError as err:
        raise CheckpointError(f"{path}: records an unknown network preset ({err})") from err


def reconcile_best(save_dir: str | os.PathLike) -> bool:
    """Make ``best.pt`` agree with ``last.pt`` before a resume.

    Checkpoints are written last first, then best (see :class:`pipeline.handlers.CheckpointHandler`).
    A crash between the two leaves ``last.pt`` recording a new best epoch that ``best.pt`` lacks; that
    epoch's weights are the ones in ``last.pt``, so ``best.pt`` is rewritten from them.

    Returns:
        True when ``best.pt`` was rewritten.
    """
    save_dir = Path(save_dir)
    last_path, best_path = save_dir / "last.pt", save_dir / "best.pt"
    if not last_path.is_file():
        return False
    last = load_checkpoint(last_path)
    meta = dict(last.get("meta", {}))
    best_epoch = meta.get("best_epoch")
    if not best_epoch or best_epoch != meta.get("epoch"):
        return False  # the best epoch is an older one, already in best.pt
    if best_path.is_file():
        try:
            if load_checkpoint(best_path).get("meta", {}).get("epoch") == best_epoch:
                return False
        except CheckpointError:
            pass  # damaged: rewrite it
    save_atomic({"model": last["model"], "meta": meta}, best_path)
    return True


def check_pair(utility_meta: dict[str, Any], noise_meta: dict[str, Any], utility_path: str | os.PathLike,
               noise_path: str | os.PathLike) -> None:
    """Refuse a noise model trained against another utility network than the one given.

    The noise model learnt what *its* utility tolerates; with another utility its map explains nothing.
    Only the recorded network preset can be compared (checkpoints do not store their utility's weights).

    Raises:
        CheckpointError: the noise checkpoint records a utility preset other than the utility's.
    """
    explained, asked_output = noise_meta.get("utility_output", "segmentation"), utility_meta.get("utility_output", "segmentation")
    if explained != asked_output:
        raise CheckpointError(f"{noise_path}: this noise model explains its utility's {explained}, not its {asked_output}; "
                              f"pass --utility-output {explained} or train a noise model for the {asked_output}.")
    trained_with, given = noise_meta.get("utility_preset"), utility_meta.get("preset")
    channel, asked = noise_meta.get("utility_target_channel"), utility_meta.get("target_channel")
    if channel is not None and asked is not None and channel != asked:
        raise CheckpointError(f"{noise_path}: this noise model explains output channel {channel} of its utility, not "
                              f"{asked}; pass --target-channel {channel} or train a noise model for channel {asked}.")
    if trained_with is not None and given is not None and trained_with != given:
        raise CheckpointError(
            f"{noise_path}: this noise model was trained against a '{trained_with}' utility but --utility "
            f"{utility_path} is a '{given}' network; pass the utility it was trained against "
            f"(recorded in its meta: {noise_meta.get('utility_checkpoint', 'unknown')})."
        )


def init_noise_from(
    noise_net: torch.nn.Module, checkpoint: str | os.PathLike | None, noise_preset: str, device: torch.device
) -> torch.nn.Module:
    """The "pretrained" variant: start the noise model from a segmentation checkpoint of the same shape.

    Args:
        noise_net: the freshly built noise model.
        checkpoint: a utility checkpoint whose network has the noise preset's shape (e.g. a ``demo`` or
            ``large`` utility for a ``large`` noise model); None leaves the random initialisation.
        noise_preset: the noise model's preset, named in errors.
        device: where the weights are loaded.

    Raises:
        CheckpointError: unreadable checkpoint, or weights of another shape.
    """
    if checkpoint is None:
        return noise_net
    meta = load_network_weights(noise_net, checkpoint, noise_preset, device, check_preset=False)
    logger.info("noise model initialised from %s (a '%s' network)", checkpoint, meta.get("preset", "unknown"))
    return noise_net


def checkpoint_spatial_dims(path: str | os.PathLike) -> int:
    """The dimensionality a checkpoint's meta records (2 when absent, as in checkpoints from before 3D)."""
    return int(dict(load_checkpoint(path).get("meta", {})).get("spatial_dims", 2))


def check_spatial_dims(meta: dict[str, Any], spatial_dims: int, path: str | os.PathLike | None, role: str = "--utility") -> None:
    """Refuse a network of the other dimensionality (a 3D utility in a 2D run, or the reverse), naming the fix.

    ``meta["spatial_dims"]`` is absent from 2D checkpoints and bundles (2D until issue 13).
    """
    recorded = int(meta.get("spatial_dims", 2))
    if recorded != int(spatial_dims):
        fix = ("run the 3D configs (unoise --spatial-dims 3; configs/train_noise_3d.json or inference_3d.json layered last)"
               if recorded == 3 else "run the 2D configs (without --spatial-dims 3 and the *_3d.json overlay)")
        raise CheckpointError(f"{path} ({role}): holds a {recorded}D network and this run is {int(spatial_dims)}D; {fix}.")
