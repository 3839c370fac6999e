"""The core's commands: ``slimbench explain`` and ``slimbench prune``."""

import re

import pytest
import torch
import torchvision

import slimbench
from slimbench.cli import main


def test_explain_prints_a_row_per_bn(capsys):
    assert main(["explain", "resnet18", "--input-size", "3", "32", "32"]) == 0
    out = capsys.readouterr().out
    assert "layer1.0.bn1" in out and "prunable (shared)" in out  # the default residual mode
    assert main(["explain", "resnet18", "--input-size", "3", "32", "32", "--residual", "keep"]) == 0
    out = capsys.readouterr().out
    assert "coupled (residual)" in out and "prunable" in out


def test_prune_writes_a_loadable_model(tmp_path, capsys):
    out_path, plan_path = tmp_path / "r18.pt", tmp_path / "plan.json"
    assert main(["prune", "resnet18", "--input-size", "3", "32", "32", "--ratio", "0.4", "--round-to", "4",
                 "-o", str(out_path), "--plan-json", str(plan_path)]) == 0
    text = capsys.readouterr().out
    assert "fewer" in text and "saved to" in text
    plan = slimbench.PruningPlan.from_json(plan_path.read_text())
    loaded = slimbench.load_pruned_model(lambda: torchvision.models.resnet18(weights=None), out_path)
    assert loaded.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 1000)
    assert all(int(m.sum()) % 4 == 0 for m in plan.masks.values())


def test_unknown_command_and_model(capsys):
    with pytest.raises(SystemExit):
        main(["frobnicate"])
    assert main(["explain", "nope"]) == 2
    assert "slimbench explain: error: unknown model 'nope'" in capsys.readouterr().err


def test_cli_input_size_single_side_and_checkpoint(tmp_path, capsys):
    from slimbench.models import get_model

    path = tmp_path / "r20.pt"
    torch.save({"state_dict": get_model("resnet20").state_dict()}, path)
    assert main(["prune", "resnet20", "--input-size", "16", "--checkpoint", str(path), "--ratio", "0.3"]) == 0
    assert "MACs" in capsys.readouterr().out

    torch.save({"state_dict": get_model("resnet20", num_classes=7).state_dict()}, path)
    capsys.readouterr()
    for argv, message in [(["prune", "resnet20", "--checkpoint", str(path)],
                           r"slimbench prune: error: cannot load --checkpoint .*r20\.pt into resnet20.*num_classes"),
                          (["explain", "resnet2000"], "slimbench explain: error: unknown model 'resnet2000'"),
                          (["explain", "resnet20", "--input-size", "0"], "--input-size must be positive")]:
        assert main(argv) == 2
        assert re.search(message, capsys.readouterr().err)
