"""ILSVRC12 suite at 3x224x224: resnet50, vgg16_bn, mobilenet_v2 (torchvision, weights=None).

Quick mode (224 inputs are costly on 2 cores): the unpruned counts and one network-slimming case
at 0.5 per model, counts against suites/baselines/ilsvrc12.json and pruned == zeroed; mobilenet_v2
(depthwise coupling) is also exported to ONNX. ``--benchmark``: every method x ratio, timed.
"""

from __future__ import annotations

from _suite_common import run_case

from slimbench.bench.export import export_onnx, onnx_max_abs_diff
from slimbench.bench.variants import UNPRUNED, Variant, variants_for
from slimbench.models import model_info

MODELS = ("resnet50", "vgg16_bn", "mobilenet_v2")
QUICK = [UNPRUNED, Variant("network_slimming", 0.5)]


def pytest_generate_tests(metafunc):
    """Every case under --benchmark or --update-baselines (baselines cover them all); else QUICK."""
    full = metafunc.config.getoption("--benchmark") or metafunc.config.getoption("--update-baselines")
    cases = [(name, v) for name in MODELS
             for v in (variants_for(model_info(name, "ilsvrc12").family, extras=False) if full else QUICK)]
    metafunc.parametrize(("name", "variant"), cases, ids=[v.key(n) for n, v in cases])


def test_ilsvrc12_case(benchmark, count_baseline, timed, tmp_path, name, variant):
    model, pruned, plan, x = run_case(benchmark, count_baseline, timed, "ilsvrc12", name, "ilsvrc12", variant)
    if name == "mobilenet_v2" and plan is not None and not timed:
        path = export_onnx(pruned, x, tmp_path / "pruned.onnx")
        assert onnx_max_abs_diff(pruned, path, x) < 1e-4
