"""ILSVRC12 suite at 3x224x224: resnet50, vgg16_bn, mobilenet_v2 (torchvision, weights=None), with the
CIFAR suite's ratios {0.3, 0.5, 0.7} and methods {network slimming, optimal thresholding}, plus the
residual variant each model's ``ModelInfo.residual`` adds (branch removal for resnet50).

Every case checks its counts against suites/baselines/ilsvrc12.json and pruned == zeroed;
mobilenet_v2 (depthwise coupling) is also exported to ONNX once, at 0.5. Quick mode (224 inputs are
costly on 2 cores) runs every method and ratio of resnet50 and mobilenet_v2, and vgg16_bn (the
slow one: 15 GMACs) at 0.5 only. ``--benchmark`` and ``--update-baselines``: every case.
"""

from __future__ import annotations

from _suite_common import run_case

from slimbench.bench.export import export_onnx, onnx_max_abs_diff
from slimbench.bench.variants import variants_for
from slimbench.models import model_info

MODELS = ("resnet50", "vgg16_bn", "mobilenet_v2")
QUICK_RATIOS = {"vgg16_bn": (0.5,)}  # quick mode: the ratios of models too slow for all of them
EXPORTED = ("mobilenet_v2", "network_slimming", 0.5)


def pytest_generate_tests(metafunc):
    full = metafunc.config.getoption("--benchmark") or metafunc.config.getoption("--update-baselines")
    cases = []
    for name in MODELS:
        variants = variants_for(model_info(name, "ilsvrc12").residual)
        if not full and name in QUICK_RATIOS:
            variants = [v for v in variants if v.method == "unpruned" or v.ratio in QUICK_RATIOS[name]]
        cases += [(name, v) for v in variants]
    metafunc.parametrize(("name", "variant"), cases, ids=[v.key(n) for n, v in cases])


def test_ilsvrc12_case(benchmark, count_baseline, timed, tmp_path, name, variant):
    model, pruned, plan, x = run_case(benchmark, count_baseline, timed, "ilsvrc12", name, "ilsvrc12", variant)
    run = benchmark.extra_info["run"]  # what produced the numbers travels with them
    assert run["dataset"] == "ilsvrc12" and {"cpu", "threads", "versions", "commit"} <= set(run["environment"])
    if (name, variant.label, variant.ratio) == EXPORTED and not timed:
        path = export_onnx(pruned, x, tmp_path / "pruned.onnx")
        assert onnx_max_abs_diff(pruned, path, x) < 1e-4
