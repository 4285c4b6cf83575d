"""The bundle's metadata.json says what the bundle is: its version is the newest in its changelog, the packages the
code imports are listed with versions inside setup.cfg's ranges, the input is CT in HU and the importance output and
the 3D variant are described."""

from __future__ import annotations

import configparser
import json
import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
METADATA = json.loads((ROOT / "bundles" / "pancreas_ct_unoise" / "configs" / "metadata.json").read_text(encoding="utf-8"))


def test_the_version_is_the_newest_changelog_entry() -> None:
    assert METADATA["version"] == max(METADATA["changelog"], key=Version)


def test_required_packages_are_those_setup_cfg_needs_at_versions_inside_its_ranges() -> None:
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    lines = [line.strip() for line in setup["options"]["install_requires"].splitlines()]
    requirements = {Requirement(line).name.lower(): Requirement(line) for line in lines if line and not line.startswith("#")}
    listed = {name.lower(): version for name, version in METADATA["required_packages_version"].items()}
    for name in ("highdicom", "scipy", "nibabel", "pydicom", "simpleitk", "pytorch-ignite"):
        assert name in listed, name
    for name, version in listed.items():
        if name in requirements:
            assert requirements[name].specifier.contains(version), (name, version, str(requirements[name].specifier))
    assert requirements["monai"].specifier.contains(METADATA["monai_version"])
    assert re.match(r"\d+\.\d+", METADATA["pytorch_version"])


def test_input_is_ct_in_hounsfield_and_the_outputs_name_the_importance_in_2d_and_3d() -> None:
    data = METADATA["network_data_format"]
    assert {entry["format"] for entry in data["inputs"].values()} == {"hounsfield"}
    assert sorted(len(entry["spatial_shape"]) for entry in data["inputs"].values()) == [2, 3]
    for output in data["outputs"].values():
        assert output["channel_def"]["0"].startswith("importance") and output["value_range"] == [0, 1]
