"""Plan + prune cost at 224x224 on one thread (the issue's yardstick: Torch-Pruning's BN-scale
pruner took about 0.24 s, 1.7 s and 2.6 s for these three models on this machine)."""

import pytest
import torch
import torchvision

import slimbench


@pytest.mark.parametrize("name", ["resnet50", "vgg16_bn", "densenet121"])
def test_plan_and_prune(benchmark, name):
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
