"""The Python API (pipeline.api.Explainer): the example of docs/pipelines.md, and the same maps as `unoise explain`."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from pipeline.api import Explainer
from pipeline.cli import main
from pipeline.errors import ConfigError, DataError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def explainer(tiny_pair: dict[str, Path]) -> Explainer:
    return Explainer.from_checkpoints(tiny_pair["utility"], tiny_pair["noise"], device="cpu", spatial_size=32)


def test_the_api_gives_the_maps_of_unoise_explain_on_the_input_grid(explainer: Explainer, tiny_pair: dict[str, Path],
                                                                    tmp_path: Path) -> None:
    source = next((tiny_pair["data"] / "imagesTs").glob("*.nii.gz"))
    importance, segmentation = explainer.explain_volume(source)
    stored = nib.load(str(source))
    assert importance.shape == segmentation.shape == (1, *stored.shape)
    assert np.allclose(np.asarray(importance.affine), stored.affine, atol=1e-4)
    assert importance.dtype == torch.float32 and segmentation.dtype == torch.uint8
    assert float(importance.std()) > 0  # a map, not a constant

    assert main(["explain", "--input", str(source), "--output", str(tmp_path / "cli"), "--noise", str(tiny_pair["noise"]),
                 "--utility", str(tiny_pair["utility"]), "--device", "cpu", "--spatial_size", "32"]) == 0
    case = source.name.removesuffix(".nii.gz")
    cli = nib.load(str(tmp_path / "cli" / f"{case}_importance.nii.gz"))
    assert np.allclose(cli.get_fdata(), importance[0].numpy(), atol=1e-5)  # the same components, the same maps
    cli_seg = np.asarray(nib.load(str(tmp_path / "cli" / f"{case}_seg.nii.gz")).dataobj)
    assert np.array_equal(cli_seg, segmentation[0].numpy())

    import hashlib
    import json

    import monai

    manifest = json.loads((tmp_path / "cli" / "manifest.json").read_text())  # which models made which map
    for role in ("utility", "noise"):
        digest = hashlib.sha256(Path(tiny_pair[role]).read_bytes()).hexdigest()
        assert manifest["run"]["checkpoints"][role] == {"path": str(tiny_pair[role]), "sha256": digest}
    assert (manifest["run"]["torch"], manifest["run"]["monai"]) == (torch.__version__, monai.__version__)
    assert manifest["run"]["config"]["noise_checkpoint"] == str(tiny_pair["noise"])
    [record] = manifest["cases"]
    assert (record["case"], record["status"], record["error"], record["input"]) == (case, "done", None, str(source))
    assert record["outputs"] == [f"{case}_importance.nii.gz", f"{case}_seg.nii.gz"] and record["seconds"] > 0
    noise_sha = manifest["run"]["checkpoints"]["noise"]["sha256"]
    assert f"n:{noise_sha[:8]}" in cli.header["descrip"].tobytes().decode()  # the same provenance in the header
    assert cli.header["aux_file"].tobytes().decode().rstrip("\x00") == "manifest.json"

    from_array, _ = explainer.explain_volume(np.asarray(stored.dataobj, dtype=np.float32), stored.affine)  # a notebook's array
    assert np.allclose(from_array[0].numpy(), importance[0].numpy(), atol=1e-5)
    assert np.allclose(np.asarray(from_array.affine), stored.affine, atol=1e-4)

    written = explainer.explain_files([tiny_pair["data"] / "imagesTs"], tmp_path / "api")
    assert sorted(p.name for p in written) == [f"{case}_importance.nii.gz", f"{case}_seg.nii.gz"]
    assert np.allclose(nib.load(str(written[0])).get_fdata(), importance[0].numpy(), atol=1e-5)


def test_the_api_refuses_what_explain_refuses(explainer: Explainer, tiny_pair: dict[str, Path]) -> None:
    with pytest.raises(DataError, match=r"an array must be one 3D volume \(X, Y, Z\) in HU, got shape \(4, 4\)"):
        explainer.explain_volume(np.zeros((4, 4)))
    with pytest.raises(DataError, match="NaN or infinite"):
        explainer.explain_volume(np.full((8, 8, 4), np.nan))
    with pytest.raises(ConfigError, match="unknown config key 'sw_batch'"):
        Explainer.from_checkpoints(tiny_pair["utility"], tiny_pair["noise"], device="cpu", sw_batch=4)
    with pytest.raises(Exception, match="--utility takes a utility checkpoint .* but this is a noise checkpoint"):  # swapped
        Explainer.from_checkpoints(tiny_pair["noise"], tiny_pair["utility"], device="cpu")


def test_explain_files_writes_dicom_for_a_series_and_refuses_it_for_nifti(explainer: Explainer, tiny_pair: dict[str, Path],
                                                                          tmp_path: Path) -> None:
    import hashlib

    import pydicom

    from pipeline.dicom.ct_series import write_dicom_copies

    [series] = write_dicom_copies(tiny_pair["data"] / "imagesTs", tmp_path / "dicom")
    written = explainer.explain_files([series], tmp_path / "out", output_format="dicom")
    assert sorted(p.name for p in written) == [f"{series.name}_importance.dcm", f"{series.name}_seg.dcm"]
    importance, _ = explainer.explain_volume(series)
    pmap = pydicom.dcmread(written[0])
    assert int(pmap.NumberOfFrames) == importance.shape[-1]
    assert np.allclose(np.sort(pmap.pixel_array.ravel()), np.sort(importance.numpy().ravel()), atol=1e-6)  # same values
    noise_sha = hashlib.sha256(Path(tiny_pair["noise"]).read_bytes()).hexdigest()
    assert f"n:{noise_sha[:8]}" in pmap.ContentDescription  # the models that made it
    with pytest.raises(DataError, match="not a DICOM series folder"):
        explainer.explain_files([tiny_pair["data"] / "imagesTs"], tmp_path / "nifti", output_format="dicom")
