"""ONNX export: pruned models (plain, branch-removed fx.GraphModule, channel selection) run in
onnxruntime and match torch; files appear atomically; the caller's model is left alone."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torchvision
from torch import fx, nn

import slimbench
from slimbench.bench.export import export_onnx, onnx_max_abs_diff, onnx_session, session_feed
from tests.helpers import randomize_bn


def _pruned_resnet18(**plan_options):
    model = randomize_bn(torchvision.models.resnet18(num_classes=10))
    x = torch.randn(1, 3, 32, 32)
    return model, x, slimbench.prune(model, x, **plan_options)


def test_pruned_model_runs_in_onnxruntime_and_matches_torch(tmp_path):
    model, x, pruned = _pruned_resnet18(ratio=0.5, residual="shared")
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    path = export_onnx(pruned, x, tmp_path / "pruned.onnx")
    assert path.exists()
    assert onnx_max_abs_diff(pruned, path, x) < 1e-4


def test_branch_removed_graph_module_exports_and_matches(tmp_path):
    model = randomize_bn(torchvision.models.resnet18(num_classes=10))
    with torch.no_grad():
        model.layer2[1].bn2.weight.mul_(1e-3)
    x = torch.randn(1, 3, 32, 32)
    plan = slimbench.plan(model, x, ratio=0.4, branches="remove")
    pruned = slimbench.prune(model, x, plan=plan)
    assert isinstance(pruned, fx.GraphModule)
    path = export_onnx(pruned, x, tmp_path / "removed.onnx")
    assert onnx_max_abs_diff(pruned, path, x) < 1e-4


def test_channel_selection_model_exports_and_matches(tmp_path):
    model = randomize_bn(torchvision.models.densenet121(num_classes=10))
    x = torch.randn(1, 3, 32, 32)
    pruned = slimbench.prune(model, x, ratio=0.4, residual="select")
    assert any(isinstance(m, slimbench.MaskedBatchNorm) for m in pruned.modules())
    path = export_onnx(pruned, x, tmp_path / "select.onnx")
    assert onnx_max_abs_diff(pruned, path, x) < 1e-4


def test_dynamic_batch_and_callers_model_untouched(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(1, 3, 6, 6))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    path = export_onnx(model, (3, 6, 6), tmp_path / "m.onnx", dynamic_batch=True)
    assert model.training, "export must not switch the caller's model to eval"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    batch = torch.randn(3, 3, 6, 6)
    session = onnx_session(path)
    got = session.run(None, session_feed(session, batch))[0]
    with torch.no_grad():
        expected = model.eval()(batch).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


class _Explodes(nn.Module):
    def forward(self, x):
        raise RuntimeError("boom in forward")


def test_failed_export_leaves_no_file(tmp_path):
    target = tmp_path / "bad.onnx"
    with pytest.raises(RuntimeError, match="boom"):
        export_onnx(_Explodes(), (3, 4, 4), target)
    assert os.listdir(tmp_path) == []


def test_bad_arguments_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist; create it"):
        export_onnx(nn.Identity(), (3, 4, 4), tmp_path / "missing" / "m.onnx")
    with pytest.raises(TypeError, match="nn.Module"):
        export_onnx(lambda x: x, (3, 4, 4), tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="threads"):
        onnx_session(tmp_path / "m.onnx", threads=0)
