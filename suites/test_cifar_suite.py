"""CIFAR suite: vgg19, resnet56, resnet164, densenet40 x {0.3, 0.5, 0.7} x {network slimming,
optimal thresholding}, plus branch removal (resnet56) and channel selection (resnet164, densenet40).

Quick mode: counts against suites/baselines/cifar.json and pruned == zeroed; one ONNX export per
model. ``--benchmark``: latency on every available backend at batch 1, 1 thread, with in-run speedups in extra_info.
"""

from __future__ import annotations

import pytest
from _suite_common import run_case

from slimbench.bench.export import export_onnx, onnx_max_abs_diff
from slimbench.bench.variants import variants_for
from slimbench.models import model_info

MODELS = ("vgg19", "resnet56", "resnet164", "densenet40")
CASES = [(name, v) for name in MODELS for v in variants_for(model_info(name).residual)]
EXPORTED = {name: next(v for v in variants_for(model_info(name).residual)[::-1] if v.ratio == 0.5) for name in MODELS}


@pytest.mark.parametrize(("name", "variant"), CASES, ids=[v.key(n) for n, v in CASES])
def test_cifar_case(benchmark, count_baseline, timed, tmp_path, name, variant):
    model, pruned, plan, x = run_case(benchmark, count_baseline, timed, "cifar", name, "cifar10", variant)
    run = benchmark.extra_info["run"]  # what produced the numbers travels with them
    assert run["dataset"] == "cifar10" and {"cpu", "threads", "versions", "commit"} <= set(run["environment"])
    if variant == EXPORTED[name]:
        path = export_onnx(pruned, x, tmp_path / "pruned.onnx")
        assert onnx_max_abs_diff(pruned, path, x) < 1e-4
