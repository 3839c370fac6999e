"""Build the ``LatencyModel`` that latency-aware planning reads, for a model on this machine.

``slimbench.plan`` and ``Analysis.plan`` call :func:`resolve_latency` when ``target_latency`` or
``widths="latency"`` is asked without a ready ``latency=`` model: the layer table is measured (or
read from the cache), then calibrated (scale and constant, least squares on relative errors) on
whole-model runs timed interleaved: the unpruned model and uniformly pruned ones at ratios 0.3, 0.5,
0.7, 0.9, each once as is and once with widths on the table's blocks (``round_to`` = its step), every
time the fastest interleaved sample (``latency_table.fastest``). Why 0.9: without it, plans far below
0.7's latency were extrapolated; on five zoo models x 24 plans timed interleaved, mobilenet_v2's
smallest plans (0.9-2.5 ms) were 14-44 % overpriced and densenet40's network slimming 0.8 18 % (with
0.9: 8.4 and 8.3 % the largest misses). Why both: the table cannot see layout conversions between
layers (misaligned plans pay them) nor what an off-block input costs; fitted on misaligned plans only,
the constant absorbed those and overpriced small blocked plans (mobilenet_v2's latency-aware plan by
23 %); on blocked plans only, densenet40's misaligned plans were 35 % off.
The pruning function is passed in: this module sits between ``plan`` and ``surgery`` and imports
neither's caller.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping

from torch import Tensor, nn

from slimbench.analysis.graph import DEFAULT_RESIDUAL, ChannelGraph, build_graph
from slimbench.bench.latency import batch_inputs, make_runner, measure
from slimbench.bench.latency_predict import LatencyModel
from slimbench.bench.latency_table import build_table, fastest, layer_specs, table_key
from slimbench.core.errors import SlimbenchValueError
from slimbench.core.inputs import ExampleInputs, as_example_inputs, unwrap
from slimbench.pruning.options import check_latency_settings, wants_latency_model
from slimbench.pruning.plan import PruningPlan, keep_from_plan, make_plan

__all__ = ["latency_model", "resolve_latency"]

CALIBRATION_RATIOS = (0.3, 0.5, 0.7, 0.9)  # uniformly pruned models (and on the table's blocks) timed to fit it
PruneFn = Callable[[PruningPlan], nn.Module]


def latency_model(model: nn.Module, example_inputs: ExampleInputs, *, prune_fn: PruneFn | None = None,
                  graph: ChannelGraph | None = None, residual: str = DEFAULT_RESIDUAL, backend: str = "ort",
                  threads: int = 1, batch: int | None = None, cache_dir=None, progress: bool = True,
                  calibrate: bool = True, timing: Mapping | None = None, **table_options) -> LatencyModel:
    """The latency model of ``model`` at ``example_inputs`` (batch included) on ``backend``.

    ``batch``: time at this batch size instead (the inputs' first row repeated; plans and pruning
    keep ``example_inputs``). ``prune_fn(plan) -> pruned model`` (default: ``slimbench.prune``) is
    used to time the calibration model and, later, to check a plan's real latency
    (``LatencyModel.measure_fn``). ``calibrate=False``: the bare table sum (scale 1, constant 0) and
    no real check. ``timing``: ``measure`` options (``options.TIMING_KEYS``) for every timing here,
    only to shorten a build (tests); such a table is cached under a key of its own.
    """
    inputs = as_example_inputs(example_inputs)
    timed_inputs = batch_inputs(inputs, batch) if batch is not None else inputs
    source = unwrap(model)
    timing = dict(timing or {})
    if timing and "key" not in table_options:  # a shortened table never stands in for a full one
        table_options["key"] = {**table_key(backend, threads), "timing": dict(sorted(timing.items()))}
    if graph is None:
        graph = build_graph(source, inputs, residual=residual)
    if prune_fn is None:
        import slimbench

        def prune_fn(plan: PruningPlan) -> nn.Module:
            return slimbench.prune(source, inputs, plan=plan)

    specs = layer_specs(source, timed_inputs, graph)
    table = build_table(specs, backend=backend, threads=threads, cache_dir=cache_dir, progress=progress,
                        **{**timing, **table_options})
    lm = LatencyModel(table, graph, specs)
    if not calibrate:
        return lm
    reference = make_runner(backend, source, timed_inputs, threads=threads)
    whole = {"min_time_s": 1.0, "min_rounds": 20, **timing}
    residual = graph.options.get("residual", DEFAULT_RESIDUAL)
    step = max(entry["step"] for entry in table.entries.values()) if table.entries else 1

    plans: dict[str, PruningPlan] = {}
    for round_to in sorted({1, step}):
        try:
            plans.update({f"uniform {r} round_to={round_to}": make_plan(
                source, inputs, method="uniform", ratio=r, round_to=round_to, residual=residual, graph=graph,
                warn=False) for r in CALIBRATION_RATIOS})
        except SlimbenchValueError:
            if round_to == 1:
                raise
            # no layer wider than one block: blocked plans would be the misaligned ones again
    runners = {"full": reference, **{k: make_runner(backend, prune_fn(p), timed_inputs, threads=threads)
                                     for k, p in plans.items()}}
    timings = measure(runners, threads=threads, backend=backend, **whole)
    lm.calibration = {"full": (lm.layer_sum(), fastest(timings["full"]))}
    for k, plan in plans.items():
        lm.calibration[k] = (lm.layer_sum(*keep_from_plan(graph, plan)), fastest(timings[k]))
    lm.calibrate(list(lm.calibration.values()))
    lm.reference_ms = fastest(timings["full"])

    def measure_fn(plan: PruningPlan) -> float:
        pruned = make_runner(backend, prune_fn(plan), timed_inputs, threads=threads)
        result = measure({"full": reference, "pruned": pruned}, threads=threads, backend=backend, **whole)
        return fastest(result["pruned"]) / fastest(result["full"])

    lm.measure_fn = measure_fn
    return lm


def resolve_latency(model: nn.Module, inputs: tuple[Tensor, ...], options: MutableMapping, prune_fn: PruneFn,
                    graph: ChannelGraph | None = None) -> None:
    """Put a built ``LatencyModel`` into ``options["latency"]`` when the plan options need one."""
    given = options.get("latency")
    if not wants_latency_model(options) or (given is not None and not isinstance(given, MutableMapping)):
        return  # nothing to build, or a model (checked by check_options)
    settings = dict(given or {})
    check_latency_settings(settings)
    # Calibration times nine whole models (seconds to minutes); only a latency target needs it. Widths
    # under a ratio or MACs budget come from the table alone, so a cached table makes such a plan instant.
    settings.setdefault("calibrate", options.get("target_latency") is not None)
    options["latency"] = latency_model(model, inputs, prune_fn=prune_fn, graph=graph,
                                       residual=options.get("residual", DEFAULT_RESIDUAL), **settings)
