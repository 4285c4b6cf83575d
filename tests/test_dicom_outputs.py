"""DICOM SEG and Parametric Map of a DICOM series input: read back with pydicom and highdicom, their frames and
positions equal the NIfTI outputs, they reference the source series and carry its patient and study."""

from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest

from conftest import write_dicom_series
from pipeline.data import load_volume
from pipeline.errors import DataError
from pipeline.dicom.write import write_case_dicom

# an oblique-free but flipped, anisotropic grid: the x axis runs right to left in RAS, so LPS x runs +
AFFINE = np.array([[-0.7, 0.0, 0.0, 12.0], [0.0, 0.9, 0.0, -20.0], [0.0, 0.0, 2.5, 30.0], [0.0, 0.0, 0.0, 1.0]])
PROVENANCE = {"tool_version": "0.1.0", "checkpoints": {"utility": {"sha256": "ab" * 32}, "noise": {"sha256": "cd" * 32}}}


def _reversed_series(folder: Path, shape: tuple[int, int, int] = (10, 7, 6)) -> Path:
    """A series whose InstanceNumber runs against the slice position (as many scanners write feet-first)."""
    array = np.random.default_rng(0).integers(-1000, 1000, size=shape).astype(np.int16)
    write_dicom_series(folder, array, AFFINE)
    files = sorted(folder.glob("*.dcm"))
    for number, path in enumerate(files[::-1]):
        header = pydicom.dcmread(path)
        header.InstanceNumber = number + 1
        header.save_as(path)
    return folder


def _maps(shape: tuple[int, int, int]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    seg = np.zeros(shape, np.uint8)
    seg[2:6, 1:4, 1:4] = 1  # slices 0 and 5 stay empty: frames must still map one to one
    return {"importance": rng.random(shape).astype(np.float32), "seg": seg}


def _on_the_grid(dataset: pydicom.Dataset, affine: np.ndarray, slices: int) -> tuple[np.ndarray, list[str]]:
    """The object's frames put back on the NIfTI grid by their own positions: an (X, Y, Z) array and, per slice k,
    the SOPInstanceUID of the source slice the frame says it derives from. Fails unless every frame lies exactly
    on one slice of the grid and every slice has one frame."""
    lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3]  # (3, 4) voxel -> LPS
    frames = dataset.pixel_array.reshape(-1, int(dataset.Rows), int(dataset.Columns))
    volume = np.zeros((int(dataset.Columns), int(dataset.Rows), slices), frames.dtype)
    sources: list[str | None] = [None] * slices
    for frame, item in zip(frames, dataset.PerFrameFunctionalGroupsSequence):
        position = np.asarray([float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient])
        k = int(round(float(np.linalg.lstsq(lps[:, :3], position - lps[:, 3], rcond=None)[0][2])))
        assert np.allclose(lps @ np.array([0.0, 0.0, k, 1.0]), position, atol=1e-3)  # on slice k, in-plane origin too
        assert sources[k] is None  # one frame per slice
        volume[:, :, k] = frame.T
        sources[k] = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
    assert None not in sources
    return volume, sources  # type: ignore[return-value]


def _source_uids_by_slice(folder: Path, affine: np.ndarray) -> list[str]:
    lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3]
    found = {}
    for path in folder.glob("*.dcm"):
        header = pydicom.dcmread(path, stop_before_pixels=True)
        position = np.asarray([float(v) for v in header.ImagePositionPatient]) - lps[:, 3]
        found[int(round(float(np.linalg.lstsq(lps[:, :3], position, rcond=None)[0][2])))] = header.SOPInstanceUID
    return [found[k] for k in sorted(found)]


