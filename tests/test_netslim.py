"""Coming from netslim (and thop): their README usage runs unchanged on slimbench, with slimbench's results."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import slimbench
import thop_ext
from slimbench import netslim
from slimbench.models import get_model


class Net(nn.Module):
    """Written the way netslim's examples write models: nn.Sequential features and a classifier."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        cfg = [16, "M", 32, "M", 64]
        layers, channels = [], 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(channels, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                channels = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x):
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, 1).view(x.size(0), -1)
        return self.classifier(x)


def _sparse_train(model: nn.Module, steps: int = 4) -> None:
    """netslim's README step 2: update_bn between loss.backward() and optimizer.step()."""
    torch.manual_seed(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        netslim.update_bn(model)  # or update_bn(model, s)
        optimizer.step()


def test_netslim_readme_usage_runs_unchanged_and_matches_slimbench(tmp_path):
    torch.manual_seed(0)
    model = Net()
    _sparse_train(model)
    input_shape = (3, 32, 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    pruned_model = netslim.prune(model, input_shape)  # by default, network slimming, ratio 0.3
    ours = slimbench.prune(model, input_shape, ratio=0.3, residual="select", remove_branches=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # caller's model untouched
    assert pruned_model.features[0].out_channels < 16 or pruned_model.features[4].out_channels < 32
    assert pruned_model.state_dict().keys() == ours.state_dict().keys()
    assert all(torch.equal(v, ours.state_dict()[k]) for k, v in pruned_model.state_dict().items())

    # step 5: save the pruned weights, load them into a fresh unpruned instance
    torch.save(pruned_model.state_dict(), tmp_path / "pruned-weights.pth")
    weights = torch.load(tmp_path / "pruned-weights.pth")
    loaded = netslim.load_pruned_model(Net(), weights)
    x = torch.randn(2, 3, 32, 32)
    expected = ours.eval()(x)
    assert torch.allclose(loaded.eval()(x), expected, atol=1e-6)
    assert torch.allclose(slimbench.load_pruned_model(Net(), weights, example_inputs=input_shape).eval()(x),
                          expected, atol=1e-6)

    other = netslim.prune(model, input_shape, prune_method=netslim.uniform_scaling, prune_ratio=0.4)
    same = slimbench.prune(model, input_shape, method="uniform", ratio=0.4, residual="select", remove_branches=False)
    assert all(torch.equal(v, same.state_dict()[k]) for k, v in other.state_dict().items())


def test_channel_selection_round_trips_on_a_resnet():
    torch.manual_seed(0)
    model = get_model("resnet164", num_classes=10)
    for bn in model.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.weight.data.uniform_(0.0, 1.0)
    pruned = netslim.prune(model, (3, 32, 32), prune_ratio=0.3)
    assert any(isinstance(m, slimbench.MaskedBatchNorm) for m in pruned.modules())
    loaded = netslim.load_pruned_model(get_model("resnet164", num_classes=10), pruned.state_dict(), inplace=False)
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(loaded.eval()(x), pruned.eval()(x), atol=1e-5)


def test_update_bn_covers_norms_like_netslim_and_by_names_takes_a_dict():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1), nn.GroupNorm(2, 4),
                          nn.Conv2d(4, 4, 1), nn.InstanceNorm2d(4, affine=True))
    model[1].weight.data = torch.tensor([1.0, -1.0, 0.5, -0.5])
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    grads = {i: model[i].weight.grad.clone() for i in (1, 3, 5)}
    netslim.update_bn(model, s=0.5)
    for i in (1, 3, 5):
        assert torch.allclose(model[i].weight.grad - grads[i], 0.5 * torch.sign(model[i].weight))
    netslim.update_bn_by_names(model, {"1": 1e-3, "3": 2e-3})
    assert torch.allclose(model[3].weight.grad - grads[3], 0.5 * torch.sign(model[3].weight) + 2e-3 *
                          torch.sign(model[3].weight))
    # the main API reads netslim's dict form too: one s per BN, not a list of names with the default s
    net = Net()
    net(torch.randn(2, 3, 32, 32)).sum().backward()
    start = {n: net.get_submodule(n).weight.grad.clone() for n in ("features.1", "features.5")}
    assert slimbench.update_bn_by_names(net, {"features.1": 1e-5, "features.5": 1e-3}) == 2
    for name, s in (("features.1", 1e-5), ("features.5", 1e-3)):
        bn = net.get_submodule(name)
        assert torch.allclose(bn.weight.grad - start[name], s * torch.sign(bn.weight))
    with pytest.raises(TypeError, match="not both"):
        slimbench.update_bn_by_names(net, {"features.1": 1e-5}, s=1e-4)


def test_unknown_keywords_name_the_one_meant():
    model = Net()
    with pytest.raises(TypeError, match=r"unknown plan option 'prune_ratio' .*; did you mean ratio\?"):
        slimbench.prune(model, (3, 32, 32), prune_ratio=0.3)
    with pytest.raises(TypeError, match=r"'rato' .*; did you mean ratio\?"):
        slimbench.plan(model, (3, 32, 32), rato=0.3)
    with pytest.raises(TypeError, match="pass it as prune"):
        netslim.network_slimming(model.state_dict(), 0.3, {}, {})


def test_netslim_graph_queries():
    prunable, maskable, names = netslim.get_norm_layer_names(Net(), (3, 32, 32))
    assert names == ["features.1", "features.5", "features.9"] and prunable == names and maskable == []
    prec, succ, _ = netslim.get_pruning_layers(Net(), (3, 32, 32))
    assert prec["features.5"] == ["features.4"] and succ["features.5"] == ["features.8"]
    assert succ["features.9"] == ["classifier"]
    prunable, maskable, _ = netslim.get_norm_layer_names(get_model("resnet164"), (3, 32, 32))
    assert maskable and prunable and not set(maskable) & set(prunable)


def test_thop_style_unpacking_and_keyword():
    model = torchvision.models.resnet18()
    x = torch.randn(1, 3, 64, 64)
    macs, params = thop_ext.profile(model, inputs=(x,))
    result = thop_ext.profile(model, (3, 64, 64))
    assert (macs, params) == (result.macs, result.params) and params == sum(p.numel() for p in model.parameters())


def test_load_pruned_model_accepts_the_wrappers_get_model_accepts(tmp_path):
    model = get_model("resnet20")
    plan = slimbench.plan(model, (3, 32, 32), ratio=0.3)
    pruned = slimbench.prune(model, plan=plan)
    x = torch.randn(2, 3, 32, 32)
    expected = pruned.eval()(x)
    state = pruned.state_dict()
    for wrapped in ({"model": state}, {"state_dict": {f"module.{k}": v for k, v in state.items()}},
                    {f"module.{k}": v for k, v in state.items()}):
        torch.save(wrapped, tmp_path / "w.pt")
        loaded = slimbench.load_pruned_model(get_model("resnet20"), tmp_path / "w.pt", example_inputs=(3, 32, 32))
        assert torch.allclose(loaded.eval()(x), expected, atol=1e-6)
