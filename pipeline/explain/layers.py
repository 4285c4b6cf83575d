"""Find the layers explainers need from the module tree, for any 2D segmentation network.

Grad-CAM reads the deepest feature map; the sanity check's "decoder" stage re-initialises what runs after
it. Neither is a module name this project chose: both are found by running the network once on a blank
slice and watching, with forward hooks, which module outputs the smallest feature map and which run
after it. ``LevelUNet`` gives ``downs.<last>`` and every ``ups.N`` with ``final_conv``; MONAI's ``BasicUNet``,
``SegResNet``, ``AttentionUnet`` and ``UNet`` get their own bottleneck and decoder the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pipeline.errors import ConfigError

TRACE_SIZE = 64  # H = W of the blank slice: divisible by 2**4, small enough to run in milliseconds
TRACE_SIZE_3D = 32  # the blank volume's side: divisible by 2**4, small enough for a CPU


def trace_modules(network: torch.nn.Module, in_channels: int, size: int | None = None,
                  spatial_dims: int = 2) -> list[tuple[str, int]]:
    """Named modules in the order their forward finishes, each with the area (H x W; X x Y x Z in 3D) of its output.

    Args:
        network: a 2D network taking (B, in_channels, H, W), or with ``spatial_dims`` 3 a 3D one.
        in_channels: its input channels.
        size: side of the blank slice (volume) it is run on (default 64 in 2D, 32 in 3D).
        spatial_dims: 2 or 3.

    Returns:
        ``[(name, area), ...]`` for every module whose output is a (B, C, H, W) tensor larger than one pixel
        (global and squeeze-and-excitation pools are left out), the root too.
    """
    finished: list[tuple[str, int]] = []
    hooks = []
    for name, module in network.named_modules():
        if not name:
            continue

        def record(_module: torch.nn.Module, _inputs: object, output: object, name: str = name) -> None:
            if isinstance(output, torch.Tensor) and output.ndim == 2 + spatial_dims and min(output.shape[2:]) > 1:
                finished.append((name, int(torch.tensor(output.shape[2:]).prod())))  # 1-pixel maps (pools) are no feature map

        hooks.append(module.register_forward_hook(record))
    device = next((p.device for p in network.parameters()), torch.device("cpu"))
    was_training = network.training
    try:
        network.eval()
        with torch.no_grad():
            side = size or (TRACE_SIZE if spatial_dims == 2 else TRACE_SIZE_3D)
            network(torch.zeros(1, in_channels, *([side] * spatial_dims), device=device))
    finally:
        for hook in hooks:
            hook.remove()
        network.train(was_training)
    return finished


def find_feature_layer(network: torch.nn.Module, in_channels: int = 1, spatial_dims: int = 2) -> str:
    """The module that outputs the deepest feature map: Grad-CAM's default layer.

    The modules that output the smallest map, from the first one until a larger map appears again, make
    the bottleneck; the outermost of them (the fewest dots in its name, the first of those) is the layer:
    the encoder's last block, not a decoder convolution that still runs at that size.

    Raises:
        ConfigError: the network outputs no 4D feature map (not a 2D network).
    """
    finished = trace_modules(network, in_channels, spatial_dims=spatial_dims)
    if not finished:
        raise ConfigError(f"{type(network).__name__}: no module outputs a {spatial_dims}D feature map; is it a "
                          f"{spatial_dims}D network? (set gradcam_layer to a module name).")
    smallest = min(area for _, area in finished)
    start = next(i for i, (_, area) in enumerate(finished) if area == smallest)
    end = start
    while end + 1 < len(finished) and finished[end + 1][1] <= smallest:
        end += 1
    run = [name for name, _ in finished[start:end + 1]]
    shallowest = min(name.count(".") for name in run)
    return [name for name in run if name.count(".") == shallowest][0]


def find_decoder_prefixes(network: torch.nn.Module, in_channels: int = 1, feature_layer: str | None = None,
                          spatial_dims: int = 2) -> tuple[str, ...]:
    """The top-level modules that run after the deepest feature map: the sanity check's "decoder" stage.

    Returns:
        Module names (prefixes for :func:`pipeline.evaluation.sanity.randomise_layers`), outermost only,
        holding parameters.

    Raises:
        ConfigError: nothing with parameters runs after the feature layer.
    """
    finished = trace_modules(network, in_channels, spatial_dims=spatial_dims)
    layer = feature_layer or find_feature_layer(network, in_channels, spatial_dims)
    names = [name for name, _ in finished]
    if layer not in names:
        raise ConfigError(f"{layer!r} is not a module of {type(network).__name__} that outputs a feature map.")
    after = names[len(names) - 1 - names[::-1].index(layer) + 1:]
    modules = dict(network.named_modules())
    chosen: list[str] = []
    for name in after:
        if layer == name or layer.startswith(name + ".") or any(name == c or name.startswith(c + ".") for c in chosen):
            continue  # an ancestor of the feature layer, or inside a module already chosen
        if any(True for _ in modules[name].parameters()):
            chosen = [c for c in chosen if not c.startswith(name + ".")] + [name]
    if not chosen:
        raise ConfigError(f"no module with weights runs after {layer!r} in {type(network).__name__}; set sanity_decoder.")
    return tuple(_outermost(chosen))


def check_prefixes(network: torch.nn.Module, prefixes: str | Sequence[str]) -> tuple[str, ...]:
    """``sanity_decoder`` as given: one name or several, each a module of ``network`` that has weights.

    Raises:
        ConfigError: a name that is no module, or one without weights (the stage would change nothing).
    """
    names = (prefixes,) if isinstance(prefixes, str) else tuple(str(p) for p in prefixes)
    modules = dict(network.named_modules())
    for name in names:
        if name not in modules or not any(True for _ in modules[name].parameters()):
            options = [n for n in modules if n and "." not in n]
            raise ConfigError(f"sanity_decoder {name!r} is not a module with weights of {type(network).__name__}; its "
                              f"top-level modules are {options}.")
    return names


def _outermost(names: Sequence[str]) -> list[str]:
    return [n for n in names if not any(n != other and n.startswith(other + ".") for other in names)]


__all__ = ["check_prefixes", "find_decoder_prefixes", "find_feature_layer", "trace_modules"]
