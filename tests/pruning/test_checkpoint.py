"""Saving and loading pruned models: exact round trips, no pickled code, clear errors."""

import os
import pickle

import pytest
import torch
import torchvision
from torch import fx

import slimbench

from helpers import randomize_bn
from nets import PostActResidual, PreActResidual


def pruned_resnet():
    model = randomize_bn(torchvision.models.resnet18(num_classes=10))
    plan = slimbench.plan(model, (3, 32, 32), ratio=0.5)
    return model, plan, slimbench.prune(model, plan=plan).eval()


def test_round_trip_with_plan_is_bit_identical(tmp_path):
    model, plan, pruned = pruned_resnet()
    path = slimbench.save_pruned_model(pruned, tmp_path / "m.pt", plan=plan)
    assert sorted(os.listdir(tmp_path)) == ["m.pt"]  # no temporary left behind
    loaded = slimbench.load_pruned_model(lambda: torchvision.models.resnet18(num_classes=10), path).eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(x), pruned(x))


def test_bare_state_dict_is_rebuilt_from_shapes(tmp_path):
    model, plan, pruned = pruned_resnet()
    torch.save(pruned.state_dict(), tmp_path / "sd.pt")
    loaded = slimbench.load_pruned_model(torchvision.models.resnet18(num_classes=10), tmp_path / "sd.pt",
                                         example_inputs=(3, 32, 32)).eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(x), pruned(x))
    with pytest.raises(ValueError, match="pass example_inputs"):
        slimbench.load_pruned_model(torchvision.models.resnet18(num_classes=10), tmp_path / "sd.pt")


def test_selection_and_branch_removal_round_trip(tmp_path):
    model = randomize_bn(PreActResidual()).double()
    plan = slimbench.plan(model, (3, 8, 8), ratio=0.5, residual="select")
    pruned = slimbench.prune(model, plan=plan)
    slimbench.save_pruned_model(pruned, tmp_path / "sel.pt", plan=plan)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    loaded = slimbench.load_pruned_model(PreActResidual().double(), tmp_path / "sel.pt")
    assert torch.equal(loaded.eval()(x), pruned.eval()(x))
    # state dict only: MaskedBatchNorm index buffers say which channels were selected
    again = slimbench.load_pruned_model(PreActResidual().double(), pruned.state_dict(), example_inputs=(3, 8, 8))
    assert torch.equal(again.eval()(x), pruned(x))

    res = randomize_bn(PostActResidual(), seed=1)
    with torch.no_grad():
        res.block1[2].weight.mul_(1e-3)
    plan = slimbench.plan(res, (3, 8, 8), ratio=0.3, branches="remove")
    gm = slimbench.prune(res, plan=plan)
    assert isinstance(gm, fx.GraphModule)
    slimbench.save_pruned_model(gm, tmp_path / "br.pt", plan=plan)
    back = slimbench.load_pruned_model(PostActResidual(), tmp_path / "br.pt")
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(back.eval()(x), gm.eval()(x))


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/slimbench-pwned",))


def test_checkpoint_that_runs_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": Exploit()}, f)
    with pytest.raises(ValueError, match="refusing to load"):
        slimbench.load_pruned_model(PostActResidual(), path, example_inputs=(3, 8, 8))
    assert not os.path.exists("/tmp/slimbench-pwned")


def test_truncated_checkpoint(tmp_path):
    model, plan, pruned = pruned_resnet()
    path = slimbench.save_pruned_model(pruned, tmp_path / "m.pt", plan=plan)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        slimbench.load_pruned_model(torchvision.models.resnet18(num_classes=10), path)


def test_mismatched_checkpoint_names_the_first_key(tmp_path):
    model, plan, pruned = pruned_resnet()
    state = pruned.state_dict()
    state["layer1.0.conv1.weight"] = state["layer1.0.conv1.weight"][:-1]
    with pytest.raises(ValueError, match=r"layer1\.0\.conv1\.weight' has shape"):
        slimbench.load_pruned_model(torchvision.models.resnet18(num_classes=10),
                                    {"format": "slimbench.pruned/1", "state_dict": state, "plan": plan.to_json()})
    del state["layer1.0.conv1.weight"]
    with pytest.raises(ValueError, match=r"missing 'layer1\.0\.conv1\.weight'"):
        slimbench.load_pruned_model(torchvision.models.resnet18(num_classes=10),
                                    {"format": "slimbench.pruned/1", "state_dict": state, "plan": plan.to_json()})


def test_failed_save_leaves_existing_file(tmp_path):
    model, plan, pruned = pruned_resnet()
    path = slimbench.save_pruned_model(pruned, tmp_path / "m.pt", plan=plan)
    before = path.read_bytes()
    with pytest.raises(AttributeError, match="to_json"):
        slimbench.save_pruned_model(pruned, path, plan=object())  # fails before anything is written
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["m.pt"]


