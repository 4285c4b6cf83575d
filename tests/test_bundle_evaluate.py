"""End to end at toy size: `unoise evaluate` writes evaluation.json in its documented shape, and the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.bundle import run_bundle
from pipeline.cli import main
from pipeline.evaluation.criteria import compute_criteria
from pipeline.phantom import write_phantom_dataset

pytestmark = pytest.mark.slow
SPLIT = {"val_fraction": 0.2, "test_fraction": 0.2, "seed": 0}
SPLIT_ARGS = ["--val_fraction", "0.2", "--test_fraction", "0.2"]
METRICS = ("visibility_auc", "visibility_auc_ci95", "deletion_auc", "deletion_auc_ci95", "dice_at_5", "dice_at_10",
           "dice_at_20", "dice_at_50", "visibility_auc_label", "deletion_auc_label", "ring_over_chance", "ms_per_map",
           "forward_equivalents", "per_case", "curves", "infills")
METHODS = {"occlusion", "gradcam", "saliency", "smoothgrad", "segmentation", "prediction_logits", "random", "oracle"}
FAST = ["--slices_per_case", "2", "--occlusion_stride", "8", "--smoothgrad_samples", "3", "--bootstrap", "100",
        "--device", "cpu"]


def _train(root: Path, data: Path, utility_epochs: int, noise: dict) -> tuple[Path, Path]:
    run_bundle("train_utility", {**SPLIT, "preset": "small", "spatial_size": 64, "batch_size": 4, "epochs": utility_epochs,
                                 "learning_rate": 0.01, "device": "cpu", "train_slices": "pancreas",
                                 "dataset_dir": str(data), "output_dir": str(root / "utility")})
    utility = root / "utility" / "checkpoints" / "best.pt"
    run_bundle("train_noise", {**SPLIT, "noise_preset": "small", "batch_size": 4, "epochs": 2, "device": "cpu",
                               "dataset_dir": str(data), "utility_checkpoint": str(utility),
                               "output_dir": str(root / "noise"), **noise})
    return utility, root / "noise" / "checkpoints" / "best.pt"


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("evaluate")
    data = root / "phantom"
    write_phantom_dataset(data, cases=8, size=64, slices=16, seed=2)
    utility, noise = _train(root, data, 12, {})
    code = main(["evaluate", "--dataset", str(data), "--utility", str(utility), "--noise", str(noise),
                 "--output", str(root / "evaluation"), *SPLIT_ARGS, *FAST, "--sanity_epochs", "1",
                 "--infills", "['blur', 'mean']", "--held-out-infills", "['road', 'blur:8']"])
    assert code == 0
    return root / "evaluation"


def test_every_method_has_every_metric_under_the_default_protocol(evaluation: Path) -> None:
    result = json.loads((evaluation / "evaluation.json").read_text())
    assert isinstance(result["clean_dice"], float)
    names = set(result["methods"])
    reference = result["reference"]
    assert METHODS <= names and reference.startswith("unoise")
    for name, method in result["methods"].items():
        for metric in METRICS:
            assert metric in method, (name, metric)
        assert set(method["infills"]) == {"blur", "mean", "road", "blur:8"}
        assert method["infills"]["blur"]["visibility_auc"] == method["visibility_auc"]  # the first judged infill, unprefixed
    protocol = result["protocol"]
    assert protocol["infills"] == ["blur", "mean"] and protocol["held_out_infills"] == ["road", "blur:8"]
    assert protocol["split"] == "test" and protocol["region"].startswith("body")
    assert set(result["paired"]) == names - {reference}
    for paired in result["paired"].values():
        assert paired["visibility_auc"]["n"] == len(result["cases"]) and len(paired["deletion_auc"]["ci95"]) == 2
        assert {"mean_visibility_auc", "road_deletion_auc", "blur:8_visibility_auc"} <= set(paired)


def test_occlusion_is_computed_with_each_infill_it_is_judged_under(evaluation: Path) -> None:
    result = json.loads((evaluation / "evaluation.json").read_text())
    methods = result["methods"]
    fills = {name: m["occlusion_fill"] for name, m in methods.items() if "occlusion_fill" in m}
    assert fills == {"occlusion": "blur", "occlusion_mean": "mean", "occlusion_blur:8": "blur:8"}  # road: none per window
    assert methods["occlusion"]["windows_at_paper_stride"] > methods["occlusion"]["windows_per_map"]  # stride 2 < 8
    criteria = {c["criterion"]: c for c in compute_criteria(result)}
    judged = criteria[f"visibility auc: {result['reference']} vs occlusion, under every judged infill"]
    assert [(v["infill"], v["against"]) for v in judged["per_infill"]] == [("blur", "occlusion"), ("mean", "occlusion_mean")]
    held = criteria[f"deletion auc: {result['reference']} vs occlusion, under the held-out infills"]
    assert [(v["infill"], v["against"]) for v in held["per_infill"]] == [("road", "occlusion"), ("blur:8", "occlusion_blur:8")]
    held_visibility = criteria[f"visibility auc: {result['reference']} vs occlusion, under the held-out infills"]
    assert [v["infill"] for v in held_visibility["per_infill"]] == ["blur:8"]  # ROAD's visibility is saturated
    page = (evaluation / "report" / "report.html").read_text()
    assert "Every infill" in page and "blur:8 (held out)" in page


def test_everything_visible_keeps_the_clean_prediction(evaluation: Path) -> None:
    result = json.loads((evaluation / "evaluation.json").read_text())
    for method in result["methods"].values():
        assert method["curves"]["visibility_clean"][-1] == pytest.approx(1.0)
        assert method["curves"]["deletion_clean"][0] == pytest.approx(1.0)


def test_null_maps_and_random_sit_where_they_should(evaluation: Path) -> None:
    methods = json.loads((evaluation / "evaluation.json").read_text())["methods"]
    assert methods["random"]["visibility_auc"] < methods["segmentation"]["visibility_auc"]
    assert methods["random"]["ring_over_chance"] == pytest.approx(1.0, abs=0.15)


def test_sanity_check_covers_every_method_and_retrains_off_the_evaluated_cases(evaluation: Path) -> None:
    result = json.loads((evaluation / "evaluation.json").read_text())
    # occlusion is randomised once, with the first judged fill; its other fills are the same method
    assert set(result["sanity"]) == {name for name in result["methods"] if not name.startswith("occlusion_")}
    assert result["sanity"]["random"] < 0.3  # two independent random maps: no rank agreement
    assert result["sanity_detail"]["oracle"]["all"]["abs_rho"] == pytest.approx(1.0)  # the label does not change
    assert "rho_signed" in result["sanity_detail"]["saliency"]["all"]
    for stage in ("decoder", "all"):
        run = evaluation / "sanity" / stage / result["reference"]
        trained_on = {entry["case"] for entry in json.loads((run / "datalist.json").read_text())["training"]}
        assert trained_on and not trained_on & set(result["cases"])
        assert json.loads((run / "config.json").read_text())["epochs"] == 1


def test_report_is_written_with_verdicts(evaluation: Path) -> None:
    for name in ("report.html", "grid.png", "curves.png"):
        assert (evaluation / "report" / name).stat().st_size > 1000, name
    page = (evaluation / "report" / "report.html").read_text()
    assert "Verdict" in page and ("PASS" in page or "FAIL" in page) and "Sanity check" in page
    assert "<img src='curves.png'>" in page


def test_bad_settings_are_refused_before_any_work(evaluation: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    result = json.loads((evaluation / "evaluation.json").read_text())
    args = ["evaluate", "--dataset", result["settings"]["dataset_dir"], "--utility", result["settings"]["utility_checkpoint"],
            "--noise", *result["settings"]["noise_checkpoints"], *SPLIT_ARGS]
    for bad, message in ((["--slices_per_case", "0"], "slices_per_case must be a positive integer"),
                         (["--infills", "['zeros']"], "infills: infill 'zeros' is not one of"),
                         (["--held-out-infills", "['blur:-1']"], "held_out_infills: infill 'blur:-1'"),
                         (["--infills", "[]"], "infills is empty"),
                         (["--split", "train"], "split must be one of")):
        assert main([*args, "--output", str(tmp_path / bad[1]), *bad]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / bad[1]).exists()


@pytest.fixture(scope="module")
def shortcut_evaluation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shortcut")
    data = root / "phantom"
    assert main(["phantom", "--out", str(data), "--cases", "6", "--size", "64", "--slices", "16", "--seed", "1",
                 "--shortcut", "marker"]) == 0
    utility, noise = _train(root, data, 2, {})
    code = main(["evaluate", "--dataset", str(data), "--utility", str(utility), "--noise", str(noise),
                 "--output", str(root / "evaluation"), *SPLIT_ARGS, *FAST, "--sanity", "false", "--shortcut", "true",
                 "--baselines", "['occlusion', 'segmentation', 'random']"])
    assert code == 0
    return root / "evaluation"


def test_shortcut_run_adds_its_section(shortcut_evaluation: Path) -> None:
    result = json.loads((shortcut_evaluation / "evaluation.json").read_text())
    shortcut = result["shortcut"]
    assert isinstance(shortcut["dice_without_cue"], float) and isinstance(shortcut["dice_with_cue"], float)
    assert set(shortcut["methods"]) == set(result["methods"])
    for method in shortcut["methods"].values():
        assert {"cue_share_over_chance", "pointing_rate"} <= set(method)
    assert "Shortcut benchmark" in (shortcut_evaluation / "report" / "report.html").read_text()
