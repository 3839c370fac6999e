"""Latency-aware pruning against network slimming's round_to=1 / 8 (and Torch-Pruning), one run.

Untimed (``pytest suites/``): the latency-aware plans are made on a simulated staircase table (no
timing), and each prunes to a model equivalent to its zeroed form with widths at step ends;
``widths="steps"`` at round_to=8's MACs is predicted no slower than round_to=8.
``--benchmark``: a real table (onnxruntime, 1 thread), then every variant and the unpruned model are
timed interleaved in ONE ``measure`` call; ``extra_info`` records per variant the measured speedup,
the MACs reduction, the efficiency (speedup / MACs reduction), the predicted latency and its error,
and the table's build time. Speedups are given on the fastest samples (what the latency model
predicts; steady on a loaded machine) and on the medians (``median_*``, with the IQR). A
``target_latency`` row also keeps ``planned_measured_fraction``: what the plan's own check measured,
the pruned model timed against the unpruned one alone. The floor row (``uniform_0.99``: every layer at
its narrowest) gives ``floor_fraction``, the latency channel pruning cannot remove, and
``efficiency_estimate_at_0.5``: the efficiency a plan at half the latency gets if its kept MACs cost
what they cost in the unpruned model.
"""

from __future__ import annotations

import math
import time
import warnings

import pytest
from torch import nn

import slimbench
from slimbench.bench.latency import make_runner, measure
from slimbench.bench.latency_predict import LatencyModel
from slimbench.bench.latency_table import build_table, fastest, layer_specs, table_key
from slimbench.core.counting import conv_linear_macs
from slimbench.pruning.latency_model import latency_model
from slimbench.pruning.plan import keep_from_plan
from suites._suite_common import example_input, slimmed_like
from tests.helpers import assert_equivalent

# issue 14's validation set: the CIFAR zoo at 32x32, two ImageNet models at 224
MODELS = [("resnet56", "cifar10"), ("vgg19", "cifar10"), ("densenet40", "cifar10"), ("resnet50", "ilsvrc12"),
          ("mobilenet_v2", "ilsvrc12")]


FLOOR = "uniform_0.99"  # every prunable layer at (nearly) its narrowest: the latency channel pruning cannot remove


def efficiency_estimate(floor_macs: float, floor_latency: float, target: float) -> float:
    """Efficiency (speedup / MACs reduction) at latency fraction ``target`` on the straight line from the
    floor model (``floor_macs``, ``floor_latency``: fractions of the unpruned model) to the unpruned one:
    what a plan reaches when its kept MACs cost what they cost in the unpruned model, per MAC. Not a
    bound (pruned layers can run more or less efficiently per MAC), but it shows what the floor rules out:
    efficiency 0.95 at 0.5 needs 47.5 % of the MACs kept in the half of the latency above the floor."""
    if floor_latency >= target:
        return 0.0
    kept = floor_macs + (target - floor_latency) / (1 - floor_latency) * (1 - floor_macs)
    return kept / target


def _simulated(graph, model, x, tmp_path) -> LatencyModel:
    """A table on simulated time: cost proportional to 16-channel blocks (what onnxruntime shows here)."""
    now = [0.0]

    def factory(spec, cin, cout):
        blocks = math.ceil(cout / 16) * (1 if spec.depthwise else math.ceil(cin / 16))
        seconds = 1e-7 * blocks * spec.height * spec.width

        def run():
            now[0] += seconds
        return run

    specs = layer_specs(model, (x,), graph)
    table = build_table(specs, runner_factory=factory, clock=lambda: now[0], cache_dir=tmp_path, progress=False,
                        key=table_key("ort", 1, version="simulated", cpu="simulated"), min_time_s=0.0,
                        min_rounds=3, max_rounds=3)
    return LatencyModel(table, graph, specs)


def _torch_pruning(model, x):
    """Torch-Pruning's BN-scale pruner, global, ratio 0.5, round_to 8 (None when not installed)."""
    try:
        import torch_pruning as tp
    except ImportError:
        return None
    import copy

    copied = copy.deepcopy(model).eval()
    last = [m for m in copied.modules() if isinstance(m, nn.Linear)][-1:]
    try:
        pruner = tp.pruner.MetaPruner(copied, x, importance=tp.importance.BNScaleImportance(), pruning_ratio=0.5,
                                      global_pruning=True, round_to=8, ignored_layers=last)
        pruner.step()
        copied(x)
    except Exception as error:  # e.g. resnet56's zero-padded (option A) shortcuts
        return f"failed: {type(error).__name__}: {str(error)[:80]}"
    return copied


def test_efficiency_estimate():
    assert efficiency_estimate(0.0, 0.0, 0.5) == pytest.approx(1.0)  # latency proportional to MACs
    assert efficiency_estimate(0.04, 0.39, 0.5) == pytest.approx((0.04 + 0.11 / 0.61 * 0.96) / 0.5)
    assert efficiency_estimate(0.04, 0.55, 0.5) == 0.0  # the floor is above the target


