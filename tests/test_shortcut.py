"""Shortcut measures on a toy utility that needs the cue: reliance, cue share and pointing."""

from __future__ import annotations

import pytest
import torch

from pipeline.errors import ConfigError
from pipeline.evaluation.shortcut import check_shortcut_entries, compute_pointing, evaluate_shortcut, pooled_dice


class CueReader(torch.nn.Module):
    """Segments the square at rows 4-9 only when the cue pixel (20, 20) is bright."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits = torch.full_like(image[:, :1], -10.0)
        cue_on = image[:, 0, 20, 20] > 0.8  # (B,)
        logits[cue_on, :, 4:10, 4:10] = 10.0
        return logits


def toy_data() -> dict:
    image = torch.full((3, 1, 28, 28), 0.3)
    image[:, :, 4:10, 4:10] = 0.5  # the "gland"
    twin = image.clone()
    image[:, :, 19:22, 19:22] = 1.0  # the cue
    label = torch.zeros_like(image)
    label[:, :, 4:10, 4:10] = 1
    cue = torch.zeros_like(image)
    cue[:, :, 19:22, 19:22] = 1
    return {"image": image, "image_nocue": twin, "label": label, "body": torch.ones_like(image), "shortcut": cue,
            "spacing": torch.ones(3, 2), "cases": ["a", "a", "b"]}


def test_reliance_and_maps_that_find_the_cue_or_not() -> None:
    data = toy_data()
    on_cue = data["shortcut"] * 0.9 + 0.05
    on_gland = data["label"] * 0.9 + 0.05
    result = evaluate_shortcut(CueReader(), {"on_cue": on_cue, "on_gland": on_gland}, data, cue_ring_mm=1.0,
                               bootstrap=50)
    assert result["dice_with_cue"] == pytest.approx(1.0) and result["dice_without_cue"] == pytest.approx(0.0)
    assert result["methods"]["on_cue"]["pointing_rate"] == 1.0 and result["methods"]["on_gland"]["pointing_rate"] == 0.0
    assert result["methods"]["on_cue"]["cue_share_over_chance"] > 5 > result["methods"]["on_gland"]["cue_share_over_chance"]


def test_pointing_counts_the_single_top_pixel_at_least() -> None:
    maps = torch.zeros(1, 1, 10, 10)
    maps[0, 0, 2, 2] = 1.0
    region = torch.zeros(1, 1, 10, 10)
    region[0, 0, 2, 2] = 1
    assert compute_pointing(maps, torch.ones_like(maps), region, share=0.001).tolist() == [True]


def test_pooled_dice_per_case() -> None:
    pred, label = torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)
    pred[0, 0, 0, :2] = 1
    label[0, 0, 0, :2] = 1
    label[1, 0, 0, 2:] = 1
    assert pooled_dice(pred, label, ["x", "x"]) == {"x": pytest.approx(2 * 2 / (2 + 4))}


def test_cases_without_cue_files_are_refused(tmp_path) -> None:
    with pytest.raises(ConfigError, match="has no 'shortcut' file.*--shortcut marker"):
        check_shortcut_entries([{"image": "a.nii.gz", "case": "a"}])
