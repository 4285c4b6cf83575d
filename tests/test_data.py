"""The data path: datalists, validation errors, DICOM, transforms, slice policies, split, cache."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import SHAPE, make_volume, write_dicom_series, write_nifti
from monai.transforms import Compose, Lambdad

from pipeline.data import (
    SliceDataset,
    build_slice_dataset,
    compute_body_mask,
    build_volume_dataset,
    build_volume_transforms,
    load_datalist,
    load_volume,
    resolve_window,
    split_datalist,
    validate_datalist,
    write_datalist,
)
from pipeline.errors import DataError

# ---------------------------------------------------------------- datalists


def test_msd_folder_gives_absolute_paths_and_case_names(msd_dir: Path) -> None:
    datalist = load_datalist(msd_dir)
    assert [e["case"] for e in datalist] == [f"pancreas_{i:03d}" for i in range(5)]
    assert all(Path(e["image"]).is_absolute() and Path(e["label"]).is_file() for e in datalist)


def test_json_list_paths_are_relative_to_the_json(msd_dir: Path, tmp_path: Path) -> None:
    listing = tmp_path / "lists" / "mine.json"
    listing.parent.mkdir()
    listing.write_text(json.dumps([{"image": "../Task07_Mini/imagesTr/pancreas_001.nii.gz",
                                    "label": "../Task07_Mini/labelsTr/pancreas_001.nii.gz"}]))
    (entry,) = load_datalist(listing, allow_outside_paths=True)
    assert Path(entry["image"]) == (msd_dir / "imagesTr" / "pancreas_001.nii.gz").resolve()
    with pytest.raises(DataError, match="lies outside the dataset folder .*--allow-outside-paths "):
        load_datalist(listing)


def test_plain_folder_finds_nifti_files_and_dicom_series(msd_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a.nii.gz").write_bytes((msd_dir / "imagesTr" / "pancreas_000.nii.gz").read_bytes())
    image, _ = make_volume(0)
    write_dicom_series(folder / "scan b", image, np.diag([0.8, 0.9, 3.0, 1.0]))
    names = sorted(e["case"] for e in load_datalist(folder))
    assert names == ["a", "scan_b"]


def test_empty_folder_and_empty_list_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="found no"):
        load_datalist(tmp_path)
    listing = tmp_path / "empty.json"
    listing.write_text("[]")
    with pytest.raises(DataError, match="empty"):
        load_datalist(listing)
    with pytest.raises(DataError, match="empty"):
        validate_datalist([])


def test_missing_source_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nowhere: no such file"):
        load_datalist(tmp_path / "nowhere")


# ---------------------------------------------------------------- validation errors name the file


def test_valid_set_summary(msd_dir: Path) -> None:
    summary = validate_datalist(load_datalist(msd_dir), progress=False)
    info = summary.as_dict()
    assert info["cases"] == 5 and info["slices"] == 5 * SHAPE[2]
    assert info["slices_with_pancreas"] == 5 * 4
    assert set(info["label_voxels"]) == {"0", "1", "2"}
    assert info["spacing_mm_min"] == [0.8, 0.9, 3.0]
    assert "with pancreas: 20" in summary.format()


def test_missing_file(msd_dir: Path) -> None:
    datalist = load_datalist(msd_dir)
    Path(datalist[2]["label"]).unlink()
    with pytest.raises(DataError, match=r"labelsTr/pancreas_002.nii.gz: file not found"):
        validate_datalist(datalist, progress=False)


def test_truncated_file(msd_dir: Path) -> None:
    path = msd_dir / "imagesTr" / "pancreas_001.nii.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"imagesTr/pancreas_001.nii.gz: the file is truncated or its header is corrupt"):
        validate_datalist(load_datalist(msd_dir), progress=False)


def test_four_d_file(msd_dir: Path, affine: np.ndarray) -> None:
    image, _ = make_volume(1)
    write_nifti(msd_dir / "imagesTr" / "pancreas_003.nii.gz", np.stack([image, image], axis=-1), affine)
    with pytest.raises(DataError, match=r"pancreas_003.nii.gz: expected one 3D volume, the header says 4D shape \(20, 24, 10, 2\)"):
        validate_datalist(load_datalist(msd_dir), progress=False)


def test_label_shape_mismatch(msd_dir: Path, affine: np.ndarray) -> None:
    _, label = make_volume(0)
    write_nifti(msd_dir / "labelsTr" / "pancreas_000.nii.gz", label[:, :, :-1], affine)
    with pytest.raises(DataError, match=r"labelsTr/pancreas_000.nii.gz: label shape \(20, 24, 9\) differs from image shape"):
        validate_datalist(load_datalist(msd_dir), progress=False)


def test_label_geometry_mismatch(msd_dir: Path, affine: np.ndarray) -> None:
    _, label = make_volume(0)
    shifted = affine.copy()
    shifted[:3, 3] = [5.0, 0.0, 0.0]
    write_nifti(msd_dir / "labelsTr" / "pancreas_000.nii.gz", label, shifted)
    with pytest.raises(DataError, match=r"labelsTr/pancreas_000.nii.gz: label geometry differs"):
        validate_datalist(load_datalist(msd_dir), progress=False)


def test_label_values_outside_the_configured_set(msd_dir: Path, affine: np.ndarray) -> None:
    _, label = make_volume(0)
    label[0, 0, 0] = 7
    write_nifti(msd_dir / "labelsTr" / "pancreas_000.nii.gz", label, affine)
    with pytest.raises(DataError, match=r"pancreas_000.nii.gz: label values \[7\] are outside the configured set \[0, 1, 2\]"):
        validate_datalist(load_datalist(msd_dir), progress=False)
    assert validate_datalist(load_datalist(msd_dir), label_values="any", progress=False).cases


def test_pancreas_numbered_seven_works_by_pancreas_labels_alone(tmp_path: Path, affine: np.ndarray) -> None:
    image, label = make_volume(0)
    label = np.where(label > 0, 7, 0).astype(np.uint8)
    entry = {"image": str(write_nifti(tmp_path / "i.nii.gz", image, affine)),
             "label": str(write_nifti(tmp_path / "l.nii.gz", label, affine))}
    summary = validate_datalist([entry], pancreas_labels=[7], progress=False)
    assert summary.cases[0].pancreas_slices == 4
    volume = build_volume_transforms(pancreas_labels=[7])(entry)
    assert set(torch.unique(volume["label"]).tolist()) == {0.0, 1.0}


def test_nan_voxels(tmp_path: Path, affine: np.ndarray) -> None:
    image = np.zeros(SHAPE, np.float32)
    image[3, 4, 5] = np.nan
    path = write_nifti(tmp_path / "nan.nii.gz", image, affine)
    with pytest.raises(DataError, match=r"nan.nii.gz: 1 NaN or inf voxel\(s\), first at voxel \(3, 4, 5\)"):
        validate_datalist([{"image": str(path)}], progress=False)


def test_missing_label_when_required(msd_dir: Path) -> None:
    entries = [{"image": e["image"], "case": e["case"]} for e in load_datalist(msd_dir)]
    with pytest.raises(DataError, match="no label for this case"):
        validate_datalist(entries, require_labels=True, progress=False)


# ---------------------------------------------------------------- DICOM


def test_dicom_series_reads_back_with_the_same_voxels_and_geometry(tmp_path: Path) -> None:
    image, _ = make_volume(3)
    affine = np.array([[-0.8, 0, 0, 40.0], [0, -0.9, 0, 25.0], [0, 0, 3.0, -60.0], [0, 0, 0, 1]])  # LPS voxel order
    nifti = load_volume(write_nifti(tmp_path / "ref.nii.gz", image, affine))
    dicom = load_volume(write_dicom_series(tmp_path / "series", image, affine))
    assert np.array_equal(np.asarray(dicom), image)
    np.testing.assert_allclose(np.asarray(dicom.affine), np.asarray(nifti.affine), atol=1e-4)


# ---------------------------------------------------------------- transforms


def test_window_presets_and_bounds() -> None:
    assert resolve_window("pancreas") == (-87.0, 199.0)
    assert resolve_window("spleen") == (-57.0, 164.0)
    assert resolve_window([-100, 200]) == (-100.0, 200.0)
    with pytest.raises(ValueError, match="unknown HU window 'liverish'"):
        resolve_window("liverish")
    with pytest.raises(ValueError, match="lower < upper"):
        resolve_window([200, -100])


def test_volume_chain_windows_binarises_and_resizes(msd_dir: Path) -> None:
    entry = load_datalist(msd_dir)[0]
    volume = build_volume_transforms(window="pancreas", spatial_size=16)(entry)
    assert volume["image"].shape == (1, 16, 16, SHAPE[2]) and volume["label"].shape == (1, 16, 16, SHAPE[2])
    assert float(volume["image"].min()) == 0.0 and float(volume["image"].max()) <= 1.0
    assert set(torch.unique(volume["label"]).tolist()) == {0.0, 1.0}


def test_lps_file_is_reoriented_to_the_same_ras_array(tmp_path: Path) -> None:
    image, label = make_volume(5)
    ras = np.diag([0.8, 0.9, 3.0, 1.0])
    lps = ras.copy()
    lps[:2, :2] *= -1
    lps[:2, 3] = [(SHAPE[0] - 1) * 0.8, (SHAPE[1] - 1) * 0.9]  # same world position for every voxel
    entries = []
    for name, aff, img, lab in [("ras", ras, image, label), ("lps", lps, image[::-1, ::-1], label[::-1, ::-1])]:
        entries.append({"image": str(write_nifti(tmp_path / f"{name}_i.nii.gz", np.ascontiguousarray(img), aff)),
                        "label": str(write_nifti(tmp_path / f"{name}_l.nii.gz", np.ascontiguousarray(lab), aff))})
    chain = build_volume_transforms()
    out_ras, out_lps = chain(entries[0]), chain(entries[1])
    assert torch.equal(out_ras["image"].as_tensor(), out_lps["image"].as_tensor())
    assert torch.equal(out_ras["label"].as_tensor(), out_lps["label"].as_tensor())


def test_body_mask_fills_holes_and_drops_the_table() -> None:
    hu = np.full((40, 40), -1000.0)
    yy, xx = np.mgrid[:40, :40]
    hu[(yy - 18) ** 2 + (xx - 20) ** 2 < 14**2] = 40.0  # the patient
    hu[(yy - 18) ** 2 + (xx - 20) ** 2 < 4**2] = -900.0  # bowel gas inside
    hu[36:39, 5:35] = 200.0  # the table, apart from the patient
    body = compute_body_mask(hu)
    assert body[18, 20] and body[18, 30] and not body[37, 20] and not body[1, 1]
    assert not compute_body_mask(np.full((8, 8), -1000.0)).any()


def test_volume_chain_adds_the_body_from_hu_before_the_window(msd_dir: Path) -> None:
    entry = load_datalist(msd_dir)[0]
    volume = build_volume_transforms(window="pancreas", spatial_size=16)(entry)
    body = volume["body"]
    assert body.shape == (1, 16, 16, SHAPE[2]) and set(torch.unique(body).tolist()) == {0.0, 1.0}
    assert float(body[0, :1].max()) == 0.0  # the fixture's air rows (x = 0, 1)
    assert float(body[0, 8].min()) == 1.0  # soft tissue at 40 +- 30 HU: windowed near the floor, but body
    assert torch.allclose(body.affine, volume["image"].affine)


def test_slice_items_carry_the_body_and_extra_keys(msd_dir: Path) -> None:
    entries = [dict(e, twin=e["image"], cue=e["label"]) for e in load_datalist(msd_dir)[:2]]
    dataset = build_slice_dataset(entries, spatial_size=None, policy="pancreas", progress=False,
                                  extra_images=["twin"], extra_masks=["cue"])
    item = dataset[0]
    assert item["body"].shape == item["image"].shape and torch.equal(item["twin"], item["image"])
    assert torch.equal(item["cue"], item["label"])


# ---------------------------------------------------------------- slices, split, cache


@pytest.fixture
def volumes(msd_dir: Path):
    return build_volume_dataset(load_datalist(msd_dir), build_volume_transforms(), cache="memory", progress=False)


def test_slice_policies_count(volumes) -> None:
    pancreas_slices = 4 * len(volumes)
    assert len(SliceDataset(volumes, policy="all")) == SHAPE[2] * len(volumes)
    assert len(SliceDataset(volumes, policy="pancreas")) == pancreas_slices
    mixed = SliceDataset(volumes, policy="mixed", other_fraction=0.5, seed=1)
    assert len(mixed) == pancreas_slices + len(volumes) * 3  # round(0.5 * 6) others per volume


def test_label_free_slices_follow_the_reference_and_carry_no_label(msd_dir: Path) -> None:
    from pipeline.networks.utility import PredictedMask

    low, high = resolve_window("pancreas")
    gland = (100 - low) / (high - low)  # make_volume paints the pancreas at 100 HU

    class Threshold(torch.nn.Module):  # a "utility" that finds 3 x 3 patches of gland
        def forward(self, image: torch.Tensor) -> torch.Tensor:
            flat = ((image - gland).abs() < 1e-3).float()
            return torch.nn.functional.avg_pool2d(flat, 3, 1, 1) * 20 - 19.5

    entries = load_datalist(msd_dir)[:2]
    unlabelled = [{k: v for k, v in e.items() if k != "label"} for e in entries]
    reference = PredictedMask(Threshold(), batch_size=3)
    masks = [reference(build_volume_transforms()({"image": e["image"]})["image"]) for e in unlabelled]
    expected = sum(int(m.flatten(0, 2).any(0).sum()) for m in masks)
    assert expected == len(build_slice_dataset(entries, policy="pancreas", progress=False))  # the gland's slices
    for datalist in (unlabelled, entries):  # labels present but not used: ignored alike
        dataset = build_slice_dataset(datalist, policy="pancreas", use_labels=False, reference=reference, progress=False)
        assert len(dataset) == expected and "label" not in dataset[0]
    with pytest.raises(ValueError, match="needs labels"):
        build_slice_dataset(unlabelled, policy="mixed", progress=False)
    with pytest.raises(DataError, match="no label for this case, while labels are in use"):
        build_slice_dataset([entries[0], unlabelled[1]], use_labels=True, progress=False)


def test_slice_items_are_2d_and_match_the_volume(volumes) -> None:
    dataset = SliceDataset(volumes, policy="pancreas")
    item = dataset[0]
    assert item["image"].shape == (1, SHAPE[0], SHAPE[1]) and item["label"].shape == (1, SHAPE[0], SHAPE[1])
    assert torch.equal(item["image"], volumes[item["volume"]]["image"][..., item["slice"]].as_tensor())
    assert float(item["label"].sum()) > 0


def test_split_is_by_patient_seeded_and_complete(msd_dir: Path, tmp_path: Path) -> None:
    datalist = load_datalist(msd_dir)
    for i, entry in enumerate(datalist):
        entry["patient"] = f"p{i // 2}"  # two scans for patients p0, p1
    splits = split_datalist(datalist, val_fraction=0.34, test_fraction=0.0, seed=3)
    assert splits == split_datalist(datalist, val_fraction=0.34, test_fraction=0.0, seed=3)
    patients = {name: {e["patient"] for e in part} for name, part in splits.items()}
    assert not patients["training"] & patients["validation"]
    assert sorted(e["case"] for part in splits.values() for e in part) == sorted(e["case"] for e in datalist)
    path = write_datalist(splits, msd_dir / "split.json")
    assert [e["image"] for e in load_datalist(path, key="validation")] == [e["image"] for e in splits["validation"]]
    outside = write_datalist(splits, tmp_path / "split" / "datalist.json")
    assert [e["image"] for e in load_datalist(outside, "validation", allow_outside_paths=True)] == [e["image"] for e in splits["validation"]]


@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_cache_decodes_each_volume_once(msd_dir: Path, tmp_path: Path, mode: str) -> None:
    calls: list[str] = []

    def count(case: str) -> str:
        calls.append(case)
        return case

    transform = Compose([build_volume_transforms(), Lambdad("case", count)])
    datalist = load_datalist(msd_dir)
    volumes = build_volume_dataset(datalist, transform, cache=mode, cache_dir=tmp_path / "cache", progress=False)
    dataset = SliceDataset(volumes, policy="all")
    for _epoch in range(2):
        for i in range(len(dataset)):
            dataset[i]
    assert sorted(calls) == sorted(e["case"] for e in datalist)  # each volume decoded once over two epochs
    if mode == "disk":  # a later run over the same cache folder decodes nothing
        calls.clear()
        again = SliceDataset(build_volume_dataset(datalist, transform, cache="disk", cache_dir=tmp_path / "cache"))
        again[len(again) - 1]
        assert calls == []


def test_gzip_sanity_of_fixture(msd_dir: Path) -> None:
    """The fixture writes real gzip NIfTI (the truncation test depends on it)."""
    with gzip.open(msd_dir / "imagesTr" / "pancreas_000.nii.gz") as handle:
        assert nib.Nifti1Header.from_fileobj(handle).get_data_shape() == SHAPE
