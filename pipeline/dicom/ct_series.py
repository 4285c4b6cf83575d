"""Write a volume as a CT DICOM series (SimpleITK): phantoms for the DICOM path, tests and fault drills.

Real DICOM comes from scanners; this writes the minimum a series reader needs (positions, orientation,
rescale, one SeriesInstanceUID) so the DICOM path can be exercised without patient data.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

DEFAULT_SERIES_UID = "1.2.826.0.1.3680043.2.1125.1"
DEFAULT_STUDY_UID = "1.2.826.0.1.3680043.2.1125.2"


def write_dicom_series(
    folder: str | os.PathLike,
    array_xyz: np.ndarray,
    affine: np.ndarray,
    series_uid: str = DEFAULT_SERIES_UID,
    study_uid: str = DEFAULT_STUDY_UID,
    prefix: str = "slice",
    patient_name: str = "Phantom^Synthetic",
    patient_id: str = "PHANTOM-0001",
    description: str = "",
) -> Path:
    """Write an int16 (X, Y, Z) volume as one DICOM file per axial slice.

    Args:
        folder: created if needed; several series may share it (distinct ``series_uid`` and ``prefix``).
        array_xyz: HU values, shape (X, Y, Z), stored as int16 with slope 1 and intercept 0.
        affine: (4, 4) voxel -> RAS world in mm (the NIfTI convention); DICOM's LPS is derived from it.
        series_uid: SeriesInstanceUID (0020,000E) of every slice.
        study_uid: StudyInstanceUID (0020,000D) of every slice; the FrameOfReferenceUID (0020,0052) is derived
            from it (one patient frame per study, as a scanner writes it).
        prefix: file names are ``<prefix>_<z>.dcm``.
        patient_name, patient_id: written to (0010,0010) and (0010,0020).
        description: SeriesDescription (0008,103E).

    Returns:
        The folder.
    """
    import SimpleITK as sitk

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array_xyz, dtype=np.int16).transpose(2, 1, 0)))
    lps = np.diag([-1.0, -1.0, 1.0]) @ np.asarray(affine, dtype=np.float64)[:3, :3]
    spacing = np.linalg.norm(lps, axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((lps / spacing).flatten().tolist())
    image.SetOrigin((np.diag([-1.0, -1.0, 1.0]) @ np.asarray(affine, dtype=np.float64)[:3, 3]).tolist())
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = image.GetDirection()
    for z in range(array_xyz.shape[2]):
        plane = image[:, :, z]
        position = image.TransformIndexToPhysicalPoint((0, 0, z))
        tags = {
            "0008|0060": "CT", "0020|000d": study_uid, "0020|000e": series_uid, "0020|0052": f"{study_uid}.1",
            "0020|0011": "1", "0020|0010": "1", "0020|0013": str(z + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in position),
            "0020|0037": "\\".join(f"{v:.6f}" for v in (*direction[0:7:3], *direction[1:8:3])),
            "0018|0050": f"{spacing[2]:.3f}", "0028|1052": "0", "0028|1053": "1",
            "0010|0010": patient_name, "0010|0020": patient_id, "0008|103e": description,
        }
        for tag, value in tags.items():
            plane.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{prefix}_{z:03d}.dcm"))
        writer.Execute(plane)
    return folder


def write_dicom_copies(images_dir: str | os.PathLike, out_dir: str | os.PathLike) -> list[Path]:
    """Each ``*.nii.gz`` of ``images_dir`` as a DICOM series folder ``out_dir/<case>/`` (HU rounded to int16), one
    study and patient per case (``PHANTOM-<case>``): the DICOM path of ``explain`` on phantoms (``unoise phantom --dicom``).

    Returns:
        The series folders, in case order.
    """
    import hashlib

    import nibabel as nib

    written = []
    for path in sorted(Path(images_dir).glob("*.nii.gz")):
        case = path.name[: -len(".nii.gz")]
        image = nib.load(str(path))
        folder = Path(out_dir) / case
        if folder.exists():  # a re-run replaces the series (its UIDs are derived from the case name, so unchanged)
            for old in folder.glob("*.dcm"):
                old.unlink()
        uid = "1.2.826.0.1.3680043.2.1125." + str(int(hashlib.sha256(case.encode()).hexdigest()[:12], 16))
        array = np.rint(np.asarray(image.dataobj, dtype=np.float32)).clip(-32768, 32767)
        written.append(write_dicom_series(folder, array, image.affine, series_uid=f"{uid}.1", study_uid=f"{uid}.2",
                                          patient_name=f"Phantom^{case}", patient_id=f"PHANTOM-{case}",
                                          description=f"synthetic phantom {case}"))
    return written
