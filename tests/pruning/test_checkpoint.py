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
