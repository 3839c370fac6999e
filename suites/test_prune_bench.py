"""Plan + prune cost at 224x224 on one thread (the issue's yardstick: Torch-Pruning's BN-scale
pruner took about 0.24 s, 1.7 s and 2.6 s for these three models on this machine).

Under ``--benchmark`` the tool speed is tracked as a ratio: plan + prune time over one forward,
alternated in this run, judged against suites/baselines/tools.json like the suites' speedups."""

import pytest
import torch
import torchvision

import slimbench
from slimbench.bench.regression import tool_ratio


@pytest.mark.parametrize("name", ["resnet50", "vgg16_bn", "densenet121"])
def test_plan_and_prune(benchmark, count_baseline, timed, name):
    model = torchvision.models.get_model(name, weights=None).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g))
    x = torch.randn(1, 3, 224, 224)

    def plan_and_prune():
        plan = slimbench.plan(model, x, ratio=0.5)
        return plan, slimbench.prune(model, x, plan=plan)

    plan, pruned = benchmark.pedantic(plan_and_prune, rounds=3, iterations=1, warmup_rounds=0)
    assert plan.macs_after < 0.8 * plan.macs_before
    benchmark.extra_info.update(macs_before=plan.macs_before, macs_after=plan.macs_after,
                                params_before=sum(p.numel() for p in model.parameters()),
                                params_after=sum(p.numel() for p in pruned.parameters()))
    if timed:
        def forward():
            with torch.no_grad():
                model(x)

        ratio = tool_ratio(plan_and_prune, forward, rounds=3)
        benchmark.extra_info.update(plan_prune_over_forward=ratio.value, ratios={"plan_prune_over_forward":
                                                                                 ratio.to_dict()})
        count_baseline.ratios("tools", f"plan+prune/{name}", {"plan_prune_over_forward": ratio})
