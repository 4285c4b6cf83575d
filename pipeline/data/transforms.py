"""MONAI transforms from a CT file to a windowed, RAS-oriented volume with a binary pancreas label.

The volume chain is deterministic, so its output can be cached (memory or disk) and the second epoch
does not decode files again; random augmentation acts on 2D slices after the cache.
"""

from __future__ import annotations

from collections.abc import Sequence

from monai.transforms import (
    AsDiscreted,
    Compose,
    EnsureTyped,
    LabelFilterd,
    LoadImaged,
    Orientationd,
    Resized,
    ScaleIntensityRanged,
)

# Named HU windows (lower, upper). "pancreas" is the window of MONAI's pancreas CT bundle, "spleen" that
# of its spleen bundle; "abdomen" is the usual soft-tissue reading window (level 40, width 400).
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "pancreas": (-87.0, 199.0),
    "spleen": (-57.0, 164.0),
    "abdomen": (-160.0, 240.0),
}


def resolve_window(window: str | Sequence[float]) -> tuple[float, float]:
    """HU bounds of a named preset (see ``WINDOW_PRESETS``) or of an explicit ``[lower, upper]`` pair.

    Raises:
        ValueError: unknown preset name, or bounds that are not two increasing numbers.
    """
    if isinstance(window, str):
        if window not in WINDOW_PRESETS:
            raise ValueError(f"unknown HU window {window!r}; use one of {sorted(WINDOW_PRESETS)} or [lower, upper] in HU.")
        return WINDOW_PRESETS[window]
    bounds = tuple(float(v) for v in window)
    if len(bounds) != 2 or not bounds[0] < bounds[1]:
        raise ValueError(f"an explicit HU window is [lower, upper] with lower < upper, got {list(window)}.")
    return bounds  # type: ignore[return-value]


def build_volume_transforms(
    window: str | Sequence[float] = "pancreas",
    spatial_size: int | None = None,
    pancreas_labels: Sequence[int] = (1, 2),
    with_label: bool = True,
) -> Compose:
    """Deterministic chain: load -> channel first -> RAS -> window to [0, 1] -> binary label -> in-plane size.

    Args:
        window: HU window preset name or ``[lower, upper]``; HU outside are clipped, then scaled to [0, 1].
        spatial_size: in-plane size S (the volume becomes S x S x Z, Z unchanged); None keeps the size.
        pancreas_labels: label values merged into the pancreas class (MSD: 1 pancreas, 2 tumour).
        with_label: the data dicts carry a ``label`` key.

    Returns:
        A Compose mapping ``{"image": path, "label": path, ...}`` to ``image`` float32 (1, S, S, Z) in
        [0, 1] and ``label`` float32 (1, S, S, Z) in {0, 1}, both MetaTensors with a RAS affine.
    """
    lower, upper = resolve_window(window)
    if spatial_size is not None and int(spatial_size) < 8:
        raise ValueError(f"spatial_size is the in-plane size in pixels (>= 8) or null, got {spatial_size}.")
    if not pancreas_labels:
        raise ValueError("pancreas_labels must name at least one label value, e.g. [1, 2] for MSD Task07.")
    keys = ["image", "label"] if with_label else ["image"]
    chain = [
        LoadImaged(keys, image_only=True, ensure_channel_first=True),
        Orientationd(keys, axcodes="RAS"),
        ScaleIntensityRanged("image", a_min=lower, a_max=upper, b_min=0.0, b_max=1.0, clip=True),
    ]
    if with_label:
        chain += [
            LabelFilterd("label", applied_labels=[int(v) for v in pancreas_labels]),
            AsDiscreted("label", threshold=0.5),
        ]
    if spatial_size is not None:
        size = (int(spatial_size), int(spatial_size), -1)
        chain.append(Resized(keys, spatial_size=size, mode=("area", "nearest")[: len(keys)]))
    chain.append(EnsureTyped(keys, dtype="float32", track_meta=True))
    return Compose(chain)
