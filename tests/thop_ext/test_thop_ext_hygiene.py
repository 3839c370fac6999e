"""thop_ext leaves the model as it was; thop's import path works; ``slimbench profile`` prints counts."""

from __future__ import annotations

import ast
import copy
import sys
from pathlib import Path

import pytest
import thop
import torch
import torchvision
from torch import nn
from torch.utils._python_dispatch import _get_current_dispatch_mode

import slimbench
import thop_ext
from slimbench.cli import main
from slimbench.models import get_model
from slimbench.models.preresnet import PreResNet

ROOT = Path(__file__).resolve().parents[2]


def _snapshot(model: nn.Module) -> dict:
    return {
        "keys": list(model.state_dict().keys()),
        "values": {k: v.clone() for k, v in model.state_dict().items()},
        "modes": [m.training for m in model.modules()],
        "buffers": [list(m._buffers) for m in model.modules()],
        "hooks": [(dict(m._forward_hooks), dict(m._forward_pre_hooks)) for m in model.modules()],
        "tensors": [id(t) for t in (*model.parameters(), *model.buffers())],
    }


def _assert_same(before: dict, after: dict) -> None:
    assert after["keys"] == before["keys"]
    assert all(torch.equal(before["values"][k], v) for k, v in after["values"].items())
    assert after["modes"] == before["modes"]
    assert after["buffers"] == before["buffers"]
    assert after["hooks"] == before["hooks"]
    assert after["tensors"] == before["tensors"]  # the meta pass swaps tensors only for its duration


def _mixed_mode_resnet() -> nn.Module:
    model = torchvision.models.resnet18(weights=None, num_classes=10).train()
    model.bn1.eval()  # a frozen BN inside a training model: thop's model.train(prev) would flip it
    model.layer1.register_forward_hook(lambda *args: None)
    model.fc.register_forward_pre_hook(lambda *args: None)
    return model


@pytest.mark.parametrize("on_meta", [False, True], ids=["real-pass", "meta-pass"])
def test_profile_leaves_model_exactly_as_it_was(on_meta):
    model = _mixed_mode_resnet()
    before = _snapshot(model)
    result = thop_ext.profile(model, (3, 32, 32), forward_on_meta=on_meta)
    assert result.macs > 0
    _assert_same(before, _snapshot(model))
    assert not any("total_ops" in k or "total_params" in k for k in model.state_dict())
    fresh = torchvision.models.resnet18(weights=None, num_classes=10)
    fresh.load_state_dict(model.state_dict(), strict=True)
    model.load_state_dict(fresh.state_dict(), strict=True)
    assert _get_current_dispatch_mode() is None


def test_plain_thop_leaves_buffers_that_break_strict_loading():
    """The bug thop_ext guards against, shown on plain thop (run on a copy)."""
    model = copy.deepcopy(_mixed_mode_resnet())
    thop.profile(model, inputs=(torch.randn(1, 3, 32, 32),), verbose=False)
    assert any(k.endswith("total_ops") for k in model.state_dict())
    assert model.bn1.training  # the frozen BN came back in training mode
    with pytest.raises(RuntimeError, match="Unexpected key"):
        torchvision.models.resnet18(weights=None, num_classes=10).load_state_dict(model.state_dict())


@pytest.mark.parametrize("on_meta", [False, True], ids=["real-pass", "meta-pass"])
def test_pruned_model_with_masked_bn_left_as_it_was(on_meta):
    model = PreResNet(depth=11).eval()  # pre-activation: residual="select" inserts MaskedBatchNorm
    plan = slimbench.plan(model, (3, 32, 32), ratio=0.4, residual="select")
    pruned = slimbench.prune(model, (3, 32, 32), plan=plan)
    assert any(isinstance(m, (slimbench.MaskedBatchNorm, slimbench.ChannelSelection)) for m in pruned.modules())
    before = _snapshot(pruned)
    thop_ext.profile(pruned, (3, 32, 32), forward_on_meta=on_meta)
    _assert_same(before, _snapshot(pruned))


class Broken(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.relu = nn.ReLU()

    def forward(self, x):
        self.relu(self.conv(x))
        raise RuntimeError("boom in forward")


@pytest.mark.parametrize("on_meta", [None, False, True])
def test_model_restored_when_forward_raises(on_meta):
    model = Broken().train()
    before = _snapshot(model)
    with pytest.raises(RuntimeError, match="boom in forward"):
        thop_ext.profile(model, (3, 4, 4), forward_on_meta=on_meta)
    _assert_same(before, _snapshot(model))
    assert _get_current_dispatch_mode() is None


# -- Python >= 3.12: thop 0.1.1 runs `from distutils.version import LooseVersion` at import --------------

def test_thop_import_path_we_rely_on():
    from distutils.version import LooseVersion

    import thop.vision.basic_hooks as basic_hooks

    assert callable(thop.profile) and callable(basic_hooks.count_convNd)
    assert LooseVersion("2.14.1") > LooseVersion("1.1.0")
    if sys.version_info >= (3, 12):  # the stdlib no longer has distutils: setuptools must provide it
        import distutils

        assert "setuptools" in distutils.__file__


def test_setuptools_marker_declared_and_thop_ext_needs_no_distutils():
    # tomllib is 3.11+ and the project supports 3.10: read the dependency line as text
    lines = [line.replace(" ", "").replace('"', "'") for line in (ROOT / "pyproject.toml").read_text().splitlines()]
    assert any(line.startswith("'setuptools") and ";python_version>='3.12'" in line for line in lines), \
        "pyproject dependencies need setuptools for python>=3.12 (thop imports distutils)"
    for path in (ROOT / "thop_ext").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] == "distutils" for n in names), f"{path.name} imports distutils"


# -- slimbench profile MODEL -----------------------------------------------------------------------------

def test_cli_profile_registry_model(capsys):
    assert main(["profile", "resnet20"]) == 0
    out = capsys.readouterr().out
    assert "conv1" in out and "layer3.2.conv2" in out and "total" in out
    assert "MACs 40.55M" in out and "params 269.72K" in out
    assert "MACs 40,551,040" in out


def test_cli_profile_torchvision_exact_and_no_skip_zero(capsys):
    assert main(["profile", "mobilenet_v2", "--input-size", "3", "32", "32", "--exact", "--no-skip-zero"]) == 0
    out = capsys.readouterr().out
    model = torchvision.models.mobilenet_v2(weights=None)
    expected = thop_ext.profile(model, (3, 32, 32), skip_zero=False)
    assert f"params {expected.params:,}" in out and f"MACs {expected.macs:,}" in out
    assert "features.18.0" in out and "all weights" in out


def test_cli_profile_pruned_checkpoint(tmp_path, capsys):
    model = get_model("vgg11").eval()
    plan = slimbench.plan(model, (3, 32, 32), ratio=0.5)
    pruned = slimbench.prune(model, (3, 32, 32), plan=plan)
    path = slimbench.save_pruned_model(pruned, tmp_path / "vgg11.pt", plan=plan)
    assert main(["profile", "vgg11", "--checkpoint", str(path), "--exact"]) == 0
    expected = thop_ext.profile(pruned, (3, 32, 32))
    assert f"MACs {expected.macs:,}  FLOPs {expected.flops:,}  params {expected.params:,}" in capsys.readouterr().out


def test_cli_profile_bad_arguments(capsys):
    assert main(["profile", "resnet9000"]) == 2
    assert "slimbench profile: error: unknown model 'resnet9000'" in capsys.readouterr().err
    assert main(["profile", "resnet20", "--input-size", "3", "0", "32"]) == 2
    assert "--input-size must be positive" in capsys.readouterr().err
