"""DICOM derived objects of an explained DICOM series, written with highdicom: the utility's segmentation as a
DICOM SEG and the importance map as a DICOM Parametric Map, frame for frame on the source series.

Both reference the source series and carry its patient and study modules (highdicom copies them, as the standard
requires of a derived object, so PACS files them with the study); NIfTI outputs carry no patient data.

Arrays arrive as the exporter writes them to NIfTI: (X, Y, Z) on the grid :func:`pipeline.dicom.read.read_dicom_series`
read, slice ``k`` being the ``k``-th source slice along the slice normal. Frame ``k`` of each object is that slice,
rows = Y, columns = X, as DICOM stores a slice. Before anything is written, the map's affine is checked against every
source slice's position and orientation (a map on another grid is refused, never written on the wrong slices).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import DataError, failure_reason
from pipeline.fileio import atomic_path

OUTPUT_FORMATS = ("nifti", "dicom", "both")
DICOM_SUFFIXES = ("_importance.dcm", "_seg.dcm")
NIFTI_SUFFIXES = ("_importance.nii.gz", "_seg.nii.gz")
MANUFACTURER = "unoise-pipeline"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
# what a derived object copies and cannot do without: blank in the source, the object cannot say what it derives from
REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")
# type 2 (required, may be empty) attributes of the patient and study modules that highdicom copies
EMPTY_ALLOWED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "AccessionNumber",
                 "ReferringPhysicianName", "StudyID")
SEG_SERIES_NUMBER, MAP_SERIES_NUMBER = 9901, 9902  # derived series sort after the scanner's own
POSITION_TOLERANCE_MM = 1e-3

logger = logging.getLogger(__name__)


def output_suffixes(output_format: str) -> list[str]:
    """Output name endings for ``output_format`` (nifti, dicom or both): the importance map and segmentation of the
    primary format first (a case is done when those two exist), then the others, then the overlay."""
    if output_format not in OUTPUT_FORMATS:
        from pipeline.errors import ConfigError

        raise ConfigError(f"output_format must be one of {list(OUTPUT_FORMATS)}, got {output_format!r}.")
    suffixes = {"nifti": list(NIFTI_SUFFIXES), "dicom": list(DICOM_SUFFIXES),
                "both": [*NIFTI_SUFFIXES, *DICOM_SUFFIXES]}[output_format]
    extra = ["_uncertainty.nii.gz"] if output_format != "dicom" else []  # a Probabilistic U-Net's (NIfTI only)
    return [*suffixes, *extra, "_overlay.png"]


def check_dicom_inputs(datalist: Sequence[dict[str, Any]], output_format: str) -> None:
    """Refuse, before any case runs, ``output_format`` ``dicom`` for inputs that are not DICOM series folders.

    Raises:
        DataError: naming the first such input.
    """
    if output_format != "dicom":
        return
    for entry in datalist:
        image = entry.get("image")
        if not (isinstance(image, (str, os.PathLike)) and Path(image).is_dir()):
            raise DataError(f"{image}: not a DICOM series folder; DICOM SEG and Parametric Map outputs are derived from a "
                            "source series: pass --output-format nifti, or both (DICOM where the input is DICOM).")


def source_headers(folder: str | os.PathLike, series: str | None = None) -> list[Any]:
    """The headers (no pixel data) of the series read from ``folder``, in the order of its voxel slices."""
    import pydicom

    from pipeline.dicom.read import choose_dicom_series, sort_by_position

    ordered, _ = sort_by_position(choose_dicom_series(folder, series).files, folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return complete_headers([pydicom.dcmread(path, stop_before_pixels=True) for path in ordered], folder)


def complete_headers(headers: Sequence[Any], folder: Any) -> list[Any]:
    """The source headers with what derived objects need and the standard lets us infer: a blank or missing
    SOPClassUID from the file meta's MediaStorageSOPClassUID, else CT Image Storage for a CT modality (anonymising
    exports often blank it); missing type 2 patient and study attributes as empty values. A blank identifier a
    derived object must reference (study, series, instance, frame of reference) is refused in one line."""
    inferred: set[str] = set()
    for header in headers:
        if not str(getattr(header, "SOPClassUID", "") or "").strip():
            meta_class = str(getattr(getattr(header, "file_meta", None), "MediaStorageSOPClassUID", "") or "").strip()
            if meta_class:
                header.SOPClassUID, reason = meta_class, "the file meta's MediaStorageSOPClassUID"
            elif str(getattr(header, "Modality", "")).upper() == "CT":
                header.SOPClassUID, reason = CT_IMAGE_STORAGE, "CT Image Storage (Modality CT)"
            else:
                raise DataError(f"{folder}: SOPClassUID is blank and Modality is {getattr(header, 'Modality', '')!r}, so "
                                "the image's storage class is unknown and no DICOM SEG / Parametric Map can reference it: "
                                "re-export the series with its SOP Class UID, or pass --output-format nifti.")
            inferred.add(f"SOPClassUID from {reason}")
        for name in REQUIRED_UIDS:
            if not str(getattr(header, name, "") or "").strip():
                raise DataError(f"{folder}: {name} is blank in {getattr(header, 'filename', 'a slice')}; a DICOM SEG / "
                                "Parametric Map must reference it: re-export the series with it, or pass --output-format nifti.")
        for name in EMPTY_ALLOWED:
            if name not in header:
                setattr(header, name, "")
    if inferred:
        logger.warning("%s: %s (blank in the series)", folder, "; ".join(sorted(inferred)))
    return list(headers)


def check_frames_geometry(headers: Sequence[Any], affine: np.ndarray, shape: Sequence[int], folder: Any) -> None:
    """Refuse a map whose (X, Y, Z) grid is not the source series' slices: size, in-plane axes, each slice position.

    Raises:
        DataError: naming the series folder and the first mismatch.
    """
    columns, rows, slices = (int(s) for s in shape)
    first = headers[0]
    if (len(headers), int(first.Rows), int(first.Columns)) != (slices, rows, columns):
        raise DataError(f"{folder}: the map is {columns} x {rows} x {slices} voxels but the series has {len(headers)} "
                        f"slices of {first.Columns} x {first.Rows}; DICOM outputs need the map on the series' own grid.")
    from pipeline.dicom.read import SPACING_TOLERANCE

    lps = np.diag([-1.0, -1.0, 1.0]) @ np.asarray(affine, dtype=np.float64)[:3]  # (3, 4) voxel -> LPS mm
    # the reader accepts steps within 1% of the median and lays the map on the even grid of that median step, while
    # each frame keeps its own slice's position (highdicom copies it): they may differ by that much, no more
    tolerance = max(POSITION_TOLERANCE_MM, SPACING_TOLERANCE * float(np.linalg.norm(lps[:, 2])))
    for k, header in enumerate(headers):
        position = lps @ np.array([0.0, 0.0, float(k), 1.0])
        cosines = np.asarray([float(v) for v in header.ImageOrientationPatient])
        spacing = [float(v) for v in header.PixelSpacing]  # (row spacing = along Y, column spacing = along X)
        axes = np.stack([cosines[:3] * spacing[1], cosines[3:] * spacing[0]], axis=1)  # voxel X and Y steps in LPS
        if (not np.allclose(position, [float(v) for v in header.ImagePositionPatient], atol=tolerance)
                or not np.allclose(lps[:, :2], axes, atol=1e-4)):
            raise DataError(f"{folder}: slice {k} of the map lies at {np.round(position, 3).tolist()} (LPS mm) but the "
                            f"series' slice {k} at {[float(v) for v in header.ImagePositionPatient]}; the map is not on "
                            "the series' grid: write NIfTI (--output-format nifti) or explain the series itself.")


def _algorithm(provenance: dict[str, Any] | None) -> Any:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from pipeline.outputs.provenance import short_provenance, tool_version

    provenance = provenance or {}
    hashes = {f"{role}_sha256": entry["sha256"] for role, entry in provenance.get("checkpoints", {}).items()
              if role in ("utility", "noise")}
    version = short_provenance(provenance)[:64] if provenance else f"unoise {tool_version()}"
    return hd.AlgorithmIdentificationSequence(name="U-Noise (unoise-pipeline)", family=codes.cid7162.ArtificialIntelligence,
                                              version=version, source=MANUFACTURER, parameters=hashes or None)


def _common(provenance: dict[str, Any] | None) -> dict[str, Any]:
    import highdicom as hd

    from pipeline.outputs.provenance import short_provenance, tool_version

    return {"sop_instance_uid": hd.UID(), "instance_number": 1, "manufacturer": MANUFACTURER,
            "manufacturer_model_name": "U-Noise", "software_versions": tool_version(), "device_serial_number": "0",
            "content_description": (short_provenance(provenance) if provenance else f"unoise {tool_version()}")[:64]}


def write_dicom_seg(headers: Sequence[Any], seg: np.ndarray, path: str | os.PathLike,
                    provenance: dict[str, Any] | None = None, label: str = "pancreas") -> Path:
    """A binary DICOM SEG of ``seg`` (X, Y, Z) uint8 {0, 1}: one segment ``label`` (SNOMED CT Pancreas), every source
    slice a frame (empty ones kept, so frames map one to one), the algorithm named with the checkpoints' SHA-256."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    frames = np.ascontiguousarray(np.asarray(seg, dtype=np.uint8).transpose(2, 1, 0))  # (Z, rows=Y, columns=X)
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label=label, segmented_property_category=codes.SCT.Organ,
        segmented_property_type=codes.SCT.Pancreas, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=_algorithm(provenance))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = hd.seg.Segmentation(
            headers, frames, hd.seg.SegmentationTypeValues.BINARY, [segment], series_instance_uid=hd.UID(),
            series_number=SEG_SERIES_NUMBER, omit_empty_frames=False, **_common(provenance))
    dataset.SeriesDescription = f"unoise segmentation ({label})"
    return _save(dataset, path)


