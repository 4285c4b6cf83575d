"""Tests of pipeline.phantom: tiny synthetic volumes, CPU only, everything written under tmp_path."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from monai.data import load_decathlon_datalist

from pipeline.phantom import PANCREAS_LABEL, TUMOUR_LABEL, PhantomCase, generate_case, write_phantom_dataset

SIZE, SLICES = 64, 16  # tiny and non-cubic


@pytest.fixture(scope="module")
def case() -> PhantomCase:
    return generate_case(3, size=SIZE, slices=SLICES, tumour=True)


def _load(path) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(str(path))
    return np.asanyarray(image.dataobj), image.affine


def test_same_seed_gives_identical_case():
    first, second = generate_case(7, SIZE, SLICES), generate_case(7, SIZE, SLICES)
    np.testing.assert_array_equal(first.image, second.image)
    np.testing.assert_array_equal(first.label, second.label)
    np.testing.assert_array_equal(first.affine, second.affine)


def test_different_seed_gives_different_image():
    assert not np.array_equal(generate_case(7, SIZE, SLICES).image, generate_case(8, SIZE, SLICES).image)


def test_dtypes_and_shapes(case):
    assert case.image.dtype == np.int16 and case.image.shape == (SIZE, SIZE, SLICES)
    assert case.label.dtype == np.uint8 and case.label.shape == (SIZE, SIZE, SLICES)
    assert case.affine.dtype == np.float64 and case.affine.shape == (4, 4)


def test_label_values_are_background_pancreas_tumour(case):
    assert set(np.unique(case.label)) <= {0, PANCREAS_LABEL, TUMOUR_LABEL}


@pytest.mark.parametrize("seed, size, slices", [(0, 32, 8), (1, 64, 16), (2, 48, 10), (5, 64, 24)])
def test_pancreas_in_one_contiguous_band_of_slices(seed, size, slices):
    present = np.nonzero((generate_case(seed, size, slices).label > 0).any(axis=(0, 1)))[0]
    assert len(present) >= 0.2 * slices and len(present) < slices
    assert np.all(np.diff(present) == 1)


def test_tumour_lies_inside_the_pancreas_of_the_same_seed():
    with_tumour = generate_case(4, SIZE, SLICES, tumour=True).label
    without = generate_case(4, SIZE, SLICES, tumour=False).label
    assert (with_tumour == TUMOUR_LABEL).any() and not (without == TUMOUR_LABEL).any()
    np.testing.assert_array_equal(with_tumour > 0, without > 0)  # same gland; the tumour only relabels


def test_seed_decides_tumour_for_about_half_the_cases():
    has_tumour = [bool((generate_case(seed, 32, 8).label == TUMOUR_LABEL).any()) for seed in range(20)]
    assert 3 <= sum(has_tumour) <= 17


def test_pancreas_median_hu_is_soft_tissue(case):
    assert 60 <= np.median(case.image[case.label == PANCREAS_LABEL]) <= 140


def test_tumour_is_hypodense(case):
    assert np.median(case.image[case.label == TUMOUR_LABEL]) < np.median(case.image[case.label == PANCREAS_LABEL])


def test_air_outside_and_hu_floor(case):
    assert np.median(case.image[:4, :4, :]) < -900
    assert case.image.min() >= -1024


def test_no_threshold_isolates_the_pancreas(case):
    soft = case.image[(case.label == 0) & (case.image >= -50) & (case.image <= 250)]
    low, high = np.percentile(soft, [5, 95])
    assert low < np.median(case.image[case.label > 0]) < high


def test_lps_case_reoriented_equals_ras_case():
    ras = generate_case(11, SIZE, SLICES, orientation="RAS")
    lps = generate_case(11, SIZE, SLICES, orientation="LPS")
    assert nib.aff2axcodes(lps.affine) == ("L", "P", "S") and nib.aff2axcodes(ras.affine) == ("R", "A", "S")
    for lps_array, ras_array in ((lps.image, ras.image), (lps.label, ras.label)):
        canonical = nib.as_closest_canonical(nib.Nifti1Image(lps_array, lps.affine))
        np.testing.assert_array_equal(np.asanyarray(canonical.dataobj), ras_array)
        np.testing.assert_allclose(canonical.affine, ras.affine, atol=1e-9)


def test_dataset_round_trip_with_monai(tmp_path):
    path = write_phantom_dataset(tmp_path / "set", cases=3, size=32, slices=8, seed=1, test_cases=1)
    meta = json.loads(path.read_text())
    assert (meta["numTraining"], meta["numTest"]) == (3, 1)
    assert meta["test"] == ["./imagesTs/pancreas_003.nii.gz"]
    items = load_decathlon_datalist(str(path), data_list_key="training")
    assert len(items) == 3
    for item in items:
        (image, image_affine), (label, label_affine) = _load(item["image"]), _load(item["label"])
        assert image.dtype == np.int16 and label.dtype == np.uint8 and image.shape == label.shape == (32, 32, 8)
        np.testing.assert_allclose(image_affine, label_affine)
    assert (tmp_path / "set" / "imagesTs" / "pancreas_003.nii.gz").is_file()
    assert not (tmp_path / "set" / "labelsTr" / "pancreas_003.nii.gz").exists()


def test_dataset_alternates_ras_and_lps_storage(tmp_path):
    write_phantom_dataset(tmp_path, cases=2, size=32, slices=8)
    affines = [_load(tmp_path / "imagesTr" / f"pancreas_00{index}.nii.gz")[1] for index in (0, 1)]
    assert [nib.aff2axcodes(affine) for affine in affines] == [("R", "A", "S"), ("L", "P", "S")]


def test_dataset_same_seed_rewrites_identical_arrays(tmp_path):
    for name in ("a", "b", "c"):
        write_phantom_dataset(tmp_path / name, cases=2, size=32, slices=8, seed=5 if name != "c" else 6)
    arrays = {name: _load(tmp_path / name / "imagesTr" / "pancreas_001.nii.gz")[0] for name in ("a", "b", "c")}
    np.testing.assert_array_equal(arrays["a"], arrays["b"])
    assert not np.array_equal(arrays["a"], arrays["c"])


def test_dataset_leaves_no_temporary_files(tmp_path):
    write_phantom_dataset(tmp_path, cases=1, size=32, slices=8, test_cases=1)
    assert not [p for p in tmp_path.rglob(".*")]


@pytest.mark.parametrize("kwargs, match", [
    ({"cases": 0}, "cases must be an integer >= 1; received 0"),
    ({"size": 100}, "size must be divisible by 16.*received 100"),
    ({"size": 16}, "size must be an integer >= 32; received 16"),
    ({"slices": 4}, "slices must be an integer >= 8; received 4"),
    ({"test_cases": -1}, "test_cases must be an integer >= 0; received -1"),
    ({"seed": -3}, "seed must be an integer >= 0; received -3"),
    ({"size": 64.0}, r"size must be an integer >= 32; received 64.0 \(float\)"),
])
def test_write_dataset_rejects_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        write_phantom_dataset(tmp_path, **kwargs)
    assert not (tmp_path / "dataset.json").exists()


def test_generate_case_rejects_unknown_orientation():
    with pytest.raises(ValueError, match=r"orientation must be one of \('RAS', 'LPS'\); received 'RAI'"):
        generate_case(0, 32, 8, orientation="RAI")


def test_small_dataset_writes_every_case(tmp_path):
    write_phantom_dataset(tmp_path, cases=4, size=64, slices=16)
    assert len(list((tmp_path / "imagesTr").glob("*.nii.gz"))) == len(list((tmp_path / "labelsTr").glob("*.nii.gz"))) == 4
