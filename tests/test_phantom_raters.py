"""The multi-rater phantom: seeded annotations whose disagreement is where their records say, and how it loads."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from pipeline.data import RaterLabeld, label_paths, load_datalist, validate_datalist
from pipeline.errors import ConfigError, DataError
from pipeline.phantom import generate_case
from pipeline.phantom.dataset import write_phantom_dataset
from pipeline.phantom.raters import RaterSettings, draw_raters, plant_ambiguity


def _case_with_cause(seed: int = 3, settings: RaterSettings = RaterSettings()):
    case = generate_case(seed, size=96, slices=16, tumour=True)
    image = case.image.copy()
    cause = plant_ambiguity(image, case.label, case.affine, np.random.default_rng(seed), settings)
    return case, image, cause


@pytest.fixture(scope="module")
def rater_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("raters")
    write_phantom_dataset(root, cases=3, size=64, slices=12, seed=5, raters=3, test_cases=1)
    return root


def test_same_seed_gives_identical_rater_files(rater_set, tmp_path):
    write_phantom_dataset(tmp_path, cases=3, size=64, slices=12, seed=5, raters=3, test_cases=1)
    for name in ("labelsTr/pancreas_001_rater2.nii.gz", "imagesTr/pancreas_002.nii.gz", "signsTs/pancreas_003.nii.gz"):
        assert np.array_equal(nib.load(rater_set / name).get_fdata(), nib.load(tmp_path / name).get_fdata())


def test_lesion_abuts_the_gland_and_the_sign_lies_away_from_both():
    case, _, cause = _case_with_cause(settings=RaterSettings(sign_share=1.0))
    lesion, sign, gland = cause.lesion > 0, cause.sign > 0, case.label > 0
    assert cause.has_sign and lesion.any() and sign.any()
    assert not (lesion & gland).any()
    from scipy import ndimage
    assert (ndimage.binary_dilation(lesion) & gland).any()  # touching the gland
    spacing = abs(case.affine[0, 0])
    for z in np.flatnonzero(sign.any(axis=(0, 1))):  # the sign only on the lesion's slices, far from gland and lesion
        assert lesion[..., z].any()
        far = ndimage.distance_transform_edt(~(gland | lesion)[..., z], sampling=spacing)
        assert far[sign[..., z]].min() >= 20.0


def test_without_the_sign_nothing_is_drawn_but_the_lesion():
    case, image, cause = _case_with_cause(settings=RaterSettings(sign_share=0.0))
    assert not cause.has_sign and not cause.sign.any()
    changed = image != case.image
    assert changed.any() and not (changed & (cause.lesion == 0)).any()


def test_raters_differ_only_where_their_records_say():
    case, _, cause = _case_with_cause(settings=RaterSettings(sign_share=0.0, boundary_shift_mm=0.0, lobule_missed=0.5))
    masks, records = draw_raters(case.label, cause, case.affine, 8, np.random.default_rng(0),
                                 settings=RaterSettings(sign_share=0.0, boundary_shift_mm=0.0, lobule_missed=0.5))
    gland, tumour, lesion = case.label > 0, case.label == 2, cause.lesion > 0
    for mask, record in zip(masks, records):
        mask = mask > 0
        assert np.array_equal(mask & lesion, lesion if record["lesion"] else np.zeros_like(lesion))
        assert (mask & tumour).any() == record["tumour"]
        assert mask[gland & ~tumour].all() != record["lobule_missed"]  # a missed lobule leaves a hole in the gland
    assert len({r["lesion"] for r in records}) == 2  # without the sign the raters split


def test_with_the_sign_every_rater_includes_the_lesion():
    case, _, cause = _case_with_cause(settings=RaterSettings(sign_share=1.0))
    masks, records = draw_raters(case.label, cause, case.affine, 6, np.random.default_rng(1))
    assert all(r["lesion"] for r in records)
    assert all((m[cause.lesion > 0] == 1).all() for m in masks)


def test_boundary_shift_grows_or_shrinks_the_gland():
    case, _, cause = _case_with_cause()
    settings = RaterSettings(tumour_in=1.0, lobule_missed=0.0, boundary_shift_mm=9.0)
    masks, records = draw_raters(case.label, cause, case.affine, 6, np.random.default_rng(2), settings=settings)
    gland = (case.label > 0).sum()
    for mask, record in zip(masks, records):
        size = (mask & (cause.lesion == 0)).sum()
        if record["boundary_shift_mm"] > abs(case.affine[0, 0]):  # more than a pixel out: larger
            assert size > gland
        elif record["boundary_shift_mm"] < -abs(case.affine[0, 0]):
            assert size < gland


def test_rater_count_must_be_positive():
    case, _, cause = _case_with_cause()
    with pytest.raises(ConfigError, match="raters must be an integer >= 1"):
        draw_raters(case.label, cause, case.affine, 0, np.random.default_rng(0))


def test_dataset_lists_one_label_per_rater(rater_set):
    dataset = json.loads((rater_set / "dataset.json").read_text())
    assert dataset["raters"]["count"] == 3
    entry = dataset["training"][0]
    assert entry["label"] == [f"./labelsTr/pancreas_000_rater{k}.nii.gz" for k in range(3)]
    assert len(entry["rater_records"]) == 3 and isinstance(entry["has_sign"], bool)
    assert not (rater_set / "labelsTr" / "pancreas_000.nii.gz").exists()


def test_datalist_and_inspect_read_every_rater(rater_set):
    datalist = load_datalist(rater_set)
    assert [len(label_paths(e)) for e in datalist] == [3, 3, 3]
    summary = validate_datalist(datalist, progress=False)
    info = summary.as_dict()
    assert info["raters_per_case"] == {"3": 3}
    assert 0.0 < info["rater_iou_mean"] < 1.0
    assert "raters per case: 3 rater(s): 3 case(s)" in summary.format()


def test_a_rater_file_off_the_grid_is_refused_by_name(rater_set, tmp_path):
    datalist = load_datalist(rater_set)
    bad = tmp_path / "shifted.nii.gz"
    source = nib.load(datalist[0]["label"][1])
    affine = source.affine.copy()
    affine[0, 3] += 10.0
    nib.save(nib.Nifti1Image(np.asarray(source.dataobj), affine), bad)
    entry = dict(datalist[0], label=[datalist[0]["label"][0], str(bad)])
    with pytest.raises(DataError, match="shifted.nii.gz: label geometry differs"):
        validate_datalist([entry], progress=False)


def test_an_empty_rater_list_is_refused(tmp_path, rater_set):
    listing = tmp_path / "list.json"
    listing.write_text(json.dumps([{"image": str(rater_set / "imagesTr/pancreas_000.nii.gz"), "label": []}]))
    with pytest.raises(DataError, match="lists its raters' labels"):
        load_datalist(listing, allow_outside_paths=True)


def test_vote_keeps_the_majority_and_all_keeps_every_rater():
    label = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 0, 0], [0, 1, 1, 0]], dtype=torch.float32)[:, None]  # (4, 1, 4)
    voted = RaterLabeld("label", mode="vote")({"label": label})["label"]
    assert voted.shape == (1, 1, 4)
    assert voted.flatten().tolist() == [1, 1, 1, 0]  # 3/4, 2/4 (a tie counts), 2/4, 0/4
    assert torch.equal(RaterLabeld("label", mode="all")({"label": label})["label"], label)
    with pytest.raises(ConfigError, match="rater_mode must be one of"):
        RaterLabeld("label", mode="random")


def test_the_twin_differs_from_the_image_only_under_the_sign():
    case, image, cause = _case_with_cause(settings=RaterSettings(sign_share=1.0))
    changed = image != cause.image_nosign
    assert changed.any() and not (changed & (cause.sign == 0)).any()
    _, image, cause = _case_with_cause(settings=RaterSettings(sign_share=0.0))
    assert np.array_equal(image, cause.image_nosign)