def test_seg_and_parametric_map_read_back_frame_for_frame_with_the_source_identifiers(tmp_path: Path) -> None:
    folder = _reversed_series(tmp_path / "ct")
    volume = load_volume(folder)
    affine, shape = np.asarray(volume.affine), tuple(volume.shape)
    maps = _maps(shape)
    written = write_case_dicom(tmp_path / "out", "case", maps, affine, folder, provenance=PROVENANCE)
    assert [p.name for p in written] == ["case_importance.dcm", "case_seg.dcm"]
    source = pydicom.dcmread(sorted(folder.glob("*.dcm"))[0])

    seg = pydicom.dcmread(written[1])
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
    seg_volume, seg_sources = _on_the_grid(seg, affine, shape[2])
    assert int(seg.NumberOfFrames) == shape[2]  # empty slices kept: one frame per source slice
    assert np.array_equal(seg_volume, maps["seg"])
    assert seg_sources == _source_uids_by_slice(folder, affine)  # each frame derives from the slice it lies on
    segment = seg.SegmentSequence[0]
    assert segment.SegmentLabel == "pancreas" and segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "15776009"
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName.startswith("U-Noise") and "u:abababab n:cdcdcdcd" in algorithm.AlgorithmVersion
    assert "u:abababab" in seg.ContentDescription

    pmap = pydicom.dcmread(written[0])
    assert pmap.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30"  # Parametric Map Storage
    assert pmap.pixel_array.dtype == np.float32
    pmap_volume, pmap_sources = _on_the_grid(pmap, affine, shape[2])
    assert np.array_equal(pmap_volume, maps["importance"])
    assert pmap_sources == seg_sources
    mapping = pmap.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert (mapping.DoubleFloatRealWorldValueFirstValueMapped, mapping.DoubleFloatRealWorldValueLastValueMapped) == (0.0, 1.0)
    assert (mapping.RealWorldValueSlope, mapping.RealWorldValueIntercept) == (1.0, 0.0)
    assert mapping.LUTLabel == "importance" and "tolerance" in mapping.LUTExplanation

    for derived in (seg, pmap):  # the source's patient and study modules, and a reference to its series
        assert (derived.PatientName, derived.PatientID) == (source.PatientName, source.PatientID) == ("Doe^Jane", "PID-0001")
        assert derived.StudyInstanceUID == source.StudyInstanceUID
        assert derived.FrameOfReferenceUID == source.FrameOfReferenceUID
        assert derived.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
        referenced = {item.ReferencedSOPInstanceUID for item in derived.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
        assert referenced == {pydicom.dcmread(p).SOPInstanceUID for p in folder.glob("*.dcm")}
        assert derived.SeriesInstanceUID != source.SeriesInstanceUID

    # highdicom reads its own objects back onto the same volume
    segmentation = hd.seg.segread(written[1])
    assert segmentation.number_of_segments == 1 and segmentation.get_segment_description(1).segment_label == "pancreas"


def test_a_map_off_the_series_grid_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    folder = _reversed_series(tmp_path / "ct")
    volume = load_volume(folder)
    shifted = np.asarray(volume.affine).copy()
    shifted[2, 3] += 2.5  # one slice off
    with pytest.raises(DataError, match=r"ct: slice 0 of the map lies at .* not on the series' grid"):
        write_case_dicom(tmp_path / "out", "case", _maps(tuple(volume.shape)), shifted, folder)
    with pytest.raises(DataError, match=r"the map is 10 x 7 x 5 voxels but the series has 6 slices of 10 x 7"):
        write_case_dicom(tmp_path / "out", "case", _maps((10, 7, 5)), np.asarray(volume.affine), folder)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


@pytest.mark.slow
def test_explain_writes_dicom_beside_nifti_and_refuses_dicom_for_a_nifti_input(tiny_pair: dict[str, Path], tmp_path: Path,
                                                                               capsys: pytest.CaptureFixture) -> None:
    from pipeline.cli import main

    array = np.random.default_rng(2).integers(-1000, 400, size=(32, 32, 12)).astype(np.int16)
    folder = write_dicom_series(tmp_path / "study_ct", array, AFFINE)
    out = tmp_path / "maps"
    common = ["--noise", str(tiny_pair["noise"]), "--utility", str(tiny_pair["utility"]), "--device", "cpu",
              "--spatial_size", "32"]
    assert main(["explain", "--input", str(folder), "--output", str(out), "--output-format", "both", *common]) == 0
    importance = nib.load(str(out / "study_ct_importance.nii.gz"))
    seg = np.asarray(nib.load(str(out / "study_ct_seg.nii.gz")).dataobj)
    pmap, seg_dicom = pydicom.dcmread(out / "study_ct_importance.dcm"), pydicom.dcmread(out / "study_ct_seg.dcm")
    assert np.array_equal(_on_the_grid(pmap, importance.affine, 12)[0], np.asarray(importance.dataobj))
    assert np.array_equal(_on_the_grid(seg_dicom, importance.affine, 12)[0], seg)
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["cases"][0]["outputs"]) == ["study_ct_importance.dcm", "study_ct_importance.nii.gz",
                                                       "study_ct_seg.dcm", "study_ct_seg.nii.gz"]
    assert manifest["run"]["config"]["output_format"] == "both"

    nifti_input = tiny_pair["data"] / "imagesTs"
    capsys.readouterr()
    assert main(["explain", "--input", str(next(nifti_input.glob("*.nii.gz"))), "--output", str(tmp_path / "nifti"),
                 "--output-format", "dicom", *common]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "not a DICOM series folder" in error and "--output-format nifti" in error
    assert not list((tmp_path / "nifti").glob("*.dcm")) if (tmp_path / "nifti").exists() else True


def test_phantom_dicom_copies_read_back_as_their_nifti(tmp_path: Path) -> None:
    from pipeline.cli import main

    assert main(["phantom", "--out", str(tmp_path / "ph"), "--cases", "1", "--size", "32", "--slices", "8",
                 "--test-cases", "2", "--dicom"]) == 0
    for nifti in sorted((tmp_path / "ph" / "imagesTs").glob("*.nii.gz")):  # one LPS and one RAS case on disk
        series = tmp_path / "ph" / "dicomTs" / nifti.name.replace(".nii.gz", "")
        original, copy = load_volume(nifti), load_volume(series)
        assert np.array_equal(np.asarray(copy), np.rint(np.asarray(original)))  # HU rounded to int16, same voxels
        assert np.allclose(np.asarray(copy.affine), np.asarray(original.affine), atol=1e-4)
        assert pydicom.dcmread(next(series.glob("*.dcm"))).PatientID == f"PHANTOM-{series.name}"


def _scanner_series(folder: Path, blank: str = "", shape: tuple[int, int, int] = (10, 7, 6)) -> Path:
    """A series as anonymising exports of a scanner leave it: vendor private blocks, an empty SOPClassUID (in the file
    meta too), no specimen module, single-frame CT images; and optionally one more identifier ``blank``."""
    write_dicom_series(folder, np.random.default_rng(3).integers(-1000, 400, size=shape).astype(np.int16), AFFINE)
    for path in sorted(folder.glob("*.dcm")):
        header = pydicom.dcmread(path)
        header.SOPClassUID = ""
        header.file_meta.MediaStorageSOPClassUID = ""
        block = header.private_block(0x0019, "SIEMENS CT VA0  COAD", create=True)
        block.add_new(0x08, "DS", "1.5")
        block.add_new(0x10, "LO", "vendor specific")
        header.add_new(0x00291010, "OB", b"\x00\x01" * 40)  # an opaque private CSA-like element without its creator
        if blank:
            setattr(header, blank, "")
        header.save_as(path)
    return folder


def test_a_blank_sop_class_of_a_ct_series_is_inferred_and_vendor_tags_do_not_matter(tmp_path: Path, caplog) -> None:
    from pipeline.dicom.write import CT_IMAGE_STORAGE

    folder = _scanner_series(tmp_path / "scanner")
    volume = load_volume(folder)
    affine = np.asarray(volume.affine)
    with caplog.at_level("WARNING"):
        written = write_case_dicom(tmp_path / "out", "case", _maps(tuple(volume.shape)), affine, folder)
    assert "SOPClassUID from CT Image Storage (Modality CT)" in caplog.text
    for path in written:
        derived = hd.imread(str(path)) if path.name.endswith("_seg.dcm") else pydicom.dcmread(path)
        referenced = derived.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
        assert referenced.ReferencedSOPClassUID == CT_IMAGE_STORAGE
    assert np.array_equal(_on_the_grid(pydicom.dcmread(written[1]), affine, volume.shape[2])[0], _maps(tuple(volume.shape))["seg"])


@pytest.mark.slow
def test_a_blank_frame_of_reference_refuses_dicom_in_one_line_and_both_keeps_the_nifti(tiny_pair: dict[str, Path],
                                                                                         tmp_path: Path, capsys) -> None:
    from pipeline.cli import main

    folder = _scanner_series(tmp_path / "scanner", blank="FrameOfReferenceUID", shape=(32, 32, 12))
    volume = load_volume(folder)
    with pytest.raises(DataError, match="FrameOfReferenceUID is blank"):
        write_case_dicom(tmp_path / "direct", "case", _maps(tuple(volume.shape)), np.asarray(volume.affine), folder)
    assert not (tmp_path / "direct").exists() or not list((tmp_path / "direct").iterdir())

    out = tmp_path / "maps"
    status = main(["explain", "--input", str(folder), "--output", str(out), "--output-format", "both", "--noise",
                   str(tiny_pair["noise"]), "--utility", str(tiny_pair["utility"]), "--device", "cpu", "--spatial-size", "32"])
    printed = capsys.readouterr()
    assert status == 1 and "Traceback" not in printed.err + printed.out  # exit status: not everything asked for was written
    assert "1 with NIfTI maps only" in printed.out and "FrameOfReferenceUID is blank" in printed.out
    assert sorted(p.name for p in out.glob("scanner*")) == ["scanner_importance.nii.gz", "scanner_seg.nii.gz"]
    record = json.loads((out / "manifest.json").read_text())["cases"][0]
    assert record["status"] == "done" and "FrameOfReferenceUID" in record["note"]

    inferred = _scanner_series(tmp_path / "inferred", shape=(32, 32, 12))  # only the SOP class blank: inferred, all written
    out = tmp_path / "maps_inferred"
    status = main(["explain", "--input", str(inferred), "--output", str(out), "--output-format", "both", "--noise",
                   str(tiny_pair["noise"]), "--utility", str(tiny_pair["utility"]), "--device", "cpu", "--spatial-size", "32"])
    printed = capsys.readouterr()
    assert status == 0 and "Traceback" not in printed.err + printed.out and "NIfTI maps only" not in printed.out
    assert sorted(p.name for p in out.glob("inferred*")) == ["inferred_importance.dcm", "inferred_importance.nii.gz",
                                                             "inferred_seg.dcm", "inferred_seg.nii.gz"]
