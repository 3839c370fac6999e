"""Latency-aware planning: on simulated tables (tests.latency_fakes), what target_latency,
widths="latency" and widths="steps" choose; on the real backend (untimed: only that it runs and records
what it measured); and the report's latency-aware variant."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import slimbench
from slimbench.bench.latency_predict import LatencyModel
from slimbench.bench.variants import apply_variant, latency_reference, variants_for
from slimbench.models import get_model
from slimbench.pruning.plan import keep_from_plan
from tests.helpers import randomize_bn
from tests.latency_fakes import STEP, FakeBackend, build_fake_table, fake_latency_model, resnet20_case
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


def test_calibration_keeps_the_models_it_timed_and_fits_them(tmp_path):
    from slimbench.pruning.latency_model import CALIBRATION_RATIOS, latency_model

    model, x = _tiny(), torch.randn(1, 3, 16, 16)
    lm = latency_model(model, x, cache_dir=tmp_path, progress=False, timing=QUICK)
    step = max(e["step"] for e in lm.table.entries.values())
    assert set(lm.calibration) == {"full", *(f"uniform {r} round_to={k}" for r in CALIBRATION_RATIOS
                                             for k in sorted({1, step}))}
    assert lm.calibration["full"] == (pytest.approx(lm.layer_sum()), lm.reference_ms)
    # least squares on relative errors with a constant: the residuals weighted by 1 / measured sum to zero
    weighted = [((lm.scale * s + lm.constant) / ms - 1) / ms for s, ms in lm.calibration.values()]
    assert sum(weighted) == pytest.approx(0.0, abs=1e-9)


def test_variants_offer_the_equal_latency_pair_on_request():
    """network slimming round_to=8 at the middle ratio, and the knapsack and step widths planned to its
    latency; with round_to=8 already asked for, its own row at the middle ratio is the reference (no
    duplicate)."""
    plain = variants_for("none", ratios=(0.3, 0.5, 0.7))
    assert all(v.widths == "channels" for v in plain)
    extra = variants_for("none", ratios=(0.7, 0.3, 0.5), latency_aware=True)
    assert len(extra) == len(plain) + 3
    reference, *aware = extra[-3:]
    assert reference == latency_reference((0.3, 0.5, 0.7))
    assert (reference.label, reference.ratio, reference.plan_options()["round_to"]) == ("network_slimming+round8",
                                                                                       0.5, 8)
    assert [(row.ratio, row.label, row.budget) for row in aware] == [
        (0.5, "network_slimming+latency-widths", "latency"), (0.5, "network_slimming+latency-steps", "latency")]
    for row, widths in zip(aware, ("latency", "steps"), strict=True):
        options = row.plan_options()
        assert options["widths"] == widths and options["round_to"] == 1 and "ratio" not in options
        with pytest.raises(ValueError, match="target_latency"):
            apply_variant(_tiny(), torch.randn(1, 3, 16, 16), row)
    assert "widths" not in plain[1].plan_options()
    rounded = variants_for("none", ratios=(0.3, 0.5, 0.7), round_to=8)
    both = variants_for("none", ratios=(0.3, 0.5, 0.7), round_to=8, latency_aware=True)
    assert both == [*rounded, *aware] and reference in rounded
    no_ns = variants_for("none", ratios=(0.5,), methods=("optimal_thresholding",), round_to=8, latency_aware=True)
    assert no_ns[-3:] == [latency_reference((0.5,)), *aware]


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


@pytest.fixture(scope="module")
def resnet20():
    return resnet20_case()


@pytest.fixture
def stub(resnet20, tmp_path):
    return fake_latency_model(resnet20, tmp_path)


def test_target_latency_lands_on_the_predicted_budget(resnet20, stub):
    model, x, graph, _ = resnet20
    for widths in ("channels", "latency"):
        plan = slimbench.plan(model, x, target_latency=0.5, latency=stub, widths=widths)
        keep, removed = keep_from_plan(graph, plan)
        ratio = stub.predict(keep, removed) / stub.predict()
        assert 0.45 <= ratio <= 0.5, (widths, ratio)
        assert plan.options["latency"]["predicted_ratio"] == pytest.approx(ratio)
        assert plan.options["target_latency"] == 0.5 and plan.options["widths"] == widths


def test_a_calibrated_target_is_a_fraction_of_the_measured_unpruned_latency(resnet20, stub):
    # the calibration timed the unpruned model at 0.8x its prediction: half of that is 0.4 of the prediction
    model, x, graph, _ = resnet20
    stub.reference_ms = 0.8 * stub.predict()
    plan = slimbench.plan(model, x, target_latency=0.5, latency=stub)
    keep, removed = keep_from_plan(graph, plan)
    assert plan.options["latency"]["predicted_ratio"] == pytest.approx(stub.predict(keep, removed) / stub.reference_ms)
    assert 0.45 <= plan.options["latency"]["predicted_ratio"] <= 0.5
    assert stub.predict(keep, removed) / stub.predict() <= 0.4


def test_target_latency_corrects_with_the_real_check(resnet20, stub):
    model, x, *_ = resnet20
    seen: list[float] = []

    def measure_fn(plan):  # the "real" pruned model runs 50 % slower than its MACs say
        seen.append(1.5 * plan.macs_after / plan.macs_before)
        return seen[-1]

    stub.measure_fn = measure_fn
    plan = slimbench.plan(model, x, target_latency=0.5, latency=stub)
    assert len(seen) >= 2  # it checked, missed, and searched again with a corrected goal
    assert abs(plan.options["latency"]["measured_ratio"] - 0.5) < abs(seen[0] - 0.5)


def test_target_latency_says_when_every_check_lands_far_too_fast(resnet20, stub):
    model, x, *_ = resnet20
    stub.measure_fn = lambda plan: 0.2  # misaligned widths: whatever is planned runs far faster than predicted
    with pytest.warns(UserWarning, match=r"target_latency=0.5 was missed: .* runs at 0.200 .* faster than asked"):
        plan = slimbench.plan(model, x, target_latency=0.5, latency=stub)
    assert plan.options["latency"]["measured_ratio"] == 0.2


def _kept(plan, name: str) -> int:
    layer = next(row for row in plan.layers if row["bn"] == name)
    return layer["after"]


def test_latency_widths_keep_step_ends_only(resnet20, stub):
    model, x, graph, _ = resnet20
    plain = slimbench.plan(model, x, ratio=0.5)
    aware = slimbench.plan(model, x, ratio=0.5, widths="latency", latency=stub)
    pruned_bns = [r["bn"] for r in aware.layers if r["before"] > r["after"]]
    assert pruned_bns
    assert any(_kept(plain, n) % STEP for n in pruned_bns)  # network slimming keeps widths inside steps
    for name in pruned_bns:  # never a width whose next-larger step costs the same
        assert _kept(aware, name) % STEP == 0, (name, _kept(aware, name))
    assert aware.pruned_channels >= 0.5 * plain.pruned_channels
    assert aware.options["latency"]["predicted_ratio"] < 1


def test_latency_widths_do_not_depend_on_what_misaligned_widths_cost(resnet20, tmp_path):
    # widths="latency" keeps whole blocks only: a misaligned width that runs cheaper than the block end
    # below it must not make that block end look dominated (it did: vgg19 fell to 16-channel layers)
    model, x, graph, specs = resnet20
    plans = []
    for penalty in (1.5, 0.3):
        lm = LatencyModel(build_fake_table(specs, FakeBackend(penalty=penalty, pad_outputs=False),
                                           tmp_path / str(penalty)), graph, specs)
        plans.append(slimbench.plan(model, x, ratio=0.5, widths="latency", latency=lm))
    assert [r["after"] for r in plans[0].layers] == [r["after"] for r in plans[1].layers]
    assert all(_kept(plans[1], r["bn"]) % STEP == 0 for r in plans[1].layers if r["before"] > r["after"])


def test_steps_keep_the_criterions_layers_and_move_each_to_its_nearest_step_end(resnet20, stub):
    model, x, graph, _ = resnet20
    plain = slimbench.plan(model, x, ratio=0.5)
    steps = slimbench.plan(model, x, ratio=0.5, widths="steps", latency=stub)
    assert steps.options["widths"] == "steps" and steps.options["latency"]["predicted_ratio"] < 1
    moved = 0
    for before, after in zip(plain.layers, steps.layers, strict=True):
        assert after["bn"] == before["bn"]
        if before["before"] == before["after"]:
            continue  # not pruned by the criterion: nothing to move
        # the FakeBackend's steps end at multiples of STEP: the nearest one, ties up
        nearest = min(max(STEP * round(before["after"] / STEP + 1e-9), STEP), before["before"])
        assert after["after"] == nearest, (after["bn"], before["after"], after["after"])
        moved += after["after"] != before["after"]
    assert moved  # the criterion's widths were inside steps
    # a MACs budget searches the criterion's ratio under the snapping; it lands at or under the budget
    r8 = slimbench.plan(model, x, ratio=0.5, round_to=STEP)
    target = r8.macs_after / r8.macs_before
    at_macs = slimbench.plan(model, x, target_macs=target, widths="steps", latency=stub)
    assert at_macs.macs_after <= r8.macs_after and at_macs.macs_after >= 0.9 * r8.macs_after
    for row in at_macs.layers:
        assert row["after"] == row["before"] or row["after"] % STEP == 0, row
    # and a latency target searches it against the predictor
    fast = slimbench.plan(model, x, target_latency=0.5, widths="steps", latency=stub)
    keep, removed = keep_from_plan(graph, fast)
    assert 0.45 <= stub.predict(keep, removed) / stub.predict() <= 0.5


def test_latency_widths_drop_steps_that_buy_no_gamma(resnet20, stub):
    model, x, *_ = resnet20
    model = randomize_bn(get_model("resnet20", "cifar10"), seed=0)
    with torch.no_grad():
        model.layer3[0].bn1.weight[32:] = 0.0  # half of a 64-channel layer has no importance
    plan = slimbench.plan(model, x, ratio=0.05, widths="latency", latency=stub)
    assert _kept(plan, "layer3.0.bn1") == 32


def test_option_errors(resnet20, stub):
    model, x, *_ = resnet20
    with pytest.raises(ValueError, match="target_latency"):
        slimbench.plan(model, x, ratio=0.5, target_latency=0.5, latency=stub)
    with pytest.raises(ValueError, match="target_latency must be in"):
        slimbench.plan(model, x, target_latency=1.5, latency=stub)
    with pytest.raises(ValueError, match="widths must be one of"):
        slimbench.plan(model, x, widths="auto")
    for widths in ("latency", "steps"):
        with pytest.raises(ValueError, match="round_to=8 would be ignored"):
            slimbench.plan(model, x, widths=widths, round_to=8, latency=stub)
    with pytest.raises(ValueError, match="unknown setting"):
        slimbench.plan(model, x, widths="latency", latency={"backnd": "ort"})
