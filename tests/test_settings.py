"""One source per setting: a setting is a top-level value of a bundle config, found by one function; runs record
them and functions take them from the run's settings, so nothing keeps a copy of the list."""

from __future__ import annotations

import pytest

from pipeline.bundle import call_with_settings, is_setting, setting_names
from pipeline.errors import ConfigError


def test_a_setting_is_a_plain_value_or_a_path_in_the_bundle() -> None:
    for value in (3, 0.5, None, True, "blur", [1, 2], {"a": [1, "b"]}, "$@bundle_root + '/models/model.pt'"):
        assert is_setting(value), value
    for value in ("$@epochs * 2", "@preset", "%common.json#x", {"_target_": "torch.nn.Identity"}, ["$1 + 1"],
                  "$@bundle_root + @other"):
        assert not is_setting(value), value


def test_setting_names_are_the_top_level_plain_values_in_order() -> None:
    config = {"imports": ["$import torch"], "_meta_": {}, "epochs": 3, "derived": "$@epochs * 2", "window": [-100, 240],
              "network": {"_target_": "torch.nn.Identity"}, "output_dir": "$@bundle_root + '/runs/x'"}
    assert setting_names(config) == ["epochs", "window", "output_dir"]


def test_call_with_settings_takes_each_parameter_from_the_settings_or_the_components() -> None:
    def evaluate(epochs: int, window: list, model: str, default: int = 7) -> tuple:
        return epochs, window, model, default

    settings = {"epochs": 3, "window": [0, 1], "default": 9, "unused": "x", "model": "not this"}
    assert call_with_settings(evaluate, settings, model="m") == (3, [0, 1], "m", 9)  # components win over settings
    with pytest.raises(ConfigError, match=r"evaluate needs settings the config does not define: default; add them"):
        call_with_settings(evaluate, {"epochs": 3, "window": [0, 1]}, model="m")  # no silent Python default


def test_the_settings_of_a_running_config_carry_its_overrides(tmp_path) -> None:
    import json

    from monai.bundle import ConfigWorkflow

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"imports": ["$import pipeline", "$import pipeline.bundle"], "epochs": 3, "name": "x", "twice": "$@epochs * 2",
                                  "path": "$@bundle_root + '/out'", "record": "$pipeline.bundle.run_settings()"}))
    workflow = ConfigWorkflow(config_file=str(config), workflow_type=None, bundle_root=str(tmp_path), epochs=5)
    workflow.initialize()
    assert workflow.parser.get_parsed_content("record") == {"epochs": 5, "name": "x", "path": f"{tmp_path}/out",
                                                            "bundle_root": str(tmp_path)}
    workflow.finalize()
