"""The phantom set on disk: cases of :mod:`pipeline.phantom.generator` written in the MSD Task07 layout."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from pipeline.errors import ConfigError
from pipeline.fileio import save_nifti, write_json_atomic
from pipeline.phantom.cue import SHORTCUTS, CueSettings
from pipeline.phantom.generator import TUMOUR_LABEL, _check_grid, _check_int, generate_case
from pipeline.phantom.raters import RaterSettings, draw_raters, plant_ambiguity, settings_record

logger = logging.getLogger(__name__)


def write_phantom_dataset(out_dir: str | Path, cases: int = 24, size: int = 128, slices: int = 48,
                          seed: int = 0, test_cases: int = 0, shortcut: str | None = None, raters: int = 0) -> Path:
    """Write a synthetic pancreas CT set in the MSD Task07 layout; return the path of its dataset.json.

    Files: ``imagesTr/pancreas_000.nii.gz`` and ``labelsTr/pancreas_000.nii.gz`` per training case,
    ``imagesTs/pancreas_NNN.nii.gz`` (no label) per test case, numbered after the training ones. Odd
    numbers are stored in LPS voxel order, even ones RAS, so readers must reorient. Case i comes from
    ``SeedSequence(seed).spawn(n)[i]``: the same seed rewrites identical arrays, and adding test cases
    leaves the training cases unchanged. Every file is written atomically, dataset.json last.

    Args:
        out_dir: folder to create or fill (files of the same name are replaced).
        cases: number of training cases (image + label), >= 1.
        size: in-plane matrix, >= 32 and divisible by 16.
        slices: axial slices per volume, >= 8.
        seed: non-negative integer.
        test_cases: number of unlabelled test images, >= 0.
        shortcut: ``"marker"``: the shortcut benchmark's phantoms (:mod:`pipeline.phantom.cue`). Each
            case also gets ``shortcutsTr/<case>`` (the cue's mask) and ``imagesTr_nocue/<case>`` (its
            twin without the cue; ``imagesTs_nocue/`` and ``shortcutsTs/`` for test cases), named in
            ``dataset.json`` as ``shortcut`` and ``image_nocue``.
        raters: 0 (default) for one label per case; N >= 1 for the multi-rater set of
            :mod:`pipeline.phantom.raters`: every case gets the borderline lesion (and, on about half, the
            remote sign), each training case N annotations ``labelsTr/<case>_rater<k>.nii.gz`` listed as
            its ``label``, the lesion's mask in ``lesionsTr/`` (``lesionsTs/``) and the sign's in
            ``signsTr/`` (``signsTs/``; empty where the case shows none), named ``lesion`` and ``sign``;
            what each rater did is in the entry's ``rater_records``, and the CT without the sign (the twin) in
            ``imagesTr_nosign/`` (``imagesTs_nosign/``), named ``image_nosign``.

    Returns:
        Path of ``dataset.json``, loadable with ``monai.data.load_decathlon_datalist``.

    Raises:
        ValueError: if an argument is out of range.
    """
    cases = _check_int("cases", cases, 1, "Ask for at least one training case.")
    seed, size, slices = _check_grid(seed, size, slices)
    test_cases = _check_int("test_cases", test_cases, 0, "Use 0 for no test images.")
    if shortcut is not None and shortcut not in SHORTCUTS:
        raise ConfigError(f"shortcut must be one of {SHORTCUTS} or None; received {shortcut!r}.")
    raters = _check_int("raters", raters, 0, "Use 0 for one label per case, or e.g. 4 raters.")
    if raters and shortcut:
        raise ConfigError("raters and shortcut phantoms are separate sets; ask for one of them.")
    root = Path(out_dir)
    folders = ("imagesTr", "labelsTr", "imagesTs") + (("shortcutsTr", "imagesTr_nocue", "shortcutsTs", "imagesTs_nocue")
                                                      if shortcut else ())
    folders += ("lesionsTr", "signsTr", "imagesTr_nosign", "lesionsTs", "signsTs", "imagesTs_nosign") if raters else ()
    for folder in folders:
        (root / folder).mkdir(parents=True, exist_ok=True)
    children = np.random.SeedSequence(seed).spawn(cases + test_cases)
    training, test = [], []
    for index, child in enumerate(children):
        name, split = f"pancreas_{index:03d}.nii.gz", "training" if index < cases else "test"
        case_seed = int(child.generate_state(1, np.uint64)[0])
        case = generate_case(case_seed, size, slices, "LPS" if index % 2 else "RAS", case_id=name[:-7], shortcut=shortcut)
        part = "Ts" if split == "test" else "Tr"
        entry = {"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"}
        if raters:  # its own random stream: the anatomy stays that of the plain phantom
            rng = np.random.default_rng([case_seed, 11])
            image = case.image.copy()
            cause = plant_ambiguity(image, case.label, case.affine, rng, RaterSettings())
            case = dataclasses.replace(case, image=image)
            save_nifti(cause.lesion, case.affine, root / f"lesions{part}" / name)
            save_nifti(cause.sign, case.affine, root / f"signs{part}" / name)
            save_nifti(cause.image_nosign, case.affine, root / f"images{part}_nosign" / name)
            entry.update(lesion=f"./lesions{part}/{name}", sign=f"./signs{part}/{name}", has_sign=cause.has_sign,
                         image_nosign=f"./images{part}_nosign/{name}")
            if split == "training":
                masks, records = draw_raters(case.label, cause, case.affine, raters, rng, TUMOUR_LABEL, RaterSettings())
                entry["label"] = []
                for k, mask in enumerate(masks):
                    rater_name = f"{name[:-7]}_rater{k}.nii.gz"
                    save_nifti(mask, case.affine, root / "labelsTr" / rater_name)
                    entry["label"].append(f"./labelsTr/{rater_name}")
                entry["rater_records"] = records
        if shortcut:
            save_nifti(case.cue, case.affine, root / f"shortcuts{part}" / name)
            save_nifti(case.image_nocue, case.affine, root / f"images{part}_nocue" / name)
        save_nifti(case.image, case.affine, root / f"images{part}" / name)
        if split == "test":
            test.append(f"./imagesTs/{name}")
        else:
            if not raters:
                save_nifti(case.label, case.affine, root / "labelsTr" / name)
            if shortcut:
                entry.update(shortcut=f"./shortcutsTr/{name}", image_nocue=f"./imagesTr_nocue/{name}")
            training.append(entry)
        logger.debug("phantom %d/%d %s (%s): %d pancreas voxels, %d tumour voxels", index + 1, len(children),
                    name, split, int((case.label > 0).sum()), int((case.label == TUMOUR_LABEL).sum()))
    dataset = {"name": "Pancreas (synthetic phantom)" + (", shortcut benchmark" if shortcut else ""),
               "description": "Synthetic contrast-enhanced abdominal CT phantoms in the MSD Task07 layout",
               "reference": "Generated by pipeline.phantom; no patient data", "licence": "Apache-2.0",
               "release": f"seed {seed}", "tensorImageSize": "3D", "modality": {"0": "CT"},
               "labels": {"0": "background", "1": "pancreas", "2": "cancer"},
               "numTraining": cases, "numTest": test_cases, "training": training, "test": test}
    if raters:
        dataset["name"] += f", {raters} raters"
        dataset["raters"] = {"count": raters, "distribution": settings_record(RaterSettings()),
                             "label": "labelsTr/<case>_rater<k>.nii.gz, listed per case",
                             "lesion": "lesionsTr/ (the borderline lesion)", "sign": "signsTr/ (the remote sign)"}
    if shortcut:
        dataset["shortcut"] = {"kind": shortcut, "cue": "shortcutsTr/ (mask)", "twin": "imagesTr_nocue/ (same CT without the cue)",
                               **{k: v for k, v in vars(CueSettings()).items()}}
    path = root / "dataset.json"
    write_json_atomic(dataset, path)
    return path
