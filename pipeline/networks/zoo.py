"""A MONAI model-zoo bundle as the utility: its own network, weights, classes and intensity window.

A bundle folder holds ``configs/metadata.json``, ``configs/inference.json`` (or ``.yaml``) with a
``network_def``, optionally ``scripts/`` (importable as the bundle's own code) and ``models/model.pt``
(a state dict, or ``{"model": state_dict}``; a bundle with only ``models/model.ts`` runs that TorchScript
network). This module builds the network on our device, loads the weights with ``weights_only=True``, picks the
explained class from ``target_channel`` or a name in the metadata's ``channel_def``, and records the HU window
of the bundle's ``ScaleIntensityRanged`` (when it has one) as a description.

The bundle's own ``preprocessing`` and ``inferer`` run through :mod:`pipeline.networks.zoo_chain` (the configs'
``preprocessing`` and explain's ``inferer`` take them when ``utility_bundle`` is set). A 3D bundle (a 3-long
``spatial_shape``) gives ``spatial_dims`` 3 and its patch size (the inferer's ``roi_size``); ``unoise`` then takes
the 3D configs.
"""
from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pipeline.networks.checkpoints import CheckpointError, check_kind, load_checkpoint, load_network_from_checkpoint, load_state
from pipeline.errors import ConfigError
from pipeline.networks.probabilistic import UTILITY_OUTPUTS, as_sampler, utility_view
from pipeline.networks.utility import TargetLogit
from pipeline.networks.zoo_chain import WindowedNetwork, bundle_config_file, bundle_parser, find_bundle_file, slice_window_inferer


def _transforms(config: Any) -> list[dict[str, Any]]:
    """Every dict with a ``_target_`` inside a raw config, depth first."""
    found: list[dict[str, Any]] = []
    if isinstance(config, dict):
        if "_target_" in config:
            found.append(config)
        for value in config.values():
            found += _transforms(value)
    elif isinstance(config, list):
        for value in config:
            found += _transforms(value)
    return found


def read_window(preprocessing: Any, source: Path) -> tuple[float, float] | None:
    """The HU window ``(a_min, a_max)`` of the bundle's ``ScaleIntensityRanged``, None without one (a
    ``NormalizeIntensityd`` bundle): a description of the bundle's own chain, which runs as it is.

    Raises:
        ConfigError: references instead of numbers.
    """
    for item in _transforms(preprocessing):
        if str(item["_target_"]).rsplit(".", 1)[-1] in ("ScaleIntensityRanged", "ScaleIntensityRange"):
            try:
                lower, upper = float(item["a_min"]), float(item["a_max"])
                float(item.get("b_min", 0.0)), float(item.get("b_max", 1.0))
            except (KeyError, TypeError, ValueError) as err:
                raise ConfigError(f"{source}: preprocessing's ScaleIntensityRanged needs numeric a_min/a_max/b_min/b_max "
                                  f"({err}); write them as numbers.") from err
            return lower, upper
    return None


def _channel(metadata: dict[str, Any], target_channel: int | str | None, source: Path) -> int:
    outputs = metadata.get("network_data_format", {}).get("outputs", {})
    channel_def = next(iter(outputs.values()), {}).get("channel_def", {}) if outputs else {}
    channels = int(next(iter(outputs.values()), {}).get("num_channels", 0) or 0) if outputs else 0
    if target_channel is None:
        if len(channel_def) > 1:  # the first class that is not the background
            names = {str(k): str(v).lower() for k, v in channel_def.items()}
            return int(next(k for k, v in sorted(names.items()) if v != "background"))
        if channels > 1:
            raise ConfigError(f"{source}: the network outputs {channels} channels and no channel_def names them; pass "
                              "--target-channel N.")
        return 0
    if isinstance(target_channel, int) or str(target_channel).isdigit():
        if channels and int(target_channel) >= channels:
            raise ConfigError(f"{source}: target_channel {target_channel} does not exist: the network outputs {channels} channel(s).")
        return int(target_channel)
    for key, name in channel_def.items():
        if str(name).lower() == str(target_channel).lower():
            return int(key)
    raise ConfigError(f"{source}: no class {target_channel!r} in channel_def {channel_def}; pass --target-channel N or a "
                      "name listed there.")


