"""Latency-aware pruning against network slimming's round_to=1 / 8 (and Torch-Pruning), one run.

Untimed (``pytest suites/``): the latency-aware plans are made on a simulated staircase table (no
timing), and each prunes to a model equivalent to its zeroed form with widths at step ends.
``--benchmark``: a real table (onnxruntime, 1 thread), then every variant and the unpruned model are
timed interleaved in ONE ``measure`` call; ``extra_info`` records per variant the measured speedup,
the MACs reduction, the efficiency (speedup / MACs reduction), the predicted latency and its error,
and the table's build time.
"""

from __future__ import annotations

import math
import time
import warnings

import pytest

import slimbench
from slimbench.bench.latency import make_runner, measure
from slimbench.bench.latency_table import LatencyModel, build_table, layer_specs, table_key
from slimbench.core.counting import conv_linear_macs
from slimbench.pruning.latency_model import latency_model
from slimbench.pruning.plan import keep_from_plan
from suites._suite_common import example_input, slimmed_like
from tests.helpers import assert_equivalent

MODELS = ["resnet56", "vgg19"]


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

    from torch import nn

    copied = copy.deepcopy(model).eval()
    last = [m for m in copied.modules() if isinstance(m, nn.Linear)][-1:]
    pruner = tp.pruner.MetaPruner(copied, x, importance=tp.importance.BNScaleImportance(), pruning_ratio=0.5,
                                  global_pruning=True, round_to=8, ignored_layers=last)
    pruner.step()
    return copied


@pytest.mark.parametrize("name", MODELS)
def test_latency_aware(benchmark, timed, name, tmp_path):
    model, x = slimmed_like(name, "cifar10"), example_input(name, "cifar10")
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
        plans["target_latency_0.5"] = g.plan(target_latency=0.5, latency=lm)
        plans["target_latency_0.5_widths"] = g.plan(target_latency=0.5, widths="latency", latency=lm)
        plans["ns_0.3"] = g.plan(ratio=0.3)
        plans["ns_0.7"] = g.plan(ratio=0.7)
    models = {k: g.prune(p) for k, p in plans.items()}
    for key in ("latency_widths", "target_latency_0.5_widths"):
        assert_equivalent(model, x, plans[key], models[key])
    info: dict = {"table_build_s": build_s, "table_points": lm.table.measured_points}
    if not timed:
        for row in plans["latency_widths"].layers:  # 16-channel blocks: never a width inside a block
            assert row["after"] == row["before"] or row["after"] % 16 == 0, row
        benchmark.extra_info.update(info)
        benchmark(lambda: None)
        return
    tp_model = _torch_pruning(model, x)
    if tp_model is not None:
        models["torch_pruning_round8"] = tp_model
    runners = {"unpruned": make_runner("ort", model, (x,))}
    runners.update({k: make_runner("ort", m, (x,)) for k, m in models.items()})
    timings = measure(runners, min_time_s=2.0, min_rounds=30)
    base_ms, base_macs = timings["unpruned"].median_ms, conv_linear_macs(model, x)
    errors = []
    for key, pruned in models.items():
        speedup = base_ms / timings[key].median_ms
        macs_reduction = base_macs / conv_linear_macs(pruned, x)
        row = {"speedup": speedup, "macs_reduction": macs_reduction, "efficiency": speedup / macs_reduction,
               "measured_fraction": 1 / speedup, "iqr_fraction": timings[key].iqr_fraction}
        if key in plans:
            keep, removed = keep_from_plan(graph, plans[key])
            predicted = lm.predict(keep, removed)
            row.update(predicted_ms=predicted, measured_ms=timings[key].median_ms,
                       prediction_error=predicted / timings[key].median_ms - 1)
            errors.append(abs(row["prediction_error"]))
        info[key] = row
    info["unpruned"] = {"measured_ms": base_ms, "predicted_ms": lm.predict(), "iqr_fraction":
                        timings["unpruned"].iqr_fraction}
    info["max_abs_prediction_error"] = max(errors)
    info["torch_pruning"] = "measured" if tp_model is not None else "not installed (pip install slimbench[compare])"
    benchmark.extra_info.update(info)
    benchmark.pedantic(runners["latency_widths"], rounds=20, iterations=1, warmup_rounds=2)
