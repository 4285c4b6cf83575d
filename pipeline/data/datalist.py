"""Datalists: find the cases of a dataset, split them by patient, write the split.

A datalist is a list of dicts, one per case, with ``image`` (a NIfTI file or a DICOM series folder),
optionally ``label`` (a NIfTI file on the image's grid, or a list of them: one per rater) and always ``case`` (a name safe
for file names).
Three sources are understood:

- an MSD folder (``dataset.json`` beside ``imagesTr/`` and ``labelsTr/``, e.g. Task07_Pancreas),
- a datalist JSON file: a list of ``{"image", "label"}`` dicts, or a dict holding such lists under
  ``training`` / ``validation`` / ``test`` (what :func:`write_datalist` writes); relative paths are
  resolved against the JSON file's folder,
- a plain folder of images: every ``*.nii`` / ``*.nii.gz`` file, and every sub-folder holding a DICOM
  series, is one case without label (a folder that is itself a DICOM series is one case).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.files import NIFTI_SUFFIXES, check_inside, resolve_input
from pipeline.distributed import is_main_process
from pipeline.errors import ConfigError, DataError
from pipeline.fileio import write_json_atomic

logger = logging.getLogger(__name__)

SPLIT_KEYS = ("training", "validation", "test")
PATH_KEYS = ("image", "label", "image_nocue", "shortcut", "lesion", "sign", "image_nosign")  # entry keys holding files
# (then: the shortcut benchmark's twin and cue; the multi-rater phantom's lesion, remote sign, and twin without the sign)


def all_labelled(datalist: Sequence[dict[str, Any]]) -> bool:
    """True when the datalist is not empty and every entry has a label (only then are labels used)."""
    return bool(datalist) and all(entry.get("label") for entry in datalist)


def without_labels(datalist: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The entries with their ``label`` dropped (label-free training reads images only)."""
    return [{k: v for k, v in entry.items() if k != "label"} for entry in datalist]


def resolve_labels(datalist: Sequence[dict[str, Any]], use_labels: bool | None) -> tuple[bool, list[dict[str, Any]]]:
    """Whether labels are used (None: when every entry has one) and the entries to read accordingly.

    Raises:
        DataError: labels asked for while a case has none.
    """
    with_label = all_labelled(datalist) if use_labels is None else bool(use_labels)
    if with_label and not all_labelled(datalist):
        unlabelled = next(str(e.get("case", e.get("image"))) for e in datalist if not e.get("label"))
        raise DataError(f"{unlabelled}: no label for this case, while labels are in use; give every case a label "
                        "or train label-free (target: prediction).")
    return with_label, (list(datalist) if with_label else without_labels(datalist))


def image_paths(entry: dict[str, Any]) -> list[str]:
    """The image files of an entry: one path, or the co-registered volumes of a multi-channel case (a list)."""
    image = entry["image"]
    return [str(p) for p in image] if isinstance(image, (list, tuple)) else [str(image)]


def label_paths(entry: dict[str, Any]) -> list[str]:
    """The label files of an entry: none, one, or one per rater (a list: a multi-rater case, e.g. LIDC or QUBIQ)."""
    label = entry.get("label")
    if not label:
        return []
    return [str(p) for p in label] if isinstance(label, (list, tuple)) else [str(label)]


def case_name(path: str | os.PathLike) -> str:
    """Name of a case from its image path, safe for file names: ``imagesTr/pancreas_001.nii.gz`` -> ``pancreas_001``."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return safe or "case"


def is_dicom_series(folder: Path) -> bool:
    """Whether ``folder`` directly holds DICOM files (``*.dcm`` or files starting with the DICM preamble)."""
    if not folder.is_dir():
        return False
    for child in folder.iterdir():
        if not child.is_file():
            continue
        if child.suffix.lower() == ".dcm":
            return True
        try:
            with open(child, "rb") as handle:
                if handle.read(132)[128:132] == b"DICM":
                    return True
        except OSError:
            continue
    return False


def _with_case_names(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add a unique ``case`` name to every entry that has none (``_2``, ``_3`` ... on clashes)."""
    seen: dict[str, int] = {}
    named = []
    for entry in entries:
        entry = dict(entry)
        base = entry.get("case") or case_name(image_paths(entry)[0])
        count = seen.get(base, 0) + 1
        seen[base] = count
        entry["case"] = base if count == 1 else f"{base}_{count}"
        named.append(entry)
    return named


def _check_entries(entries: Any, source: Path) -> list[dict[str, Any]]:
    if not isinstance(entries, list):
        raise DataError(f"{source}: expected a list of {{'image': ..., 'label': ...}} entries, got {type(entries).__name__}.")
    if not entries:
        raise DataError(f"{source}: the datalist is empty; add at least one {{'image': ...}} entry.")
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or "image" not in entry:
            raise DataError(
                f"{source}: entry {index} is {entry!r}; every entry must be a dict with an 'image' path "
                "(and a 'label' path for training)."
            )
    return entries


