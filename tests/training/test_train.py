"""Training loop: sparsity, schedule, evaluation, checkpoints and resume, bad input, CLIs."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import slimbench
from slimbench.data import digits_loaders
from slimbench.models import get_model
from slimbench.training.loop import evaluate, finetune, train

FAST = dict(progress=False, steps_per_epoch=3)


@pytest.fixture(scope="module")
def digits16():
    return digits_loaders(input_size=16, batch_size=32, seed=0)


def _gammas(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}


def test_sparsity_shrinks_gamma_and_prunable_only_spares_the_rest(digits16):
    train_loader, _ = digits16
    torch.manual_seed(0)
    base = get_model("resnet20", "digits")
    plain, sparse, prunable = copy.deepcopy(base), copy.deepcopy(base), copy.deepcopy(base)
    # one step: after it the forward passes differ, and with them every later gradient
    one_step = dict(progress=False, steps_per_epoch=1)
    train(plain, train_loader, epochs=1, **one_step)
    train(sparse, train_loader, epochs=1, sparsity=0.05, **one_step)
    train(prunable, train_loader, epochs=1, sparsity=0.05, sparsity_on="prunable", **one_step)
    g_plain, g_sparse, g_prunable = _gammas(plain), _gammas(sparse), _gammas(prunable)
    l1 = lambda g: sum(v.abs().sum().item() for v in g.values())  # noqa: E731
    n_gamma = sum(v.numel() for v in g_plain.values())
    # one SGD step moves each gamma by lr * s = 5e-3 towards 0 on top of the plain step
    assert l1(g_sparse) == pytest.approx(l1(g_plain) - 0.1 * 0.05 * n_gamma, rel=1e-3)
    names = set(slimbench.prunable_bn_names(base, (3, 16, 16)))
    assert names and names != set(g_plain)
    for name in g_plain:
        same = torch.equal(g_prunable[name], g_plain[name])
        assert same == (name not in names), name


def test_milestones_follow_the_network_slimming_schedule(digits16):
    train_loader, test_loader = digits16
    model = get_model("resnet20", "digits")
    history = train(model, train_loader, epochs=4, lr=0.1, progress=False, steps_per_epoch=1,
                    test_loader=test_loader)
    assert [round(r["lr"], 6) for r in history["epochs"]] == [0.1, 0.1, 0.01, 0.001]
    assert all(0 <= r["test_top1"] <= 1 for r in history["epochs"])


def test_evaluate_topk_on_known_logits():
    logits = torch.tensor([[0.0, 3.0, 2.0, 1.0],   # label 1: top1 hit
                           [5.0, 4.0, 3.0, 0.0],   # label 2: top3 hit only
                           [0.0, 0.5, 1.0, 2.0]])  # label 0: miss in top3
    loader = DataLoader(TensorDataset(logits, torch.tensor([1, 2, 0])), batch_size=2)
    model = nn.Sequential(nn.Identity()).train()
    result = evaluate(model, loader, topk=(1, 3))
    assert result["top1"] == pytest.approx(1 / 3) and result["top3"] == pytest.approx(2 / 3)
    expected_loss = nn.functional.cross_entropy(logits, torch.tensor([1, 2, 0])).item()
    assert result["loss"] == pytest.approx(expected_loss) and model.training


def test_resume_reproduces_an_uninterrupted_run(digits16, tmp_path):
    train_loader, _ = digits16
    torch.manual_seed(0)
    base = get_model("resnet20", "digits")
    straight, interrupted = copy.deepcopy(base), copy.deepcopy(base)
    train(straight, train_loader, epochs=2, **FAST)
    ckpt = tmp_path / "run.pt"
    train(interrupted, train_loader, epochs=1, milestones=(1.0,), checkpoint=ckpt, **FAST)
    resumed = copy.deepcopy(base)  # fresh weights: everything must come from the checkpoint
    history = train(resumed, train_loader, epochs=2, checkpoint=ckpt, resume=True, **FAST)
    assert [r["epoch"] for r in history["epochs"]] == [1, 2]
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert torch.load(ckpt, weights_only=True)["epoch"] == 2


def test_existing_corrupt_or_mismatched_checkpoints_are_left_alone(digits16, tmp_path):
    train_loader, _ = digits16
    ckpt = tmp_path / "run.pt"
    train(get_model("resnet20", "digits", num_classes=12), train_loader, epochs=1, checkpoint=ckpt, **FAST)
    original = ckpt.read_bytes()
    model = get_model("resnet20", "digits")
    with pytest.raises(FileExistsError, match="resume=True"):
        train(model, train_loader, epochs=1, checkpoint=ckpt, **FAST)
    with pytest.raises(ValueError, match=r"'fc.weight' has shape \(12, 64\).*\(10, 64\).*num_classes"):
        train(model, train_loader, epochs=2, checkpoint=ckpt, resume=True, **FAST)
    assert ckpt.read_bytes() == original
    ckpt.write_bytes(original[: len(original) // 2])
    truncated = ckpt.read_bytes()
    with pytest.raises(ValueError, match="truncated or corrupt"):
        train(model, train_loader, epochs=2, checkpoint=ckpt, resume=True, **FAST)
    assert ckpt.read_bytes() == truncated
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.pt"]  # no temp files left behind


def test_bad_arguments_are_explained(digits16):
    train_loader, _ = digits16
    model = get_model("resnet20", "digits")
    with pytest.raises(ValueError, match="epochs"):
        train(model, train_loader, epochs=0)
    with pytest.raises(ValueError, match="sparsity_on"):
        train(model, train_loader, epochs=1, sparsity_on="some")
    with pytest.raises(ValueError, match="checkpoint=PATH"):
        train(model, train_loader, epochs=1, resume=True)
    with pytest.raises(ValueError, match="milestones"):
        train(model, train_loader, epochs=1, milestones=(2,))
    with pytest.raises(ValueError, match="no sparsity"):
        finetune(model, train_loader, epochs=1, sparsity=1e-4)


def test_finetune_pruned_model_and_save_loadable_checkpoint(digits16, tmp_path):
    train_loader, test_loader = digits16
    model = get_model("resnet20", "digits")
    with pytest.warns(UserWarning, match="same value"):  # untrained: every gamma is 1, ranking arbitrary
        plan = slimbench.plan(model, (3, 16, 16), ratio=0.5)
    pruned = slimbench.prune(model, plan=plan)
    before = {k: v.clone() for k, v in pruned.state_dict().items()}
    extra = {"format": "slimbench.pruned/1", "plan": plan.to_json(), "input_shapes": plan.input_shapes}
    ckpt = tmp_path / "ft.pt"
    finetune(pruned, train_loader, epochs=1, checkpoint=ckpt, checkpoint_extra=extra, **FAST)
    assert any(not torch.equal(before[k], v) for k, v in pruned.state_dict().items())
    reloaded = slimbench.load_pruned_model(get_model("resnet20", "digits"), ckpt).eval()
    assert evaluate(reloaded, test_loader) == evaluate(pruned, test_loader)


def test_resume_without_a_checkpoint_is_an_error_and_the_seed_is_recorded(digits16, tmp_path):
    train_loader, _ = digits16
    model = get_model("resnet20", "digits")
    with pytest.raises(FileNotFoundError, match="no checkpoint at .*absent.pt"):
        train(model, train_loader, epochs=1, checkpoint=tmp_path / "absent.pt", resume=True, **FAST)
    assert not (tmp_path / "absent.pt").exists()
    train(model, train_loader, epochs=1, checkpoint=tmp_path / "run.pt", seed=7, **FAST)
    assert torch.load(tmp_path / "run.pt", weights_only=True)["seed"] == 7


def test_recalibrate_bn_sets_running_stats_to_the_data_average_and_restores_modes():
    """Stale running statistics (a momentum average) are replaced by the plain average of the batches'
    statistics; weights, momentum and the model's mode stay as they were; max_batches caps the pass."""
    from slimbench.training.loop import recalibrate_bn

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1, bias=False), torch.nn.BatchNorm2d(4)).eval()
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    x = torch.randn(64, 3, 4, 4) * 3 + 2
    loader = DataLoader(TensorDataset(x, torch.zeros(64)), batch_size=16)
    assert recalibrate_bn(model, loader) == 4
    bn, y = model[1], model[0](x).detach()
    batches = y.split(16)
    assert torch.allclose(bn.running_mean, torch.stack([b.mean((0, 2, 3)) for b in batches]).mean(0), atol=1e-5)
    unbiased = torch.stack([b.transpose(0, 1).flatten(1).var(1) for b in batches]).mean(0)
    assert torch.allclose(bn.running_var, unbiased, rtol=1e-4)
    assert not model.training and bn.momentum == 0.1
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())
    assert recalibrate_bn(model, loader, max_batches=1) == 1
    assert torch.allclose(bn.running_mean, batches[0].mean((0, 2, 3)), atol=1e-5)
