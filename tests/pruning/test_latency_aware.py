"""Latency-aware planning on the real backend (untimed: only that it runs and records what it measured),
and the report's latency-aware variant."""

from __future__ import annotations

import torch
from torch import nn

import slimbench
from slimbench.bench.variants import variants_for
from tests.helpers import randomize_bn
from tests.nets import cbr


def _tiny() -> nn.Module:
    return randomize_bn(nn.Sequential(cbr(3, 16), cbr(16, 32, 2), cbr(32, 16), nn.AdaptiveAvgPool2d(1),
                                      nn.Flatten(), nn.Linear(16, 4)), seed=1)


def test_plan_builds_a_latency_model_times_the_pruned_model_and_leaves_the_model_alone(tmp_path):
    model, x = _tiny(), torch.randn(1, 3, 16, 16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    settings = {"backend": "ort", "threads": 1, "cache_dir": tmp_path, "progress": False}
    plan = slimbench.plan(model, x, target_latency=0.7, latency=settings)
    info = plan.options["latency"]
    assert {"predicted_ratio", "measured_ratio", "goal_fraction"} <= set(info)
    assert info["measured_ratio"] > 0 and list(tmp_path.glob("ort-1t-*.json"))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    g = slimbench.analyze(model, x)  # the analysis builds the same way and reuses the cached table
    aware = g.plan(ratio=0.5, widths="latency", latency=settings)
    assert aware.options["widths"] == "latency" and aware.pruned_channels > 0
    g.prune(aware)


def test_variants_offer_one_latency_aware_row_on_request():
    plain = variants_for("none", ratios=(0.3, 0.5, 0.7))
    assert all(v.widths == "channels" for v in plain)
    extra = variants_for("none", ratios=(0.3, 0.5, 0.7), latency_aware=True)
    assert len(extra) == len(plain) + 1
    row = extra[-1]
    assert (row.ratio, row.label) == (0.5, "network_slimming+latency-widths")
    assert row.plan_options()["widths"] == "latency" and "widths" not in plain[1].plan_options()