def write_parametric_map(headers: Sequence[Any], importance: np.ndarray, path: str | os.PathLike,
                         provenance: dict[str, Any] | None = None) -> Path:
    """A DICOM Parametric Map of ``importance`` (X, Y, Z) float32 in [0, 1]: float pixels, a real-world value map
    (identity, no unit, range [0, 1]) saying what the values are, a display window over [0, 1]."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    values = np.asarray(importance, dtype=np.float32)
    if not np.isfinite(values).all() or values.min() < 0.0 or values.max() > 1.0:
        raise ValueError(f"{path}: importance must be finite and in [0, 1], got [{values.min()}, {values.max()}].")
    frames = np.ascontiguousarray(values.transpose(2, 1, 0))  # (Z, rows=Y, columns=X)
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="importance", lut_explanation="U-Noise importance = 1 - noise tolerance; 1 = most important",
        unit=codes.UCUM.NoUnits, value_range=(0.0, 1.0), slope=1.0, intercept=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = hd.pm.ParametricMap(
            headers, frames, series_instance_uid=hd.UID(), series_number=MAP_SERIES_NUMBER,
            contains_recognizable_visual_features=False, real_world_value_mappings=[mapping],
            voi_lut_transformations=[hd.VOILUTTransformation(window_center=0.5, window_width=1.0,
                                                             window_explanation="importance 0 to 1")],
            **_common(provenance))
    dataset.SeriesDescription = "unoise importance map"
    return _save(dataset, path)


def _raised_in_dicom_library(err: BaseException) -> bool:
    """True when highdicom or pydicom raised ``err`` (what it refused is in the source headers, not in our code)."""
    frame, last = err.__traceback__, None
    while frame is not None:
        last, frame = frame, frame.tb_next
    filename = last.tb_frame.f_code.co_filename if last is not None else ""
    return any(f"{os.sep}{name}{os.sep}" in filename for name in ("highdicom", "pydicom"))


def _save(dataset: Any, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        dataset.save_as(tmp, enforce_file_format=True)
    return path


def write_case_dicom(output_dir: str | os.PathLike, case: str, maps: dict[str, np.ndarray], affine: np.ndarray,
                     folder: str | os.PathLike, series: str | None = None,
                     provenance: dict[str, Any] | None = None) -> list[Path]:
    """``<case>_importance.dcm`` (Parametric Map) and ``<case>_seg.dcm`` (SEG) of a case read from the DICOM series
    in ``folder``, after the geometry check (nothing is written when it fails)."""
    headers = source_headers(folder, series)
    check_frames_geometry(headers, affine, maps["seg"].shape, folder)
    output_dir = Path(output_dir)
    written: list[Path] = []
    try:
        written.append(write_parametric_map(headers, maps["importance"], output_dir / f"{case}{DICOM_SUFFIXES[0]}", provenance))
        written.append(write_dicom_seg(headers, maps["seg"], output_dir / f"{case}{DICOM_SUFFIXES[1]}", provenance))
    except Exception as err:  # both or neither: a Parametric Map without its SEG is not left behind
        for path in written:
            path.unlink(missing_ok=True)
        if _raised_in_dicom_library(err) and not isinstance(err, DataError):
            # highdicom's refusal of something in the source headers: the series', not ours; one line, NIfTI still with both
            raise DataError(f"{folder}: highdicom cannot derive a DICOM SEG / Parametric Map from this series "
                            f"({failure_reason(err)}); pass --output-format nifti, or both (NIfTI maps for it).") from err
        raise
    return written


__all__ = ["DICOM_SUFFIXES", "OUTPUT_FORMATS", "check_dicom_inputs", "complete_headers", "check_frames_geometry", "output_suffixes", "source_headers",
           "write_case_dicom", "write_dicom_seg", "write_parametric_map"]
