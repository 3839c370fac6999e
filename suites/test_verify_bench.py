"""What prune's self-verification costs, as a ratio of plan + prune time without it.

The ratio is recorded in extra_info (verify_overhead = verified / unverified - 1); it is never
asserted, timings being machine-dependent. resnet56 at 32x32 is checked in float64, resnet50 at
224x224 in float32 (over the float64 budget of slimbench.pruning.verify).
"""

import statistics
import time

import pytest
import torch
import torchvision

import slimbench
from slimbench.models import get_model


def _model(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    if name == "resnet56":
        model, x = get_model("resnet56"), torch.randn(1, 3, 32, 32)
    else:
        model, x = torchvision.models.get_model(name, weights=None), torch.randn(1, 3, 224, 224)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g))
    return model.eval(), x


@pytest.mark.parametrize("name", ["resnet56", "resnet50"])
def test_verification_overhead(benchmark, name):
    model, x = _model(name)
    torch.set_num_threads(1)

    def plan_and_prune(verify: bool):
        plan = slimbench.plan(model, x, ratio=0.5, residual="shared")
        return slimbench.prune(model, x, plan=plan, verify=verify)

    plain = []
    for _ in range(3 if benchmark.enabled else 1):
        start = time.perf_counter()
        plan_and_prune(False)
        plain.append(time.perf_counter() - start)
    verified = []

    def timed():
        start = time.perf_counter()
        result = plan_and_prune(True)
        verified.append(time.perf_counter() - start)
        return result

    pruned = benchmark.pedantic(timed, rounds=3, iterations=1, warmup_rounds=0)
    record = pruned.slimbench_plan.options["verification"]
    assert record["frozen"] == []
    benchmark.extra_info.update(
        checked=record["checked"], max_rel_err=record["max_rel_err"],
        plan_prune_s=statistics.median(plain), plan_prune_verify_s=statistics.median(verified),
        verify_overhead=statistics.median(verified) / statistics.median(plain) - 1)
