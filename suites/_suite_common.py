"""What the CIFAR and ILSVRC12 suites share: deterministic gamma, counts, equivalence, timing."""

from __future__ import annotations

import functools

import torch
from torch import nn

from slimbench.bench.latency import available_backends, environment, make_runner
from slimbench.bench.regression import speedup_info
from slimbench.bench.variants import Variant, apply_variant, param_count
from slimbench.core.counting import conv_linear_macs
from slimbench.models import get_model, model_info
from tests.helpers import assert_equivalent, randomize_bn

# Branches whose last BN sparse training drove to ~0 (deterministic stand-in, so branch removal has work).
DEAD_BRANCHES = {"resnet56": ["layer3.2.bn2", "layer3.5.bn2", "layer2.7.bn2"],
                 "resnet50": ["layer2.1.bn3", "layer3.2.bn3", "layer3.4.bn3"]}


@functools.lru_cache(maxsize=4)
def slimmed_like(name: str, dataset: str) -> nn.Module:
    """The zoo model with seeded gamma in (0, 1), beta and running stats: counts are reproducible."""
    model = randomize_bn(get_model(name, dataset), seed=0, running_mean=False)
    with torch.no_grad():
        for bn in DEAD_BRANCHES.get(name, []):
            model.get_submodule(bn).weight.mul_(1e-3)
    return model.eval()


def example_input(name: str, dataset: str) -> torch.Tensor:
    shape = model_info(name, dataset).input_shape
    return torch.randn(1, *shape, generator=torch.Generator().manual_seed(1))


def counts(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    return {"params": param_count(model), "macs": conv_linear_macs(model, x)}


@functools.lru_cache(maxsize=1)
def _environment() -> dict:
    return environment(threads=1)


def run_record(dataset: str) -> dict:
    """What produced a suite's numbers, for benchmark extra_info: seeded gamma (no training), batch 1,
    one thread, the example input's seed, and the machine / versions / commit."""
    return {"dataset": dataset, "input": "seeded random tensor at the data set's shape", "epochs": 0,
            "steps": 0, "gamma": "seeded uniform(0, 1), not trained", "batch_size": 1,
            "seed": {"gamma": 0, "input": 1},
            "environment": _environment()}


def run_case(benchmark, count_baseline, timed: bool, suite: str, name: str, dataset: str, variant: Variant):
    """Prune, check counts and equivalence; under --benchmark also time every available latency
    backend (1 thread) with in-run speedups ``speedup_<backend>`` and their spread ``speedup_<backend>_iqr``
    (IQR of the per-round ratios, in x) in extra_info."""
    model, x = slimmed_like(name, dataset), example_input(name, dataset)
    pruned, plan = apply_variant(model, x, variant)
    measured = counts(pruned, x)
    if plan is not None:
        assert measured["macs"] == plan.macs_after, "the plan's MAC count disagrees with torch's counter"
        assert measured["macs"] < plan.macs_before
        assert_equivalent(model, x, plan, pruned)
    count_baseline(suite, variant.key(name), **measured)
    info = dict(measured, flops=_flops(pruned, x), case=variant.key(name), run=run_record(dataset))
    if timed:
        # speedups over the unpruned model, interleaved in this run, with their spread (ratios dict)
        info.update(speedup_info(model, pruned, (x,), backends=available_backends(), min_time_s=1.0, min_rounds=20))
        info["macs_ratio"] = conv_linear_macs(model, x) / measured["macs"]
        run = make_runner("ort", pruned, (x,))
        benchmark.extra_info.update(info)
        benchmark(run)
        count_baseline.ratios(suite, variant.key(name), info["ratios"])
    else:
        benchmark.extra_info.update(info)
        benchmark(lambda: None)  # the fixture must still be used once in quick mode
    return model, pruned, plan, x


def _flops(model: nn.Module, x: torch.Tensor) -> int | None:
    """FLOPs from thop_ext (issue 4) when it is installed; None until then."""
    try:
        from thop_ext import profile
    except ImportError:
        return None
    return int(profile(model, (x,)).flops)