def _image_format(metadata: dict[str, Any]) -> dict[str, Any]:
    """The metadata's description of the network's input image (``network_data_format.inputs.image``)."""
    return metadata.get("network_data_format", {}).get("inputs", {}).get("image", {})


def bundle_spatial_dims(bundle_dir: str | os.PathLike) -> int:
    """3 for a bundle whose metadata gives its input image a 3-long ``spatial_shape``, else 2 (also when the
    metadata cannot be read: :func:`load_bundle_utility` then refuses it naming the file)."""
    try:
        metadata = json.loads((Path(bundle_dir).expanduser() / "configs" / "metadata.json").read_text())
        shape = _image_format(metadata).get("spatial_shape")
    except (OSError, ValueError, AttributeError):
        return 2
    return 3 if isinstance(shape, (list, tuple)) and len(shape) == 3 else 2


def load_bundle_utility(
    bundle_dir: str | os.PathLike,
    device: torch.device | str = "cpu",
    target_channel: int | str | None = None,
    weights: bool = True,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Build a model-zoo bundle's network as a one-logit utility (:class:`pipeline.networks.utility.TargetLogit`).

    Args:
        bundle_dir: the bundle folder.
        device: where the network is built.
        target_channel: the explained class: an index, or a name from ``channel_def``; default the first
            class that is not the background (or channel 0).
        weights: load ``models/model.pt``; False leaves the initialisation (the sanity check loads its own).

    Returns:
        ``(utility, meta)`` with meta ``kind``, ``preset`` (``bundle:<name>``), ``in_channels``,
        ``out_channels`` (1), ``window``, ``bundle`` and ``target_channel``, as a utility checkpoint's.

    Raises:
        ConfigError: a missing file or key, a 3D network without a patch size, an unbuildable network, unreadable weights; the message
            names the file.
    """
    root = Path(bundle_dir).expanduser().resolve()
    if not root.is_dir():
        raise ConfigError(f"{root}: no such bundle folder; pass a model-zoo bundle (configs/, models/).")
    meta_file = find_bundle_file(root, ("metadata.json",), "configs/metadata.json")
    config_file = bundle_config_file(root)
    try:
        metadata = json.loads(meta_file.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{meta_file}: not readable JSON ({err}).") from err
    parser = bundle_parser(root, device)
    if "network_def" not in parser.get():
        raise ConfigError(f"{config_file}: has no network_def; a bundle names its network there.")
    image_format = _image_format(metadata)
    roi_size = _roi_size(image_format.get("spatial_shape"), parser, meta_file, config_file)
    try:
        network = parser.get_parsed_content("network_def", instantiate=True)
    except Exception as err:  # a bundle's own code may raise anything while building
        raise ConfigError(f"{config_file}: network_def cannot be built ({type(err).__name__}: {str(err).splitlines()[0][:200]}).") from err
    if weights:
        network = _load_weights(root, network, device)
    in_channels = int(image_format.get("num_channels", 1))
    channel = _channel(metadata, target_channel, meta_file)
    window = read_window(parser.get("preprocessing", {}), config_file)
    windows = None if roi_size else slice_window_inferer(parser, config_file)
    if windows is not None:  # a 2D network the bundle runs window by window: so does every use of it here
        network = WindowedNetwork(network, windows)
    utility = TargetLogit(network, channel).to(device)
    meta = {"kind": "utility", "preset": f"bundle:{metadata.get('name', root.name)}", "in_channels": in_channels,
            "out_channels": 1, "window": list(window) if window else None, "spatial_size": None, "bundle": str(root),
            "target_channel": channel, "version": metadata.get("version"), "spatial_dims": 3 if roi_size else 2,
            **({"roi_size": roi_size} if roi_size else {}),
            **({"slice_roi": [int(v) for v in windows.roi_size]} if windows is not None else {})}
    if isinstance(network, torch.jit.ScriptModule):
        meta["torchscript"] = str(root / "models" / "model.ts")
    return utility, meta


def _roi_size(spatial_shape: Any, parser: Any, meta_file: Path, config_file: Path) -> list[int] | None:
    """A 3D bundle's patch size: its inferer's ``roi_size`` (what its own sliding window uses), else the metadata's
    numeric ``spatial_shape``; None for a 2D bundle."""
    if not isinstance(spatial_shape, (list, tuple)) or len(spatial_shape) != 3:
        return None
    inferer = parser.get("inferer", {})
    roi = inferer.get("roi_size") if isinstance(inferer, dict) else None
    for candidate, source in ((roi, config_file), (spatial_shape, meta_file)):
        if isinstance(candidate, (list, tuple)) and len(candidate) == 3 and all(isinstance(v, int) and v > 0 for v in candidate):
            return [int(v) for v in candidate]
    raise ConfigError(f"{meta_file}: a 3D network (spatial_shape {list(spatial_shape)}) with no numeric patch size in its "
                      f"inferer's roi_size ({config_file.name}) or spatial_shape; write the patch size there, e.g. [96, 96, 96].")


def _load_weights(root: Path, network: torch.nn.Module, device: torch.device | str) -> torch.nn.Module:
    model_pt, model_ts = root / "models" / "model.pt", root / "models" / "model.ts"
    if model_pt.is_file():
        try:
            content = torch.load(model_pt, map_location=device, weights_only=True)
        except Exception as err:
            raise ConfigError(f"{model_pt}: cannot be loaded with weights_only=True ({type(err).__name__}); the bundle's "
                              "weights must be a state dict (tensors only).") from err
        state = content.get("model", content) if isinstance(content, dict) else content
        try:
            network.load_state_dict(state)
        except (RuntimeError, TypeError) as err:
            raise ConfigError(f"{model_pt}: weights do not fit the bundle's network_def ({str(err).splitlines()[0][:200]}).") from err
        return network
    if model_ts.is_file():  # the TorchScript export alone: it is the network (no Grad-CAM, no sanity check)
        return load_torchscript_utility(model_ts, device)[0].network
    raise ConfigError(f"{root}/models: no model.pt; the bundle ships no weights (download them first).")


def load_utility(
    checkpoint: str | os.PathLike | None,
    device: torch.device | str = "cpu",
    bundle: str | os.PathLike | None = None,
    target_channel: int | str | None = None,
    output: str = "segmentation",
    samples: int = 16,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The utility of a command: a model-zoo ``bundle`` when given, else our utility ``checkpoint``.

    With both, and a checkpoint holding that bundle network's weights, the bundle's network gets them. ``output``
    ``uncertainty`` gives a Probabilistic U-Net's predictive uncertainty (``samples`` draws) instead of its segmentation
    (:func:`pipeline.networks.utility_view`); the meta records it as ``utility_output``.
    """
    if output not in UTILITY_OUTPUTS:
        raise ConfigError(f"utility_output must be one of {list(UTILITY_OUTPUTS)}, got {output!r}.")
    network, meta = _load_utility(checkpoint, device, bundle, target_channel)
    if output == "uncertainty":
        if as_sampler(network) is None:
            raise ConfigError(f"{bundle or checkpoint}: --utility-output uncertainty needs a Probabilistic U-Net utility "
                              "(unoise train-utility --kind probabilistic); this utility gives one segmentation.")
        network = utility_view(network, output, samples).to(device)
    return network, {**meta, "utility_output": output}


def _load_utility(checkpoint: str | os.PathLike | None, device: torch.device | str, bundle: str | os.PathLike | None,
                  target_channel: int | str | None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """:func:`load_utility` before the view."""
    if bundle and checkpoint and Path(checkpoint).is_file():
        content = load_checkpoint(checkpoint, device)
        meta = dict(content.get("meta", {}))
        if meta.get("bundle"):  # the bundle's network with this checkpoint's weights (the sanity check's randomised utility)
            check_kind(meta, checkpoint, "utility", "--utility")
            if Path(str(bundle)).expanduser().resolve() != Path(str(meta["bundle"])).resolve():
                raise CheckpointError(f"{checkpoint}: holds weights of the bundle {meta['bundle']}, not of {bundle}; pass "
                                      "that bundle as --utility-bundle (a checkpoint never chooses code to run).")
            network, _ = load_bundle_utility(bundle, device, meta.get("target_channel"), weights=False)
            load_state(network, content, checkpoint, str(meta.get("preset")), check_preset=False)
            return network.to(device), meta
    if bundle:
        return load_bundle_utility(bundle, device, target_channel)
    if checkpoint is None:
        raise ConfigError("no utility: pass --utility CHECKPOINT, --utility-bundle DIR or --utility-torchscript FILE.")
    if is_torchscript(checkpoint):
        return load_torchscript_utility(checkpoint, device, target_channel)
    return load_network_from_checkpoint(checkpoint, device, kind="utility", role="--utility")


def is_torchscript(path: str | os.PathLike) -> bool:
    """True for a TorchScript archive (``torch.jit.save``: a zip with ``code/`` and ``constants.pkl``)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return any(name.endswith("/constants.pkl") for name in names) and any("/code/" in name for name in names)


def load_torchscript_utility(path: str | os.PathLike, device: torch.device | str = "cpu",
                             target_channel: int | str | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A TorchScript segmentation network (``torch.jit.save``) as a one-logit utility.

    TorchScript holds no preprocessing: the configs' ``window`` and ``spatial_size`` (our JSON chain)
    say what the model sees. It has no Python module tree either, so Grad-CAM and the sanity check
    (which hook and re-initialise named modules) are refused for it; occlusion, saliency, SmoothGrad and
    the null maps work. TorchScript is code: load files you trust.

    Returns:
        ``(utility, meta)`` with meta ``kind``, ``preset`` (``torchscript:<name>``), ``in_channels`` (1),
        ``out_channels`` (1), ``torchscript`` and ``target_channel`` (None: see :class:`TargetLogit`).
    """
    path = Path(path).expanduser().resolve()
    if isinstance(target_channel, str):
        raise ConfigError(f"{path}: a TorchScript file has no channel_def to look the class {target_channel!r} up in; "
                          "pass --target-channel as an index.")
    try:
        network = torch.jit.load(str(path), map_location=device)
    except Exception as err:  # torch raises RuntimeError or its own types for damaged archives
        raise ConfigError(f"{path}: not a loadable TorchScript file ({type(err).__name__}: "
                          f"{str(err).splitlines()[0][:200] if str(err) else ''}); save it with torch.jit.save.") from err
    utility = TargetLogit(network.eval(), None if target_channel is None else int(target_channel)).to(device)
    meta = {"kind": "utility", "preset": f"torchscript:{path.stem}", "in_channels": 1, "out_channels": 1,
            "torchscript": str(path), "target_channel": None if target_channel is None else int(target_channel)}
    return utility, meta


def check_explainable(utility_meta: dict[str, Any], baselines: Sequence[str], sanity: bool, source: str) -> None:
    """Refuse Grad-CAM and the sanity check for a TorchScript utility (no named modules to hook or re-initialise)."""
    if not utility_meta.get("torchscript"):
        return
    wanted = [name for name, asked in (("gradcam", "gradcam" in baselines), ("the sanity check", sanity)) if asked]
    if wanted:
        raise ConfigError(f"{source}: a TorchScript utility has no Python module tree, which {' and '.join(wanted)} need; "
                          "drop gradcam from --baselines and pass --sanity false, or give the network as a checkpoint or bundle.")


__all__ = ["bundle_spatial_dims", "check_explainable", "is_torchscript", "load_bundle_utility",
           "load_torchscript_utility", "load_utility", "read_window"]
