"""Validate a datalist before any training, and summarise it.

Every volume is opened with the same MONAI loader that training uses, so a file that passes here also
loads there. The first problem found stops the run with a :class:`~pipeline.errors.DataError` whose
message names the file, says what is wrong and how to fix it.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.transforms import LoadImage
from tqdm import tqdm

from pipeline.data.datalist import image_paths, label_paths
from pipeline.data.files import NIFTI_SUFFIXES, check_ct_intensity, check_nifti_header, resolve_input
from pipeline.dicom.read import choose_dicom_series, read_dicom_series
from pipeline.errors import ConfigError, DataError
from pipeline.fileio import MAX_VOXELS

logger = logging.getLogger(__name__)

GEOMETRY_ATOL_MM = 1e-3  # image and label affines may differ by float noise, not by a voxel


def load_volume(path: str | Path, series: str | None = None, max_voxels: int = MAX_VOXELS,
                resample_uneven: bool = False) -> torch.Tensor:
    """Load one 3D volume (NIfTI file or DICOM series folder) as a MONAI MetaTensor with a RAS affine.

    The file is checked before its voxels are read (:mod:`pipeline.data.files`): a NIfTI header that
    does not fit its file, or a DICOM folder holding several series, is refused without allocating.

    Args:
        path: the file or DICOM folder.
        series: SeriesInstanceUID to read from a DICOM folder holding several series.
        max_voxels: refuse larger volumes before reading them.
        resample_uneven: a DICOM series with a gap or uneven steps is resampled onto an even grid, not refused.

    Returns:
        MetaTensor of shape (X, Y, Z) in the file's own voxel order, float32, with ``.affine`` (4, 4)
        voxel -> RAS world in mm.

    Raises:
        DataError: missing, unreadable or truncated file, or not a single 3D volume.
    """
    path = resolve_input(path)
    if not path.exists():
        raise DataError(f"{path}: file not found; check the datalist path or regenerate the dataset.")
    loader = LoadImage(image_only=True)
    if path.is_file() and path.name.lower().endswith(NIFTI_SUFFIXES):
        check_nifti_header(path, max_voxels)
    elif path.is_dir():  # a DICOM series: sorted along the slice normal, an even spacing checked (pipeline.dicom.read)
        chosen = choose_dicom_series(path, series, max_voxels)
        loader = lambda _: read_dicom_series(chosen.files, path, resample_uneven)  # noqa: E731
    elif path.is_file() and path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty (0 bytes); re-export or re-copy it.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's optional-codec notices are noise here
            volume = loader(str(path))
    except DataError:  # ours already names the file and the problem (e.g. an uneven DICOM series)
        raise
    except Exception as err:  # MONAI wraps reader errors in several types; all mean "cannot read"
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise DataError(
            f"{path}: cannot be read as NIfTI or a DICOM series ({reason[:200]}); the file may be truncated or "
            "corrupt: re-export or re-download it."
        ) from err
    while volume.ndim > 3 and volume.shape[-1] == 1:  # (X, Y, Z, 1): one 3D volume, as LoadVolumed reads it
        volume = volume[..., 0]
    if volume.ndim != 3:
        raise DataError(
            f"{path}: expected one 3D volume, got shape {tuple(volume.shape)}; split 4D files into one 3D "
            "volume per file (e.g. with nibabel or fslsplit)."
        )
    return volume


@dataclass
class CaseSummary:
    """Facts about one validated case."""

    case: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    orientation: str
    hu_range: tuple[float, float]
    label_counts: dict[int, int] = field(default_factory=dict)
    pancreas_slices: int = 0
    raters: int = 0  # label files of the case (several: a multi-rater case)
    rater_iou: float | None = None  # several raters: mean IoU of their pancreas masks over pairs of raters

    @property
    def slices(self) -> int:
        return self.shape[2]


@dataclass
class DatasetSummary:
    """What :func:`validate_datalist` found; ``format()`` gives the text ``unoise inspect`` prints."""

    cases: list[CaseSummary]
    pancreas_labels: tuple[int, ...]
    warnings: list[str] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)  # with on_error="skip": {"case", "input", "error"}

    def as_dict(self) -> dict[str, Any]:
        labelled = [c for c in self.cases if c.label_counts]
        counts: dict[int, int] = {}
        for case in labelled:
            for value, n in case.label_counts.items():
                counts[value] = counts.get(value, 0) + n
        spacing = np.array([c.spacing for c in self.cases])
        return {
            "cases": len(self.cases),
            "labelled_cases": len(labelled),
            "slices": int(sum(c.slices for c in self.cases)),
            "slices_with_pancreas": int(sum(c.pancreas_slices for c in labelled)),
            "in_plane_shapes": sorted({f"{c.shape[0]}x{c.shape[1]}" for c in self.cases}),
            "slices_per_case": [int(min(c.slices for c in self.cases)), int(max(c.slices for c in self.cases))],
            "spacing_mm_min": [round(float(v), 3) for v in spacing.min(axis=0)],
            "spacing_mm_max": [round(float(v), 3) for v in spacing.max(axis=0)],
            "hu_min": float(min(c.hu_range[0] for c in self.cases)),
            "hu_max": float(max(c.hu_range[1] for c in self.cases)),
            "orientations": {o: sum(c.orientation == o for c in self.cases) for o in sorted({c.orientation for c in self.cases})},
            "label_voxels": {str(k): v for k, v in sorted(counts.items())},
            "raters_per_case": {str(n): sum(c.raters == n for c in labelled) for n in sorted({c.raters for c in labelled})},
            "rater_iou_mean": (round(float(np.mean(ious)), 4) if (ious := [c.rater_iou for c in labelled
                                                                             if c.rater_iou is not None]) else None),
            "pancreas_labels": list(self.pancreas_labels),
            "warnings": list(self.warnings),
            "failed": list(self.failed),
        }

    def format(self) -> str:
        info = self.as_dict()
        share = info["slices_with_pancreas"] / max(1, sum(c.slices for c in self.cases if c.label_counts))
        lines = [
            f"cases: {info['cases']} ({info['labelled_cases']} with label)",
            f"slices: {info['slices']}, with pancreas: {info['slices_with_pancreas']} ({share:.1%} of labelled slices)",
            f"in-plane size: {', '.join(info['in_plane_shapes'])}; slices per case: "
            f"{info['slices_per_case'][0]}..{info['slices_per_case'][1]}",
            "spacing (mm): "
            + ", ".join(f"{axis} {lo:g}..{hi:g}" for axis, lo, hi in zip("xyz", info["spacing_mm_min"], info["spacing_mm_max"])),
            f"intensity range (HU): {info['hu_min']:g} .. {info['hu_max']:g}",
            "voxel orientation on disk: " + ", ".join(f"{k} {v}" for k, v in info["orientations"].items()),
            "label values (voxels): " + (", ".join(f"{k}: {v}" for k, v in info["label_voxels"].items()) or "no labels"),
            f"pancreas = label values {list(self.pancreas_labels)}",
        ]
        if any(n != "1" for n in info["raters_per_case"]):
            lines.append("raters per case: " + ", ".join(f"{n} rater(s): {k} case(s)" for n, k in info["raters_per_case"].items())
                         + (f"; their agreement (pancreas IoU between two raters, mean): {info['rater_iou_mean']:.3f}"
                            if info["rater_iou_mean"] is not None else ""))
        lines += [f"warning: {text}" for text in self.warnings]
        if self.failed:
            lines.append(f"{len(self.failed)} case(s) failed, left out of the figures above:")
            lines += [f"  {item['case']}: {item['error']}" for item in self.failed]
        return "\n".join(lines)


def _check_finite(volume: torch.Tensor, path: str) -> None:
    bad = ~torch.isfinite(volume)
    if bool(bad.any()):
        first = tuple(int(i) for i in torch.nonzero(bad)[0])
        raise DataError(
            f"{path}: {int(bad.sum())} NaN or inf voxel(s), first at voxel {first}; fix the export "
            "(or replace them, e.g. with the air value -1024 HU) before training."
        )


def _check_geometry(image: torch.Tensor, label: torch.Tensor, image_path: str, label_path: str, what: str = "label") -> None:
    """``label`` (or another channel's image, ``what``) must lie on ``image``'s voxel grid."""
    if tuple(image.shape) != tuple(label.shape):
        raise DataError(
            f"{label_path}: {what} shape {tuple(label.shape)} differs from image shape {tuple(image.shape)} "
            f"({image_path}); the {what} must be on the image's voxel grid: resample it onto the image."
        )
    image_affine = np.asarray(image.affine, dtype=np.float64)
    label_affine = np.asarray(label.affine, dtype=np.float64)
    if not np.allclose(image_affine, label_affine, atol=GEOMETRY_ATOL_MM, rtol=1e-5):
        raise DataError(
            f"{label_path}: {what} geometry differs from the image's ({image_path}): spacing/direction/origin "
            f"affine {np.round(label_affine[:3], 3).tolist()} vs {np.round(image_affine[:3], 3).tolist()}; "
            f"resample the {what} onto the image grid (same spacing, origin and direction)."
        )


def _check_label_values(label: torch.Tensor, path: str, allowed: set[int] | None) -> dict[int, int]:
    values, counts = torch.unique(label, return_counts=True)
    non_integer = [float(v) for v in values if float(v) != round(float(v))]
    if non_integer:
        raise DataError(
            f"{path}: label has non-integer values {non_integer[:5]}; a label map holds class numbers: "
            "save it as an integer image (nearest-neighbour resampling)."
        )
    found = {int(round(float(v))): int(n) for v, n in zip(values, counts)}
    if allowed is not None:
        unknown = sorted(set(found) - allowed)
        if unknown:
            raise DataError(
                f"{path}: label values {unknown} are outside the configured set {sorted(allowed)}; set "
                "`pancreas_labels` to the values that mean pancreas (e.g. --pancreas-labels \"[7]\") and "
                "`label_values` to all values the labels may hold (or \"any\")."
            )
    return found


def allowed_label_values(pancreas_labels: Sequence[int], label_values: Sequence[int] | str | None) -> set[int] | None:
    """The set of label values accepted: explicit list, ``"any"`` (no check) or None (0 + pancreas labels)."""
    if isinstance(label_values, str):
        if label_values.lower() != "any":
            raise ConfigError(f"label_values must be a list of integers, null or 'any', got {label_values!r}.")
        return None
    if label_values is None:
        return {0, *(int(v) for v in pancreas_labels)}
    return {int(v) for v in label_values}


ON_ERROR = ("auto", "skip", "stop")


def resolve_on_error(on_error: str, entries: Sequence[Any]) -> str:
    """``skip`` or ``stop``; ``auto`` skips a failing case in a batch (several cases) and stops on a single one
    (so one bad input is refused in one line before anything is written, as every command refuses bad input)."""
    if on_error not in ON_ERROR:
        raise ConfigError(f"on_error must be one of {list(ON_ERROR)}, got {on_error!r}.")
    if on_error == "auto":
        return "skip" if len(entries) > 1 else "stop"
    return on_error


def record_failure(failed: list[dict[str, str]], entry: dict[str, Any], err: Exception) -> None:
    """Append a case left out of a batch (``case``, ``input``, ``error``) to ``failed`` and log it, naming the case."""
    failed.append({"case": str(entry.get("case", "")), "input": str(image_paths(entry)[0]), "error": str(err)})
    logger.error("%s: failed, left out: %s", entry.get("case", image_paths(entry)[0]), err)


def validate_datalist(
    datalist: Sequence[dict[str, Any]],
    pancreas_labels: Sequence[int] = (1, 2),
    label_values: Sequence[int] | str | None = None,
    require_labels: bool = False,
    progress: bool = True,
    strict: bool = False,
    on_error: str = "stop",
) -> DatasetSummary:
    """Open every case and stop at the first problem, naming the file (or, with ``on_error="skip"``, record it and go on).

    Checks, in this order: file present (no symlink loop), header fits the file (no truncated file, no
    header claiming more voxels than stored, at most :data:`~pipeline.fileio.MAX_VOXELS`), one DICOM
    series per folder (or the entry's ``series``), a single 3D volume, no NaN/inf, a CT-like intensity
    range (a warning naming the case; refused with ``strict``), label on the image's grid (shape and
    affine), label values integers in the allowed set, and (with ``require_labels``) a label for every case.

    Args:
        datalist: entries with ``image`` and optional ``label`` (see :func:`pipeline.data.load_datalist`).
        pancreas_labels: label values that mean pancreas; they are merged into one foreground class.
        label_values: every value a label may hold; None means 0 plus ``pancreas_labels``, ``"any"``
            disables the check (multi-organ labels such as TotalSegmentator's).
        require_labels: fail on a case without label (training needs them).
        progress: show a progress bar on stderr (only when it is a terminal).
        strict: refuse, rather than warn about, an image whose intensities do not look like CT in HU.
        on_error: ``stop`` raises the first problem; ``skip`` records each failing case in ``failed`` (case, file,
            reason) and summarises the others; ``auto`` skips when there are several cases, stops on one.

    Returns:
        A :class:`DatasetSummary`.

    Raises:
        DataError: the first problem found (``stop``), or every case failed (``skip``).
    """
    if not datalist:
        raise DataError("the datalist is empty: the dataset holds no cases; check the path and datalist key.")
    if not pancreas_labels:
        raise ConfigError("pancreas_labels must name at least one label value, e.g. [1, 2] for MSD Task07.")
    allowed = allowed_label_values(pancreas_labels, label_values)
    pancreas = torch.tensor([float(v) for v in pancreas_labels])
    cases: list[CaseSummary] = []
    notes: list[str] = []
    show = progress and sys.stderr.isatty()  # no bar in logs and CI output
    entries: Iterable[dict[str, Any]] = tqdm(datalist, desc="validate", unit="case", disable=not show, leave=False)
    skip = resolve_on_error(on_error, datalist) == "skip"
    failed: list[dict[str, str]] = []
    for entry in entries:
        try:
            summary, note = _validate_case(entry, allowed, pancreas, require_labels, strict)
        except DataError as err:
            if not skip:
                raise
            record_failure(failed, entry, err)
            continue
        if note:
            notes.append(note)
        cases.append(summary)
    if not cases:
        raise DataError(f"every case failed its checks ({len(failed)}); the first: {failed[0]['error']}")
    return DatasetSummary(cases=cases, pancreas_labels=tuple(int(v) for v in pancreas_labels), warnings=notes, failed=failed)


def _validate_case(entry: dict[str, Any], allowed: Any, pancreas: torch.Tensor, require_labels: bool,
                   strict: bool) -> tuple[CaseSummary, str | None]:
    """The checks of one case (see :func:`validate_datalist`): its summary and the CT-range note, if any."""
    paths = image_paths(entry)
    image_path = paths[0]
    image = load_volume(image_path, entry.get("series"), resample_uneven=bool(entry.get("resample_uneven", False)))
    _check_finite(image, image_path)
    for channel, other_path in enumerate(paths[1:], start=2):  # a multi-channel case: every volume on the first's grid
        other = load_volume(other_path)
        _check_finite(other, other_path)
        _check_geometry(image, other, image_path, other_path, what=f"channel {channel} image")
    hu_range = (float(image.min()), float(image.max()))  # one pass each over the volume, used twice
    note = check_ct_intensity(*hu_range, image_path, strict)
    spacing = tuple(float(s) for s in np.linalg.norm(np.asarray(image.affine)[:3, :3], axis=0))
    summary = CaseSummary(
        case=str(entry.get("case", Path(image_path).name)),
        shape=tuple(int(s) for s in image.shape),  # type: ignore[arg-type]
        spacing=spacing,  # type: ignore[arg-type]
        orientation="".join(nib.aff2axcodes(np.asarray(image.affine))),
        hu_range=hu_range,
    )
    raters = label_paths(entry)
    if raters:
        masks = []
        for label_path in raters:  # one file, or one per rater: each on the image's grid, each with allowed values
            label = load_volume(label_path)
            _check_finite(label, label_path)
            _check_geometry(image, label, image_path, label_path)
            for value, n in _check_label_values(label, label_path, allowed).items():
                summary.label_counts[value] = summary.label_counts.get(value, 0) + n
            masks.append(torch.isin(label, pancreas).flatten())
        foreground = torch.stack(masks).any(dim=0).reshape(image.shape)  # a slice with pancreas for any rater
        summary.pancreas_slices = int(foreground.flatten(0, 1).any(dim=0).sum())
        summary.raters = len(raters)
        if len(raters) > 1:
            summary.rater_iou = _mean_pairwise_iou(torch.stack(masks))
    elif require_labels:
        raise DataError(f"{image_path}: no label for this case; this run needs a 'label' for every image "
                        "(a noise model also trains without labels: --target prediction).")
    return summary, note


def _mean_pairwise_iou(masks: torch.Tensor) -> float:
    """Mean IoU over pairs of raters of their masks, (R, N) bool; two empty masks agree (IoU 1)."""
    flat = masks.double()  # (R, N)
    inter = flat @ flat.T  # (R, R) voxels both marked
    sizes = flat.sum(dim=1)
    union = sizes[:, None] + sizes[None, :] - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    pairs = torch.triu_indices(len(masks), len(masks), offset=1)
    return float(iou[pairs[0], pairs[1]].mean())


def check_channels(datalist: Sequence[dict[str, Any]], in_channels: int, source: str | Path) -> None:
    """Every entry lists as many co-registered images as the network takes input channels.

    Raises:
        DataError: naming the first entry with another count and how to list its channels.
    """
    for entry in datalist:
        paths = image_paths(entry)
        if len(paths) != int(in_channels):
            example = "[" + ", ".join(f"'sequence{k}.nii.gz'" for k in range(1, int(in_channels) + 1)) + "]"
            raise DataError(
                f"{paths[0]}: the case has {len(paths)} image(s) but the network takes {in_channels} input channel(s) "
                f"({source}); give each case its co-registered volumes as a list, {{'image': {example}}}, or use a "
                f"network with in_channels {len(paths)}."
            )


def check_training_split(
    summary: DatasetSummary, split: dict[str, list[dict[str, Any]]], source: str | Path,
    parts: Sequence[str] = ("training", "validation"), require_pancreas: bool = True,
) -> None:
    """Refuse a split a training run would learn nothing from or score wrongly.

    Every part in ``parts`` must hold at least one case and (with ``require_pancreas``, i.e. when labels
    are in use) at least one pancreas voxel: with no pancreas in validation every empty prediction scores
    dice 1.0, and the "best" checkpoint means nothing.

    Args:
        summary: what :func:`validate_datalist` found for the whole datalist.
        split: ``{"training": [...], "validation": [...], ...}`` from :func:`pipeline.data.split_datalist`.
        source: the dataset, named in the error.
        parts: the parts to check.

    Raises:
        DataError: a part is empty or holds no pancreas.
    """
    by_case = {c.case: c for c in summary.cases}
    for part in parts:
        entries = split.get(part, [])
        if not entries:
            raise DataError(f"{source}: the {part} split is empty ({len(summary.cases)} cases in all); add cases or "
                            "change --val-fraction / --test-fraction so that it gets at least one patient.")
        names = [str(entry["case"]) for entry in entries]
        if require_pancreas and sum(by_case[name].pancreas_slices for name in names if name in by_case) == 0:
            shown = ", ".join(names[:4]) + (" ..." if len(names) > 4 else "")
            raise DataError(
                f"{source}: the {part} split ({len(names)} cases: {shown}) holds no pancreas voxel (label values "
                f"{list(summary.pancreas_labels)}); {'validation dice would be 1.0 for an empty prediction' if part == 'validation' else 'nothing to learn'}: "
                "check --pancreas-labels, or change --seed / --val-fraction so that labelled cases land there."
            )


def check_batch_count(slices: int, batch_size: int, source: str | Path, part: str = "training", world_size: int = 1) -> None:
    """Refuse a training set smaller than one batch per process (the loader drops the last partial batch: 0 steps).

    Args:
        slices: training slices in all.
        batch_size: per process.
        source: the dataset, named in the error.
        part: the split's name.
        world_size: processes sharing the slices (``torchrun``); each gets ``ceil(slices / world_size)``.

    Raises:
        DataError: fewer slices per process than ``batch_size``.
    """
    if int(batch_size) < 1:
        raise DataError(f"{source}: batch_size must be >= 1, got {batch_size}.")
    share = -(-int(slices) // max(1, int(world_size)))
    if share < int(batch_size):
        per = f" ({share} per process over {world_size})" if world_size > 1 else ""
        raise DataError(
            f"{source}: the {part} split gives {slices} slice(s){per}, fewer than one batch of {batch_size}, so no "
            f"training step would run; pass --batch-size {max(1, share)} or less, add cases, or keep more slices "
            "(--train-slices all)."
        )