# -- round trips: several passes, bare state dicts of every structure, torch.compile -------------

from slimbench.models import get_model  # noqa: E402

X32 = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def outputs_match(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor = X32) -> bool:
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


@pytest.mark.parametrize("name, options", [("vgg11", {}), ("resnet20", {"residual": "shared"}),
                                           ("resnet164", {"residual": "select"}),
                                           ("densenet40", {"residual": "select"})])
def test_prune_finetune_prune_save_load(tmp_path, name, options):
    torch.manual_seed(0)
    model = randomize_bn(get_model(name), seed=1)
    first = slimbench.prune(model, X32, ratio=0.4, **options)
    randomize_bn(first, seed=5)  # stands in for fine-tuning: new weights, same structure
    second = slimbench.prune(first, X32, ratio=0.3, **options)
    composed = second.slimbench_plan
    assert composed.options["passes"] == 2
    assert all(len(m) == model.get_submodule(n).num_features for n, m in composed.masks.items())
    assert composed.pruned_channels > first.slimbench_plan.pruned_channels
    path = slimbench.save_pruned_model(second, tmp_path / "m.pt")
    loaded = slimbench.load_pruned_model(lambda: get_model(name), path)
    assert outputs_match(loaded, second)
    third = slimbench.prune(loaded, X32, ratio=0.2, **options)  # a loaded model carries its plan on
    assert third.slimbench_plan.options["passes"] == 3


def test_saving_a_repaired_model_writes_the_plan_it_was_built_from(tmp_path):
    from user_nets import RolledChannels, roll_taken_for_pointwise

    model = randomize_bn(RolledChannels(), seed=1)
    x = torch.randn(2, 3, 8, 8)
    with roll_taken_for_pointwise():  # a wrong user handler: verification repairs the plan
        plan = slimbench.plan(model, x, ratio=0.5)
        with pytest.warns(UserWarning, match="verified"):
            pruned = slimbench.prune(model, x, plan=plan)
    with pytest.warns(UserWarning, match="differs from the plan the model was built from"):
        path = slimbench.save_pruned_model(pruned, tmp_path / "m.pt", plan=plan)
    loaded = slimbench.load_pruned_model(RolledChannels, path)
    assert outputs_match(loaded, pruned, x)


def kill_branches(model: torch.nn.Module, n: int = 2) -> torch.nn.Module:
    graph = slimbench.analyze(model, X32).graph()
    with torch.no_grad():
        for branch in graph.branches[:n]:
            model.get_submodule(branch.bn).weight.mul_(1e-3)
    return model


@pytest.mark.parametrize("name, options", [
    ("densenet40", {}), ("densenet40", {"residual": "select"}),
    ("resnet20", {"branches": "remove"}), ("resnet56", {"branches": "remove", "residual": "shared"}),
])
def test_bare_state_dict_of_every_structure_loads(name, options):
    torch.manual_seed(0)
    model = randomize_bn(get_model(name), seed=1)
    if "branches" in options:
        kill_branches(model)
    pruned = slimbench.prune(model, X32, ratio=0.5, **options)
    if "branches" in options:
        assert pruned.slimbench_plan.branches  # the case under test: blocks really removed
    loaded = slimbench.load_pruned_model(lambda: get_model(name), pruned.state_dict(), example_inputs=(3, 32, 32))
    assert outputs_match(loaded, pruned)


class ViewHeadPreAct(PreActResidual):
    """The classifier reads the last BN through ``x.view(x.size(0), -1)``, not torch.flatten."""

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = x + block(x)
        x = torch.nn.functional.adaptive_avg_pool2d(torch.relu(self.bn(x)), 1)
        return self.fc(x.view(x.size(0), -1))


def test_select_reaches_a_bn_read_through_view_of_size():
    model = randomize_bn(ViewHeadPreAct(), seed=2)
    x = torch.randn(2, 3, 8, 8)
    rows = {r["bn"]: r["status"] for r in slimbench.explain(model, x, residual="select")}
    assert rows["bn"] == "prunable (channel selection)"
    pruned = slimbench.prune(model, x, ratio=0.5, residual="select")
    assert pruned.slimbench_plan.options["verification"]["frozen"] == []
    assert not bool(pruned.slimbench_plan.masks["bn"].all())


def test_torch_compiled_model_saves_and_loads(tmp_path):
    model = randomize_bn(PreActResidual(), seed=3)
    x = torch.randn(2, 3, 8, 8)
    pruned = slimbench.prune(torch.compile(model), x, ratio=0.5, residual="select")
    path = slimbench.save_pruned_model(torch.compile(pruned), tmp_path / "m.pt")
    assert not any(k.startswith("_orig_mod") for k in torch.load(path, weights_only=True)["state_dict"])
    loaded = slimbench.load_pruned_model(torch.compile(PreActResidual()), path)
    assert outputs_match(loaded, pruned, x)
