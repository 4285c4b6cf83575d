"""The faithfulness protocols over voxels: 3D volumes go through the same functions as 2D slices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.errors import ConfigError
from pipeline.evaluation.protocols import apply_visibility, compute_curves, predict, rank_in_region
from pipeline.evaluation.stats import compute_auc, nanmean
from pipeline.explain import RandomMap
from pipeline.noise.infill import apply_infill
from pipeline.noise.regions import compute_region, compute_region_share

SHAPE = (16, 16, 8)


def body_volume() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Image, body and gland of a toy volume: air in the first 4 rows, a bright 'gland' block inside the body."""
    image = torch.full((1, 1, *SHAPE), 0.3)
    body = torch.ones_like(image)
    body[..., :4, :, :] = 0
    image[..., :4, :, :] = 0.0
    gland = torch.zeros_like(image)
    gland[..., 6:10, 6:10, 2:6] = 1
    image[gland > 0] = 0.9
    return image, body, gland


class BrightVoxels(torch.nn.Module):
    """A '3D utility': pancreas where a 3 x 3 x 3 neighbourhood is bright."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.avg_pool3d(image, 3, 1, 1) * 20 - 12


def test_a_volume_map_that_ranks_air_first_scores_like_the_same_map_without_it() -> None:
    image, body, gland = body_volume()
    utility = BrightVoxels()
    clean = predict(utility, image)
    assert 0 < float(clean.sum()) < clean.numel()
    random_map = RandomMap(0)(image)
    air_first = torch.where(body > 0, random_map, torch.full_like(random_map, 5.0))
    curves = [compute_curves(utility, image, m, body, clean, gland, infill="floor") for m in (random_map, air_first)]
    for protocol in ("visibility", "deletion"):
        assert np.array_equal(curves[0][protocol]["clean"], curves[1][protocol]["clean"], equal_nan=True)


def test_the_gland_itself_keeps_the_prediction_with_few_voxels_and_random_does_not() -> None:
    image, body, gland = body_volume()
    utility = BrightVoxels()
    clean = predict(utility, image)
    aucs = {}
    for name, importance in {"gland": gland, "random": RandomMap(0)(image)}.items():
        curves = compute_curves(utility, image, importance, body, clean, gland, infill="floor")
        aucs[name] = compute_auc(curves["fractions"], nanmean(curves["visibility"]["clean"], axis=1))
    assert aucs["gland"] > aucs["random"] + 0.3, aucs


def test_hiding_voxels_keeps_air_and_the_shown_ones() -> None:
    image, body, _ = body_volume()
    ranks = rank_in_region(torch.rand(1, 1, *SHAPE), body)
    assert torch.equal(apply_visibility(image, ranks, body, 1.0, "blur", blur_sigma=1.0), image)
    hidden = apply_visibility(image, ranks, body, 0.0, "mean")
    assert torch.equal(hidden[body == 0], image[body == 0]) and torch.allclose(hidden[body > 0], image[body > 0].mean())
    with pytest.raises(ConfigError, match="road infill .* 2D slices"):
        apply_infill(image, body > 0, "road")


def test_the_ring_is_in_millimetres_along_every_axis_of_an_anisotropic_volume() -> None:
    label = np.zeros(SHAPE)
    label[8, 8, 4] = 1
    region = compute_region(label, (1.0, 1.0, 4.0), ring_mm=4.0)
    assert region[8, 12, 4] and not region[8, 13, 4]  # 4 voxels of 1 mm in-plane
    assert region[8, 8, 5] and not region[8, 8, 6]  # one 4 mm voxel through-plane
    inside, pixels, total, counted = compute_region_share(np.ones(SHAPE), label, (1.0, 1.0, 4.0), 4.0)
    assert inside == pixels == float(region.sum()) and total == counted == float(np.prod(SHAPE))


def test_occlusion_slides_a_cube_and_finds_the_gland() -> None:
    from pipeline.explain import OcclusionMap

    image, _, gland = body_volume()
    occlusion = OcclusionMap(BrightVoxels(), window=4, stride=2, fill=0.0)
    importance = occlusion(image)
    assert importance.shape == image.shape and len(occlusion.positions(*SHAPE)) == 7 * 7 * 3
    assert float(importance[gland > 0].mean()) > 2 * float(importance[gland == 0].mean())


def test_a_network_run_by_sliding_window_over_a_whole_volume_matches_it_run_at_once() -> None:
    from pipeline.evaluation.volumes import WholeVolume

    torch.manual_seed(0)
    pointwise = torch.nn.Conv3d(1, 1, 1)  # no context: every window's blended output must equal the whole pass
    volume = torch.rand(2, 1, 40, 36, 20)
    with torch.inference_mode():
        whole = WholeVolume(pointwise, [16, 16, 8], sw_batch_size=3, overlap=0.25)(volume)
        torch.testing.assert_close(whole, pointwise(volume), atol=1e-5, rtol=1e-5)
        local = WholeVolume(BrightVoxels(), [16, 16, 8])(volume)  # a 3-voxel context: close inside each window only
    assert local.shape == volume.shape and not torch.equal(local, BrightVoxels()(volume))


def test_whole_volumes_of_different_shapes_are_padded_outside_the_body_and_centred_on_their_pancreas() -> None:
    from monai.data import MetaTensor

    from pipeline.evaluation.volumes import load_whole_volumes, middle_slices

    def volume(shape: tuple[int, int, int], gland: tuple[slice, ...], spacing: float) -> dict:
        image, body, label = torch.full((1, *shape), 0.4), torch.ones((1, *shape)), torch.zeros((1, *shape))
        label[(slice(None), *gland)] = 1
        affine = torch.diag(torch.tensor([spacing, spacing, 2.5, 1.0]))
        return {key: MetaTensor(value, affine=affine) for key, value in (("image", image), ("body", body), ("label", label))}

    made = {"a": volume((20, 16, 10), (slice(2, 6), slice(2, 6), slice(1, 3)), 1.0),
            "b": volume((24, 12, 6), (slice(10, 14), slice(4, 8), slice(4, 5)), 0.8),
            "c": volume((8, 8, 4), (slice(0, 0),) * 3, 1.0)}  # no pancreas: left out
    data = load_whole_volumes([{"case": c} for c in made], (1,), torch.device("cpu"), lambda entry: made[entry["case"]])
    assert data["cases"] == ["a", "b"] and tuple(data["image"].shape) == (2, 1, 24, 16, 10)
    assert type(data["image"]) is torch.Tensor  # no MetaTensor: maps.pt is loaded with weights_only
    assert float(data["body"][1, 0, :, 12:, :].sum()) == 0 and float(data["body"][1, 0, :24, :12, :6].min()) == 1  # pad: no body
    assert data["centre"] == [[4, 4, 2], [12, 6, 4]] and data["slice_index"] == [2, 4]
    np.testing.assert_allclose(data["spacing"].numpy(), [[1.0, 1.0, 2.5], [0.8, 0.8, 2.5]])
    shown, _ = middle_slices(data, {})
    assert [float(shown["label"][i].sum()) for i in range(2)] == [16.0, 16.0]  # each axial slice cuts its pancreas


def test_what_3d_does_not_run_is_skipped_with_a_note_not_refused(caplog: pytest.LogCaptureFixture) -> None:
    from pipeline.errors import ConfigError
    from pipeline.evaluation.volumes import volume_settings

    with caplog.at_level("WARNING"):
        kept = volume_settings(True, ["blur", "road"], ["road", "blur:8"], "u3d.pt")
    assert kept == (False, ["blur"], ["blur:8"])
    assert "shortcut benchmark is 2D-only and is skipped" in caplog.text and "judges blur" in caplog.text
    with pytest.raises(ConfigError, match="road, the only judged infill, is 2D-only"):
        volume_settings(False, ["road"], [], "u3d.pt")
