"""DICOM series on SimpleITK's grid: slices sorted along the slice normal whatever InstanceNumber says, uneven
spacing refused naming the positions, and explain's outputs on that grid."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from conftest import write_dicom_series
from pipeline.data import load_volume
from pipeline.errors import DataError

AFFINE = np.array([[0.8, 0.0, 0.0, -10.0], [0.0, 0.8, 0.0, 20.0], [0.0, 0.0, 2.5, 30.0], [0.0, 0.0, 0.0, 1.0]])


def _series(folder: Path, instance_order: list[int] | None = None, shape: tuple[int, int, int] = (8, 6, 5)) -> Path:
    array = np.random.default_rng(0).integers(-1000, 1000, size=shape).astype(np.int16)
    write_dicom_series(folder, array, AFFINE)
    files = sorted(folder.glob("*.dcm"))
    for path, number in zip(files, instance_order or range(len(files))):
        header = pydicom.dcmread(path)
        header.InstanceNumber = int(number) + 1
        header.save_as(path)
    return folder


def _simpleitk(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0), np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


@pytest.mark.parametrize("order", ["reversed", "shuffled"])
def test_a_series_reads_as_simpleitk_reads_it_whatever_its_instance_numbers(tmp_path: Path, order: str) -> None:
    numbers = [4, 3, 2, 1, 0] if order == "reversed" else [2, 0, 4, 1, 3]
    folder = _series(tmp_path / order, numbers)
    expected, affine = _simpleitk(folder)
    volume = load_volume(folder)
    assert np.array_equal(np.asarray(volume), expected)  # the same voxel order (InstanceNumber sorting scrambled it)
    assert np.allclose(np.asarray(volume.affine), affine, atol=1e-4)  # the same origin, direction and spacing
    assert np.allclose(np.asarray(volume.affine)[:3, 2], [0.0, 0.0, 2.5], atol=1e-4)


def test_a_gap_or_a_duplicate_slice_is_refused_naming_the_positions(tmp_path: Path) -> None:
    folder = _series(tmp_path / "gap")
    sorted(folder.glob("*.dcm"))[2].unlink()  # the middle slice is missing
    with pytest.raises(DataError, match=r"uneven slice spacing \(median 2.50 mm; 32.50 -> 37.50 mm\)"):
        load_volume(folder)
    folder = _series(tmp_path / "twice")
    first = sorted(folder.glob("*.dcm"))[0]
    (folder / "copy.dcm").write_bytes(first.read_bytes())
    with pytest.raises(DataError, match=r"two slices at one position \(30.00 mm along the slice normal\)"):
        load_volume(folder)


@pytest.mark.slow
def test_explain_writes_on_the_simpleitk_grid_of_a_reversed_series(tiny_pair: dict[str, Path], tmp_path: Path) -> None:
    from pipeline.cli import main

    folder = _series(tmp_path / "reversed_ct", list(range(12))[::-1], shape=(32, 32, 12))
    _, affine = _simpleitk(folder)
    assert main(["explain", "--input", str(folder), "--output", str(tmp_path / "maps"), "--noise", str(tiny_pair["noise"]),
                 "--utility", str(tiny_pair["utility"]), "--device", "cpu", "--spatial_size", "32"]) == 0
    written = nib.load(str(tmp_path / "maps" / "reversed_ct_importance.nii.gz"))
    assert written.shape == (32, 32, 12) and np.allclose(written.affine, affine, atol=1e-4)


def test_an_uneven_series_is_resampled_onto_an_even_grid_on_request(tmp_path: Path) -> None:
    folder = _series(tmp_path / "gap")
    source = load_volume(folder)  # the complete series, before the slice goes
    sorted(folder.glob("*.dcm"))[2].unlink()  # the slice at 35 mm is missing
    volume = load_volume(folder, resample_uneven=True)
    assert tuple(volume.shape) == tuple(source.shape)  # 30 .. 40 mm every 2.5 mm again
    assert np.allclose(np.asarray(volume.affine), np.asarray(source.affine), atol=1e-4)
    kept, array = np.asarray(source), np.asarray(volume)
    for k in (0, 1, 3, 4):  # on a source slice: that slice exactly
        assert np.array_equal(array[:, :, k], kept[:, :, k])
    assert np.allclose(array[:, :, 2], (kept[:, :, 1] + kept[:, :, 3]) / 2)  # the gap: its neighbours' mean
    assert volume.meta["resampled_from"] == [30.0, 32.5, 37.5, 40.0]
    even = load_volume(_series(tmp_path / "even"), resample_uneven=True)  # an even series is read as it is
    assert "resampled_from" not in even.meta and np.array_equal(np.asarray(even), kept)


@pytest.mark.slow
def test_explain_resamples_on_request_and_refuses_dicom_outputs_for_it(tiny_pair: dict[str, Path], tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    from pipeline.cli import main

    folder = _series(tmp_path / "gap_ct", shape=(32, 32, 12))
    sorted(folder.glob("*.dcm"))[5].unlink()
    common = ["--input", str(folder), "--noise", str(tiny_pair["noise"]), "--utility", str(tiny_pair["utility"]),
              "--device", "cpu", "--spatial_size", "32"]
    assert main(["explain", *common, "--output", str(tmp_path / "refused")]) == 2  # refused by default, naming positions
    assert "uneven slice spacing" in capsys.readouterr().err
    assert main(["explain", *common, "--output", str(tmp_path / "maps"), "--resample_uneven", "true"]) == 0
    written = nib.load(str(tmp_path / "maps" / "gap_ct_importance.nii.gz"))
    assert written.shape == (32, 32, 12) and np.allclose(written.affine[:3, 2], [0.0, 0.0, 2.5], atol=1e-4)
    capsys.readouterr()
    assert main(["explain", *common, "--output", str(tmp_path / "dicom"), "--resample_uneven", "true",
                 "--output-format", "dicom"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len([line for line in error if line.startswith("error: ")]) == 1 and "resampled onto an even grid" in error[-1]
    assert not list((tmp_path / "dicom").glob("*.dcm")) if (tmp_path / "dicom").exists() else True
