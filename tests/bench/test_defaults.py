"""The defaults study (docs/defaults.md) on a small real model: every mode measured, the branch rules compared."""

from __future__ import annotations

import torch

from slimbench.bench.defaults import MODES, branch_rules, render, study_model
from slimbench.bench.sweep_case import _randomize_bn
from slimbench.models import get_model


def _resnet20() -> torch.nn.Module:
    torch.manual_seed(0)
    model = get_model("resnet20", "cifar10")
    _randomize_bn(model, 0)
    return model.eval()


def test_every_mode_is_measured_and_equivalent():
    row = study_model(_resnet20(), (3, 32, 32), latency=False)
    for mode in MODES:
        assert row[mode]["err"] <= 1e-4
        assert 0.2 < row[mode]["removed"] < 0.9
    row["input"] = "3x32x32"
    assert "| resnet20 | 3x32x32 |" in render({"resnet20": row})


def test_branch_rules_ours_last_bn_netslim_any_bn():
    model = _resnet20()
    x = torch.randn(1, 3, 32, 32)
    random = branch_rules(model, x)
    assert random["found"] == 9  # three stages of three basic blocks
    dead = branch_rules(model, x, dead_layers=2)
    # two branches got their last BN emptied, two their first: ours removes the former, netslim all four
    assert dead == {"found": 9, "removed_last": 2, "removed_any": 4}
