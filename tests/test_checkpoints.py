"""Checkpoint files: atomic writes, truncated files, wrong architectures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.networks.checkpoints import CheckpointError, load_checkpoint, load_network_weights, save_atomic
from pipeline.networks import build_unet


def test_failed_write_keeps_the_previous_file(tmp_path: Path) -> None:
    path = save_atomic({"model": {"w": torch.ones(2)}}, tmp_path / "last.pt")
    before = path.read_bytes()
    with pytest.raises(Exception):
        save_atomic({"model": {"w": torch.zeros(2)}, "bad": lambda: None}, path)  # lambdas cannot be pickled
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_loads_with_weights_only(tmp_path: Path) -> None:
    path = save_atomic({"model": {"w": torch.arange(3)}, "meta": {"preset": "small", "epoch": 2}}, tmp_path / "c.pt")
    content = torch.load(path, weights_only=True)
    assert content["meta"]["epoch"] == 2 and torch.equal(load_checkpoint(path)["model"]["w"], torch.arange(3))


def test_truncated_checkpoint_is_named(tmp_path: Path) -> None:
    path = save_atomic({"model": build_unet("small").state_dict()}, tmp_path / "best.pt")
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"best.pt: cannot be loaded .*truncated"):
        load_checkpoint(path)


def test_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_wrong_preset_names_both(tmp_path: Path) -> None:
    path = save_atomic({"model": build_unet("medium").state_dict(), "meta": {"preset": "medium"}}, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match=r"holds a 'medium' network but preset 'small' was expected; pass --preset medium"):
        load_network_weights(build_unet("small"), path, "small")


def test_wrong_shape_without_meta(tmp_path: Path) -> None:
    path = save_atomic({"model": build_unet("medium").state_dict()}, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match=r"weights do not fit the 'small' network"):
        load_network_weights(build_unet("small"), path, "small")


def test_matching_weights_load(tmp_path: Path) -> None:
    source = build_unet("small")
    path = save_atomic({"model": source.state_dict(), "meta": {"preset": "small"}}, tmp_path / "s.pt")
    target = build_unet("small")
    assert load_network_weights(target, path, "small")["preset"] == "small"
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))