def _resolve(entries: list[dict[str, Any]], base: Path, source: Path, allow_outside: bool) -> list[dict[str, Any]]:
    resolved = []
    for entry in entries:
        entry = dict(entry)
        for key in PATH_KEYS:
            value = entry.get(key)
            if value is None:
                continue
            if key in ("image", "label") and isinstance(value, list):  # channels' images; several raters' labels
                what = "its channels' images" if key == "image" else "its raters' labels"
                if not value or any(not isinstance(v, str) or v.strip() in ("", ".") for v in value):
                    raise DataError(f"{source}: entry {value!r} lists {what}; each must be the path of a file.")
                entry[key] = [str(check_inside(v, base, allow_outside, source)) for v in value]
                continue
            if not isinstance(value, str) or value.strip() in ("", "."):
                raise DataError(f"{source}: entry {entry.get('image', '?')} has {key} {value!r}; it must be the path of a file.")
            entry[key] = str(check_inside(value, base, allow_outside, source))
        resolved.append(entry)
    return resolved


def _scan_folder(folder: Path) -> list[dict[str, Any]]:
    if is_dicom_series(folder):
        return [{"image": str(folder)}]
    entries = []
    for child in sorted(folder.iterdir()):
        if child.is_file() and child.name.lower().endswith(NIFTI_SUFFIXES):
            entries.append({"image": str(child)})
        elif child.is_dir() and is_dicom_series(child):
            entries.append({"image": str(child)})
    return entries


def load_datalist(source: str | os.PathLike, key: str = "training", allow_outside_paths: bool = False) -> list[dict[str, Any]]:
    """Read the cases of a dataset.

    Args:
        source: MSD folder (with ``dataset.json``), ``dataset.json`` itself, a datalist JSON file, or a
            folder of NIfTI files / DICOM series folders.
        key: which list to read from an MSD ``dataset.json`` or a split datalist (``training``,
            ``validation``, ``test``). A plain JSON list or image folder ignores it.
        allow_outside_paths: accept datalist paths that leave the datalist's folder (``..``, absolute).

    Returns:
        Entries ``{"image": abs path, "label": abs path (if known), "case": name, ...}``; files are not
        opened here (see :func:`pipeline.data.validate_datalist`).

    Raises:
        DataError: the source does not exist, is not understood, or holds no cases.
    """
    resolve_input(source)  # a symlink loop is refused here
    path = Path(os.path.abspath(os.path.expanduser(str(source))))  # symlinks kept: paths inside read as inside
    if not path.exists():
        raise DataError(f"{path}: no such file or folder; pass an MSD folder, a datalist JSON file or a folder of images.")
    if path.is_file() and path.name.lower().endswith(NIFTI_SUFFIXES):
        return _with_case_names([{"image": str(path)}])  # one volume: a dataset of one unlabelled case
    if path.is_dir() and (path / "dataset.json").is_file():
        path = path / "dataset.json"
    if path.is_dir():
        entries = _scan_folder(path)
        if not entries:
            raise DataError(
                f"{path}: found no *.nii / *.nii.gz file, DICOM series folder or dataset.json; "
                "put the images there or pass a datalist JSON file."
            )
        return _with_case_names(entries)
    try:
        content = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: not a readable JSON datalist ({err}); pass an MSD folder, a datalist JSON file, "
                        "a folder of images or one NIfTI file.") from err
    if isinstance(content, dict):
        if key not in content:
            raise DataError(f"{path}: has no '{key}' list (keys: {sorted(content)}); pick one with the datalist key.")
        if key == "test" and all(isinstance(item, str) for item in content[key]):
            entries = _resolve([{"image": item} for item in content[key]], path.parent, path, allow_outside_paths)  # MSD test list: paths only
        else:
            _check_entries(content[key], path)
            entries = _resolve(content[key], path.parent, path, allow_outside_paths)  # _resolve copies each entry
    else:
        entries = _resolve(_check_entries(content, path), path.parent, path, allow_outside_paths)
    if not entries:
        raise DataError(f"{path}: the '{key}' list is empty; add at least one case.")
    return _with_case_names(entries)


