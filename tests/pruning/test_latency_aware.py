"""Latency-aware planning on the real backend (untimed: only that it runs and records what it measured),
and the report's latency-aware variant."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import slimbench
from slimbench.bench.variants import apply_variant, latency_reference, variants_for
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


def test_variants_offer_the_equal_latency_pair_on_request():
    """network slimming round_to=8 at the middle ratio, and latency-aware widths planned to its latency;
    with round_to=8 already asked for, its own row at the middle ratio is the reference (no duplicate)."""
    plain = variants_for("none", ratios=(0.3, 0.5, 0.7))
    assert all(v.widths == "channels" for v in plain)
    extra = variants_for("none", ratios=(0.7, 0.3, 0.5), latency_aware=True)
    assert len(extra) == len(plain) + 2
    reference, row = extra[-2:]
    assert reference == latency_reference((0.3, 0.5, 0.7))
    assert (reference.label, reference.ratio, reference.plan_options()["round_to"]) == ("network_slimming+round8",
                                                                                       0.5, 8)
    assert (row.ratio, row.label, row.budget) == (0.5, "network_slimming+latency-widths", "latency")
    options = row.plan_options()
    assert options["widths"] == "latency" and "ratio" not in options and "widths" not in plain[1].plan_options()
    with pytest.raises(ValueError, match="target_latency"):
        apply_variant(_tiny(), torch.randn(1, 3, 16, 16), row)
    rounded = variants_for("none", ratios=(0.3, 0.5, 0.7), round_to=8)
    both = variants_for("none", ratios=(0.3, 0.5, 0.7), round_to=8, latency_aware=True)
    assert both == [*rounded, row] and reference in rounded
    no_ns = variants_for("none", ratios=(0.5,), methods=("optimal_thresholding",), round_to=8, latency_aware=True)
    assert no_ns[-2:] == [latency_reference((0.5,)), row]


QUICK = {"min_time_s": 0.0, "min_rounds": 3, "sample_ms": 0.2}  # a table in about a second: tests only


def test_batch_and_timing_settings_reach_the_table_and_the_plan_records_it(tmp_path):
    model, x = _tiny(), torch.randn(1, 3, 16, 16)
    settings = {"backend": "ort", "threads": 1, "batch": 2, "cache_dir": tmp_path, "progress": False,
                "timing": QUICK}
    plan = slimbench.plan(model, x, ratio=0.5, widths="latency", latency=settings)
    table = plan.options["latency"]["table"]
    assert (table["backend"], table["threads"], table["batch"], table["timing"]) == ("ort", 1, 2, QUICK)
    assert not table["from_cache"] and table["measured_points"] > 0 and table["cached_shapes"] == 0
    assert plan.input_shapes == [[1, 3, 16, 16]]  # timed at batch 2, planned at the example inputs
    again = slimbench.plan(model, x, ratio=0.5, widths="latency", latency=settings)
    cached = again.options["latency"]["table"]
    assert cached["from_cache"] and cached["measured_points"] == 0 and cached["cached_shapes"] == cached["shapes"]
    assert again.masks.keys() == plan.masks.keys()
    assert len(list(tmp_path.glob("ort-1t-*.json"))) == 1
    # a shortened table is cached under a key of its own: a full build never reads it
    slimbench.plan(model, x, ratio=0.5, widths="latency", latency={**settings, "timing": {**QUICK, "min_rounds": 4}})
    assert len(list(tmp_path.glob("ort-1t-*.json"))) == 2


@pytest.mark.parametrize("widths", ["latency", "steps"])
def test_widths_under_a_ratio_time_no_whole_model_once_the_table_is_cached(tmp_path, monkeypatch, widths):
    """Calibration (four whole models timed) serves a latency target; latency widths under a ratio
    need the table only, so with the table cached such a plan times nothing. Analysis.plan builds
    the table as slimbench.plan does."""
    import slimbench.pruning.latency_model as latency_model

    model, x = _tiny(), torch.randn(1, 3, 16, 16)
    settings = {"backend": "ort", "threads": 1, "cache_dir": tmp_path, "progress": False, "timing": QUICK}
    slimbench.analyze(model, x).plan(ratio=0.5, widths=widths, latency=settings)  # builds the table
    monkeypatch.setattr(latency_model, "measure", lambda *a, **k: pytest.fail("a whole model was timed"))
    plan = slimbench.plan(model, x, ratio=0.5, widths=widths, latency=settings)
    assert plan.options["latency"]["table"]["from_cache"] and plan.options["latency"]["calibrated"] is False
    assert plan.options["widths"] == widths
    monkeypatch.undo()
    calibrated = slimbench.plan(model, x, ratio=0.5, widths=widths, latency={**settings, "calibrate": True})
    assert calibrated.options["latency"]["calibrated"] is True
    assert calibrated.masks.keys() == plan.masks.keys()


@pytest.mark.parametrize(("change", "message"), [
    ({"batch": 0}, "batch must be an integer >= 1"),
    ({"batch": 1.5}, "batch must be an integer >= 1"),
    ({"timing": {"rounds": 3}}, "unknown timing option 'rounds'"),
    ({"timing": 3}, "timing must be a dict"),
    ({"repeats": 3}, "unknown setting 'repeats'"),
])
def test_bad_latency_settings_are_refused_before_any_timing(change, message):
    with pytest.raises(ValueError, match=message):
        slimbench.plan(_tiny(), torch.randn(1, 3, 16, 16), ratio=0.5, widths="latency",
                       latency={"backend": "ort", "progress": False, **change})
