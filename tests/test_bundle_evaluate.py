"""End to end at toy size: `unoise evaluate` writes evaluation.json with every method and metric, and the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.cli import main, run_bundle
from pipeline.phantom import write_phantom_dataset

pytestmark = pytest.mark.slow
SPLIT = {"val_fraction": 0.2, "test_fraction": 0.2, "seed": 0}
METRICS = ("visibility_auc", "visibility_auc_ci95", "dice_at_50", "dice_at_50_ci95", "deletion_auc", "ring_share",
           "ring_chance", "ms_per_map", "forward_equivalents", "per_case", "curve")


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("evaluate")
    data = root / "phantom"
    write_phantom_dataset(data, cases=8, size=64, slices=16, seed=2)
    run_bundle("train_utility", {**SPLIT, "preset": "small", "spatial_size": 64, "batch_size": 4, "epochs": 12,
                                 "learning_rate": 0.01, "device": "cpu", "train_slices": "pancreas",
                                 "dataset_dir": str(data), "output_dir": str(root / "utility")})
    utility = root / "utility" / "checkpoints" / "best.pt"
    run_bundle("train_noise", {**SPLIT, "noise_preset": "small", "batch_size": 4, "epochs": 1, "device": "cpu",
                               "dataset_dir": str(data), "utility_checkpoint": str(utility), "output_dir": str(root / "noise")})
    code = main(["evaluate", "--dataset", str(data), "--utility", str(utility), "--noise",
                 str(root / "noise" / "checkpoints" / "best.pt"), "--output", str(root / "evaluation"),
                 "--val_fraction", "0.2", "--test_fraction", "0.2", "--slices_per_case", "2",
                 "--occlusion_stride", "8", "--sanity_steps", "3", "--bootstrap", "100"])
    assert code == 0
    return root / "evaluation"


def test_every_method_has_every_metric(evaluation: Path) -> None:
    result = json.loads((evaluation / "evaluation.json").read_text())
    assert 0.0 <= result["clean_dice"] <= 1.0
    names = set(result["methods"])
    assert {"gradcam", "occlusion", "random", "oracle"} <= names and any(n.startswith("unoise") for n in names)
    for name, method in result["methods"].items():
        for metric in METRICS:
            assert metric in method, (name, metric)
    assert set(result["sanity"]) == names - {"random", "oracle"}


def test_every_curve_ends_at_the_clean_dice(evaluation: Path) -> None:
    result = json.loads((evaluation / "evaluation.json").read_text())
    ends = {name: m["curve"]["dice_label"][-1] for name, m in result["methods"].items()}  # 100% visible: the image
    assert max(ends.values()) - min(ends.values()) < 1e-9, ends


def test_random_map_scores_below_the_oracle(evaluation: Path) -> None:
    methods = json.loads((evaluation / "evaluation.json").read_text())["methods"]
    assert methods["random"]["visibility_auc"] < methods["oracle"]["visibility_auc"]


def test_report_is_written(evaluation: Path) -> None:
    for name in ("report.html", "grid.png", "curves.png", "pretraining.png"):
        assert (evaluation / "report" / name).stat().st_size > 1000, name
    page = (evaluation / "report" / "report.html").read_text()
    assert "Sanity check" in page and "<img src='curves.png'>" in page
