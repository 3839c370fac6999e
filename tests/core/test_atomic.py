"""Writes are whole or absent: a failure mid-write leaves the old file and no temporary behind."""

import pickle

import pytest
import torch

from slimbench.core.atomic import atomic_path, atomic_write_text
from slimbench.pruning.checkpoint import atomic_save


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "report.md"
    atomic_write_text(target, "old\n")
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(target) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("disk full")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]


def test_checkpoint_interrupted_by_an_unpicklable_object(tmp_path):
    target = tmp_path / "model.pt"
    atomic_save({"w": torch.ones(2)}, target)
    with pytest.raises((pickle.PicklingError, AttributeError), match="pickle"):
        atomic_save({"w": torch.zeros(2), "bad": lambda: None}, target)
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