def split_datalist(
    datalist: Sequence[dict[str, Any]],
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    group_key: str = "patient",
) -> dict[str, list[dict[str, Any]]]:
    """Split cases into training / validation / test by patient, never by slice.

    Entries sharing ``entry[group_key]`` (several scans of one patient) land in the same part; entries
    without it are their own patient. Each non-zero fraction gets at least one patient when there are
    at least three.

    Args:
        datalist: entries as from :func:`load_datalist`.
        val_fraction: share of patients for validation, in [0, 1).
        test_fraction: share of patients for test, in [0, 1); the two together below 1.
        seed: the same seed and datalist give the same split.
        group_key: entry key naming the patient.

    Returns:
        ``{"training": [...], "validation": [...], "test": [...]}``.
    """
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ConfigError(
            f"val_fraction and test_fraction must each be in [0, 1) and sum below 1, got {val_fraction} and {test_fraction}."
        )
    if not datalist:
        raise DataError("the datalist is empty; nothing to split.")
    groups: dict[str, list[dict[str, Any]]] = {}
    for entry in datalist:
        groups.setdefault(str(entry.get(group_key, entry.get("case", image_paths(entry)[0]))), []).append(dict(entry))
    patients = sorted(groups)
    order = np.random.default_rng(seed).permutation(len(patients))
    n = len(patients)

    def count(fraction: float) -> int:
        return 0 if fraction == 0 else max(1 if n >= 3 else 0, int(round(fraction * n)))

    n_val, n_test = count(val_fraction), count(test_fraction)
    parts = {
        "validation": order[:n_val],
        "test": order[n_val : n_val + n_test],
        "training": order[n_val + n_test :],
    }
    return {name: [entry for i in sorted(parts[name]) for entry in groups[patients[i]]] for name in SPLIT_KEYS}


def write_datalist(splits: dict[str, list[dict[str, Any]]], path: str | os.PathLike) -> Path:
    """Write a split datalist as JSON with paths relative to its folder, atomically.

    Under several processes only rank 0 writes; the others return the path without touching it.

    Args:
        splits: ``{"training": [...], ...}`` as from :func:`split_datalist`.
        path: the JSON file to write; its folder is created.

    Returns:
        The written path; :func:`load_datalist` reads it back with ``key="training"`` etc.
    """
    path = Path(path)
    if not is_main_process():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    base = os.path.abspath(path.parent)
    content: dict[str, list[dict[str, Any]]] = {}
    for name, entries in splits.items():
        content[name] = []
        for entry in entries:
            entry = dict(entry)
            for key in PATH_KEYS:
                value = entry.get(key)  # relative to the paths as written (symlinks kept): they read back the same
                if isinstance(value, list):
                    entry[key] = [os.path.relpath(os.path.abspath(v), base) for v in value]
                elif value:
                    entry[key] = os.path.relpath(os.path.abspath(value), base)
            content[name].append(entry)
    return write_json_atomic(content, path)


def collect_inputs(
    sources: Sequence[str | os.PathLike] | str | os.PathLike,
    key: str = "test",
    series: str | None = None,
    allow_outside_paths: bool = False,
    resample_uneven: bool = False,
) -> list[dict[str, Any]]:
    """Cases to explain from any mix of inputs, labels dropped.

    Args:
        sources: NIfTI files, DICOM series folders, folders of images, MSD folders or datalist JSON files.
        key: list read from MSD folders and split datalists (``test``: MSD's ``imagesTs``).
        series: SeriesInstanceUID to read from DICOM folders that hold several series.
        allow_outside_paths: accept datalist entries outside their datalist's folder.
        resample_uneven: DICOM series with a gap or uneven steps are resampled onto an even grid, not refused.

    Returns:
        ``{"image", "case"}`` entries (and ``series`` / ``resample_uneven`` for DICOM folders when given) with unique
        case names.

    Raises:
        DataError: a source is missing, a symlink loop, or holds no image.
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    if not sources:
        raise DataError("no input given; pass NIfTI files, DICOM series folders, folders or datalists to explain.")
    entries: list[dict[str, Any]] = []
    for source in sources:
        resolve_input(source)  # a symlink loop is refused here
        path = Path(os.path.abspath(os.path.expanduser(str(source))))
        if path.is_file() and path.name.lower().endswith(NIFTI_SUFFIXES):
            entries.append({"image": str(path)})
        else:  # folders (a DICOM series is one case), MSD folders and datalists
            entries.extend({"image": e["image"]} for e in load_datalist(path, key=key, allow_outside_paths=allow_outside_paths))
    return _with_case_names(with_series(entries, series, resample_uneven))


def with_series(entries: Sequence[dict[str, Any]], series: str | None,
                resample_uneven: bool = False) -> list[dict[str, Any]]:
    """Set ``series`` (a SeriesInstanceUID) and ``resample_uneven`` on the entries whose image is a DICOM folder;
    None and False change nothing."""
    extra = {**({"series": str(series)} if series is not None else {}), **({"resample_uneven": True} if resample_uneven else {})}
    return [{**entry, **extra} if extra and isinstance(entry["image"], str) and Path(entry["image"]).is_dir() else dict(entry)
            for entry in entries]
