"""The shortcut benchmark's phantoms: deterministic, a cue where its mask says, far from the pancreas, twins alike."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from pipeline.phantom import generate_case, write_phantom_dataset
from pipeline.phantom.cue import CueSettings


@pytest.fixture(scope="module")
def cases() -> list:
    return [generate_case(seed, 64, 24, "RAS", shortcut="marker") for seed in (3, 4)]


def test_the_same_seed_gives_the_same_phantom_and_cue() -> None:
    first, second = (generate_case(5, 64, 24, "LPS", shortcut="marker") for _ in range(2))
    for a, b in ((first.image, second.image), (first.cue, second.cue), (first.image_nocue, second.image_nocue),
                 (first.label, second.label)):
        assert np.array_equal(a, b)


def test_plain_phantoms_have_no_cue() -> None:
    case = generate_case(5, 64, 24, "RAS")
    assert case.cue is None and case.image_nocue is None


def test_the_cue_is_on_every_labelled_slice_and_only_there(cases) -> None:
    for case in cases:
        assert np.array_equal(case.cue.any(axis=(0, 1)), (case.label > 0).any(axis=(0, 1)))


def test_the_twin_differs_only_at_the_cue(cases) -> None:
    for case in cases:
        changed = case.image != case.image_nocue
        near_cue = ndimage.binary_dilation(case.cue > 0, iterations=2)  # the scanner blur spreads the dot a little
        assert changed.any() and not (changed & ~near_cue).any()
        assert (case.image[case.cue > 0] > case.image_nocue[case.cue > 0] + 100).mean() > 0.9


def test_the_cue_lies_at_least_25_mm_from_the_pancreas(cases) -> None:
    for case in cases:
        spacing = float(abs(case.affine[0, 0]))
        for z in np.flatnonzero(case.cue.any(axis=(0, 1))):
            distance = ndimage.distance_transform_edt(case.label[..., z] == 0, sampling=(spacing, spacing))
            assert float(distance[case.cue[..., z] > 0].min()) >= CueSettings().min_distance_mm - spacing


@pytest.mark.parametrize("seed", [3, 4, 6])
def test_the_gland_is_copied_onto_other_slices_and_one_copy_is_labelled(seed: int) -> None:
    plain, case = generate_case(seed, 64, 24, "RAS"), generate_case(seed, 64, 24, "RAS", shortcut="marker")
    gland = plain.label > 0
    band = np.flatnonzero(gland.any(axis=(0, 1)))
    assert np.array_equal(case.image_nocue[gland], plain.image[gland])  # the original stays where it was
    changed = np.flatnonzero((case.image_nocue != plain.image).any(axis=(0, 1)))
    step = int(changed[0] - band[0]) if changed[0] > band[-1] else int(changed[-1] - band[-1])
    assert abs(step) == len(band) + 2  # one band height and a gap away
    pairs = [(z, z + step) for z in band if 0 <= z + step < gland.shape[-1]]
    differences = [np.abs(plain.image[..., a][gland[..., a]].astype(float) - case.image_nocue[..., b][gland[..., a]]).mean()
                   for a, b in pairs]
    assert max(differences) < 30  # the same gland under other scanner noise (10-20 HU)
    shifted = np.zeros_like(plain.label)
    for a, b in pairs:
        shifted[..., b] = plain.label[..., a]
    assert np.array_equal(case.label, plain.label) or np.array_equal(case.label, shifted)


def test_the_dataset_lists_cue_masks_and_twins(tmp_path: Path) -> None:
    path = write_phantom_dataset(tmp_path / "cue", cases=2, size=64, slices=16, seed=0, test_cases=1, shortcut="marker")
    content = json.loads(path.read_text())
    entry = content["training"][0]
    assert set(entry) == {"image", "label", "shortcut", "image_nocue"} and content["shortcut"]["kind"] == "marker"
    cue = nib.load(str(tmp_path / "cue" / entry["shortcut"])).get_fdata()
    image = nib.load(str(tmp_path / "cue" / entry["image"])).get_fdata()
    twin = nib.load(str(tmp_path / "cue" / entry["image_nocue"])).get_fdata()
    assert cue.any() and (image[cue > 0] > twin[cue > 0]).all()
    assert (tmp_path / "cue" / "imagesTs_nocue" / "pancreas_002.nii.gz").is_file()


def test_unknown_shortcut_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="shortcut must be one of"):
        generate_case(0, 64, 16, shortcut="texture")
    with pytest.raises(ValueError, match="shortcut must be one of"):
        write_phantom_dataset(tmp_path, cases=1, size=64, slices=16, shortcut="texture")