@pytest.mark.parametrize(("name", "dataset"), MODELS, ids=[m for m, _ in MODELS])
def test_latency_aware(benchmark, timed, name, dataset, tmp_path):
    model, x = slimmed_like(name, dataset), example_input(name, dataset)
    g = slimbench.analyze(model, x)
    graph = g.graph()
    started = time.perf_counter()
    if timed:
        lm = latency_model(model, x, graph=graph, prune_fn=g.prune, progress=False)
    else:
        lm = _simulated(graph, model, x, tmp_path)
    build_s = time.perf_counter() - started
    plans = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        plans["ns_round1"] = g.plan(ratio=0.5)
        plans["ns_round8"] = g.plan(ratio=0.5, round_to=8)
        plans["latency_widths"] = g.plan(ratio=0.5, widths="latency", latency=lm)
        r8 = plans["ns_round8"]
        plans["latency_widths_at_round8_macs"] = g.plan(target_macs=r8.macs_after / r8.macs_before,
                                                        widths="latency", latency=lm)
        plans["steps"] = g.plan(ratio=0.5, widths="steps", latency=lm)
        plans["steps_at_round8_macs"] = g.plan(target_macs=r8.macs_after / r8.macs_before, widths="steps",
                                               latency=lm)
        plans["target_latency_0.5"] = g.plan(target_latency=0.5, latency=lm)
        plans["target_latency_0.5_steps"] = g.plan(target_latency=0.5, widths="steps", latency=lm)
        plans["target_latency_0.5_widths"] = g.plan(target_latency=0.5, widths="latency", latency=lm)
        plans["ns_0.3"] = g.plan(ratio=0.3)
        plans["ns_0.7"] = g.plan(ratio=0.7)
        plans["uniform_target_latency_0.5"] = g.plan(method="uniform", target_latency=0.5, latency=lm)
        plans[FLOOR] = g.plan(method="uniform", ratio=0.99)
    models = {k: g.prune(p) for k, p in plans.items()}
    for key in ("latency_widths", "target_latency_0.5_widths", "steps", "target_latency_0.5_steps"):
        assert_equivalent(model, x, plans[key], models[key])
    info: dict = {"model_build_s": build_s, "table_build_s": lm.table.build_seconds,
                  "table_points": lm.table.measured_points}
    if not timed:
        convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
        for key in ("latency_widths", "steps"):  # 16-channel blocks: never a width inside one
            for n, conv in models[key].named_modules():
                if isinstance(conv, nn.Conv2d) and n in convs:
                    assert conv.out_channels in (convs[n].out_channels, *range(16, 4096, 16)), (key, n, conv)
        # at round_to=8's MACs (or as near as whole blocks get), steps never cost more on the staircase
        r8_keep, steps_keep = (keep_from_plan(graph, plans[k]) for k in ("ns_round8", "steps_at_round8_macs"))
        assert lm.predict(*steps_keep) <= lm.predict(*r8_keep) * 1.001, (name, lm.predict(*steps_keep),
                                                                         lm.predict(*r8_keep))
        benchmark.extra_info.update(info)
        benchmark(lambda: None)
        return
    tp_model = _torch_pruning(model, x)
    if isinstance(tp_model, nn.Module):
        models["torch_pruning_round8"] = tp_model
    runners = {"unpruned": make_runner("ort", model, (x,))}
    runners.update({k: make_runner("ort", m, (x,)) for k, m in models.items()})
    timings = measure(runners, min_time_s=3.0, min_rounds=40)
    base_macs = conv_linear_macs(model, x)
    errors = []
    for key, pruned in models.items():
        macs_reduction = base_macs / conv_linear_macs(pruned, x)
        row = {"macs_reduction": macs_reduction, "iqr_fraction": timings[key].iqr_fraction,
               "measured_ms": fastest(timings[key]), "median_ms": timings[key].median_ms}
        for stat, value in (("", fastest), ("median_", lambda t: t.median_ms)):  # fastest sample, median
            speedup = value(timings["unpruned"]) / value(timings[key])
            row.update({f"{stat}speedup": speedup, f"{stat}efficiency": speedup / macs_reduction,
                        f"{stat}measured_fraction": 1 / speedup})
        if key in plans and key != FLOOR:
            keep, removed = keep_from_plan(graph, plans[key])
            row.update(predicted_ms=lm.predict(keep, removed),
                       prediction_error=lm.predict(keep, removed) / fastest(timings[key]) - 1)
            errors.append(abs(row["prediction_error"]))
            planned = plans[key].options.get("latency", {}).get("measured_ratio")
            if planned is not None:  # the plan's own check (it against the unpruned model alone)
                row["planned_measured_fraction"] = planned
        info[key] = row
    info["unpruned"] = {"measured_ms": fastest(timings["unpruned"]), "median_ms": timings["unpruned"].median_ms,
                        "predicted_ms": lm.predict(), "iqr_fraction": timings["unpruned"].iqr_fraction}
    info["max_abs_prediction_error"] = max(errors)
    info["calibration"] = {"scale": lm.scale, "constant": lm.constant,
                           "points": {k: {"layer_sum": s, "measured_ms": ms} for k, (s, ms) in lm.calibration.items()}}
    info["floor_fraction"] = info[FLOOR]["measured_fraction"]
    info["efficiency_estimate_at_0.5"] = efficiency_estimate(1 / info[FLOOR]["macs_reduction"],
                                                             info["floor_fraction"], 0.5)
    info["torch_pruning"] = ("measured" if isinstance(tp_model, nn.Module) else tp_model
                             or "not installed (pip install slimbench[compare])")
    benchmark.extra_info.update(info)
    benchmark.pedantic(runners["latency_widths"], rounds=20, iterations=1, warmup_rounds=2)
