"""Shared fixtures: tiny, non-cubic CT-like volumes written in tmp_path."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.dicom import ct_series

if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs one worker per core: one torch thread each
    import torch

    torch.set_num_threads(1)

SHAPE = (20, 24, 10)  # X, Y, Z: non-cubic on purpose
SPACING = (0.8, 0.9, 3.0)


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    """Write a NIfTI file with both qform and sform set, as scanners' converters do."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, str(path))
    return path


def make_volume(seed: int, shape: tuple[int, int, int] = SHAPE, band: tuple[int, int] = (3, 7)) -> tuple[np.ndarray, np.ndarray]:
    """An int16 HU image and a uint8 label (1 pancreas in slices band[0]..band[1]-1, a 2 inside it)."""
    rng = np.random.default_rng(seed)
    image = rng.normal(40, 30, shape).astype(np.int16)
    image[:2] = -1000  # air
    label = np.zeros(shape, np.uint8)
    label[6:12, 8:14, band[0] : band[1]] = 1
    label[8:10, 10:12, band[0] + 1] = 2
    image[label > 0] = 100
    return image, label


@pytest.fixture
def affine() -> np.ndarray:
    return np.diag([*SPACING, 1.0])


@pytest.fixture
def msd_dir(tmp_path: Path, affine: np.ndarray) -> Path:
    """A 5-case MSD-layout folder with dataset.json."""
    root = tmp_path / "Task07_Mini"
    training = []
    for i in range(5):
        image, label = make_volume(i, band=(2 + i % 3, 6 + i % 3))
        write_nifti(root / "imagesTr" / f"pancreas_{i:03d}.nii.gz", image, affine)
        write_nifti(root / "labelsTr" / f"pancreas_{i:03d}.nii.gz", label, affine)
        training.append({"image": f"./imagesTr/pancreas_{i:03d}.nii.gz", "label": f"./labelsTr/pancreas_{i:03d}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({"name": "mini", "numTraining": 5, "training": training, "test": []}))
    return root


def write_dicom_series(folder: Path, array_xyz: np.ndarray, affine: np.ndarray, **kwargs: str) -> Path:
    """A DICOM series with patient fields that no output may carry (``Doe^Jane``, ``PID-0001``)."""
    folder.mkdir(parents=True)
    return ct_series.write_dicom_series(folder, array_xyz, affine, **{"patient_name": "Doe^Jane", "patient_id": "PID-0001", **kwargs})


# ---- one tiny trained pair for the suite ---------------------------------------------------------------

TINY_RUN = {"spatial_size": 32, "batch_size": 4, "device": "cpu", "val_fraction": 0.34, "test_fraction": 0.0,
            "other_fraction": 0.5}


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 6-case phantom set (5 labelled, 1 test volume), a 1-epoch ``small`` utility and a noise model trained
    against it (``small``, started from the utility's weights), shared by every test module that only needs
    *a* trained pair; modules that test training itself train their own."""
    from pipeline.bundle import run_bundle
    from pipeline.phantom import write_phantom_dataset

    root = tmp_path_factory.mktemp("tiny_pair")
    data = root / "phantom"
    write_phantom_dataset(data, cases=5, size=32, slices=12, seed=1, test_cases=1)
    run_bundle("train_utility", {**TINY_RUN, "preset": "small", "dataset_dir": str(data), "output_dir": str(root / "utility"),
                                 "epochs": 1})
    utility = root / "utility" / "checkpoints" / "best.pt"
    run_bundle("train_noise", {**TINY_RUN, "noise_preset": "small", "dataset_dir": str(data), "utility_checkpoint": str(utility),
                               "output_dir": str(root / "noise"), "epochs": 1, "init_from": str(utility)})
    return {"data": data, "utility": utility, "noise": root / "noise" / "checkpoints" / "best.pt", "noise_run": root / "noise"}
