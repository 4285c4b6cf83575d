"""Shared fixtures: tiny, non-cubic CT-like volumes written in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

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


def write_dicom_series(folder: Path, array_xyz: np.ndarray, affine: np.ndarray) -> Path:
    """Write an int16 (X, Y, Z) volume as a DICOM series with SimpleITK; affine is RAS (NIfTI convention)."""
    folder.mkdir(parents=True)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_xyz.transpose(2, 1, 0)))
    lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3, :3]
    spacing = np.linalg.norm(lps, axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((lps / spacing).flatten().tolist())
    image.SetOrigin((np.diag([-1.0, -1.0, 1.0]) @ affine[:3, 3]).tolist())
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = image.GetDirection()
    for z in range(array_xyz.shape[2]):
        plane = image[:, :, z]
        position = image.TransformIndexToPhysicalPoint((0, 0, z))
        tags = {
            "0008|0060": "CT", "0020|000e": "1.2.826.0.1.3680043.2.1125.1", "0020|0013": str(z + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in position),
            "0020|0037": "\\".join(f"{v:.6f}" for v in (*direction[0:7:3], *direction[1:8:3])),
            "0028|1052": "0", "0028|1053": "1", "0010|0010": "Doe^Jane", "0010|0020": "PID-0001",
        }
        for tag, value in tags.items():
            plane.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice_{z:03d}.dcm"))
        writer.Execute(plane)
    return folder
