"""What the CIFAR and ILSVRC12 suites share: deterministic gamma, counts, equivalence, timing."""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.flop_counter import FlopCounterMode

import slimbench
from slimbench.bench.latency import make_runner
from slimbench.bench.regression import speedup_info
from slimbench.bench.variants import Variant, apply_variant, param_count
from slimbench.models import get_model, model_info

# Branches whose last BN sparse training drove to ~0 (deterministic stand-in, so branch removal has work).
DEAD_BRANCHES = {"resnet56": ["layer3.2.bn2", "layer3.5.bn2", "layer2.7.bn2"]}


@functools.lru_cache(maxsize=4)
def slimmed_like(name: str, dataset: str) -> nn.Module:
    """The zoo model with seeded gamma in (0, 1), beta and running stats: counts are reproducible."""
    model = get_model(name, dataset)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BatchNorm) and m.affine:
                m.weight.copy_(torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
        for bn in DEAD_BRANCHES.get(name, []):
            model.get_submodule(bn).weight.mul_(1e-3)
    return model.eval()


def example_input(name: str, dataset: str) -> torch.Tensor:
    shape = model_info(name, dataset).input_shape
    return torch.randn(1, *shape, generator=torch.Generator().manual_seed(1))


def conv_linear_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Conv + linear MACs as torch's FlopCounterMode counts them (REFERENCE.md's convention)."""
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model.eval()(x)
    return counter.get_total_flops() // 2


def counts(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    return {"params": param_count(model), "macs": conv_linear_macs(model, x)}


def assert_matches_zeroed(model: nn.Module, pruned: nn.Module, plan, x: torch.Tensor) -> None:
    with torch.inference_mode():
        reference = slimbench.zero_bn_channels(model, plan).eval()(x)
        out = pruned.eval()(x)
    error = ((out - reference).abs().max() / reference.abs().max().clamp_min(1e-12)).item()
    assert error < 1e-4, f"pruned model differs from the zeroed model by {error:.3g}"


def run_case(benchmark, count_baseline, timed: bool, suite: str, name: str, dataset: str, variant: Variant):
    """Prune, check counts and equivalence; under --benchmark also time (ort, 1 thread) with in-run
    speedups, judged against (or, with --update-baselines, recorded into) the baselines' ratios."""
    model, x = slimmed_like(name, dataset), example_input(name, dataset)
    pruned, plan = apply_variant(model, x, variant)
    measured = counts(pruned, x)
    if plan is not None:
        assert measured["macs"] == plan.macs_after, "the plan's MAC count disagrees with torch's counter"
        assert measured["macs"] < plan.macs_before
        assert_matches_zeroed(model, pruned, plan, x)
    count_baseline(suite, variant.key(name), **measured)
    info = dict(measured, flops=_flops(pruned, x), case=variant.key(name))
    if timed:
        # speedups over the unpruned model, interleaved in this run, with their spread (ratios dict)
        info.update(speedup_info(model, pruned, (x,), backends=("torch", "ort"), min_time_s=1.0, min_rounds=20))
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
