"""Cost of ``thop_ext.profile`` against one eager forward pass: torchvision resnet50 at 3x224x224.

Quick mode (no ``--benchmark``): one profile call, counts checked against REFERENCE.md. With
``--benchmark``: pytest-benchmark times the profile call, and the ratio profile / forward, both
measured interleaved in this run (medians of REPEATS), goes to ``extra_info`` next to plain thop's
own ratio. thop_ext's counting pass runs on meta tensors for a model this size, so it costs less
than the real forward plain thop runs. Target: <= 1.2 x one forward. The ratio, with the spread
of its per-round values, is judged against suites/baselines/tools.json.
"""

from __future__ import annotations

import statistics
import time

import thop
import torch
import torchvision

import thop_ext
from slimbench.bench.regression import paired_ratio

REPEATS = 7


def _median_seconds(fn, repeats: int) -> float:
    """Thread CPU seconds: both calls run in this thread, and CPU time leaves out the time a loaded
    machine gives the core to other processes (wall-clock ratios spread far more there)."""
    samples = []
    for _ in range(repeats):
        start = time.thread_time()
        fn()
        samples.append(time.thread_time() - start)
    return statistics.median(samples)


def test_profile_resnet50_cost(benchmark, count_baseline, timed):
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    result = benchmark(thop_ext.profile, model, x)
    assert round(result.macs / 1e9, 4) == 4.0892
    numel = sum(p.numel() for p in model.parameters())
    # live weights: a fresh init holds an exact 0.0 about once per 2**24 draws (see docs/thop_ext.md)
    assert numel - 10 <= result.params <= numel
    assert not any(k.endswith("total_ops") for k in model.state_dict())
    if not timed:
        return

    def forward():
        with torch.no_grad():
            model(x)

    def plain_thop():
        thop.profile(model, inputs=(x,), verbose=False)

    forward()  # warm-up
    times = {"forward": [], "profile": [], "thop": []}
    for _ in range(REPEATS):  # interleaved, so that load on the machine hits all three alike
        times["forward"].append(_median_seconds(forward, 1))
        times["profile"].append(_median_seconds(lambda: thop_ext.profile(model, x), 1))
        times["thop"].append(_median_seconds(plain_thop, 1))
    medians = {k: statistics.median(v) for k, v in times.items()}
    benchmark.extra_info.update({
        "threads": torch.get_num_threads(),
        "forward_s": medians["forward"],
        "profile_s": medians["profile"],
        "profile_over_forward": medians["profile"] / medians["forward"],
        "plain_thop_over_forward": medians["thop"] / medians["forward"],
        "target_profile_over_forward": 1.2,
        "ratios": {"profile_over_forward": paired_ratio(times["profile"], times["forward"]).to_dict()},
    })
    # tool speed tracked like the suites' speedups (suites/baselines/tools.json)
    count_baseline.ratios("tools", "profile/resnet50", benchmark.extra_info["ratios"])
