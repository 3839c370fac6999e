"""Model zoo: reference counts, fx-traceability, pruning equivalence, registry errors, checkpoints."""

from __future__ import annotations

import pytest
import torch

import slimbench
from slimbench.bench.variants import variants_for
from slimbench.core.modules import MaskedBatchNorm
from slimbench.models import RESIDUAL_STYLES, PaperResult, get_model, list_models, model_info
from slimbench.models.resnet_cifar import DEFAULT_SHORTCUT, PadShortcut
from slimbench.models.resolve import resolve_info
from slimbench.models.vgg import VGG_CONFIGS

from helpers import assert_equivalent, conv_linear_macs, randomize_bn

CIFAR_NAMES = ["vgg11", "vgg13", "vgg16", "vgg19", "resnet20", "resnet32", "resnet44", "resnet56",
               "resnet110", "resnet164", "densenet40"]
X32 = torch.randn(1, 3, 32, 32)


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# (name, dataset, kwargs, MACs, params) from ../shared/REFERENCE.md, exact
EXACT = [
    ("resnet20", "cifar10", {}, 40_551_040, 269_722),
    ("resnet20", "cifar10", {"shortcut": "B"}, 40_813_184, 272_474),
    ("resnet56", "cifar10", {}, 125_485_696, 853_018),
    ("resnet56", "cifar10", {"shortcut": "B"}, 125_747_840, 855_770),
    ("resnet110", "cifar10", {}, 252_887_680, 1_727_962),
    ("vgg19", "cifar10", {}, 398_136_320, 20_035_018),
    ("vgg19", "cifar100", {}, 398_182_400, 20_081_188),
]


@pytest.mark.parametrize("name,dataset,kwargs,macs,params", EXACT)
def test_reference_counts_exact(name, dataset, kwargs, macs, params):
    model = get_model(name, dataset, **kwargs)
    assert _params(model) == params
    # the table rounds MACs to 10 k; the counts above are the exact values behind it
    assert round(conv_linear_macs(model, X32) / 1e4) == round(macs / 1e4)


def _depth_line(a: tuple[int, int], b: tuple[int, int], depth: int) -> int:
    """Counts of 6n+2 CIFAR ResNets grow by the same amount per n (one block in each of the three
    stages, six layers): interpolate between two depths."""
    (d0, v0), (d1, v1) = a, b
    per_n = (v1 - v0) // ((d1 - d0) // 6)
    assert per_n * ((d1 - d0) // 6) == v1 - v0
    return v0 + per_n * ((depth - d0) // 6)


@pytest.mark.parametrize("depth,params_m", [(32, 0.46), (44, 0.66)])
def test_resnet32_44_lie_on_the_reference_depth_line(depth, params_m):
    # REFERENCE.md has no row for these depths; ResNet-20/56/110 fix the line, He et al. Table 6 the size
    model = get_model(f"resnet{depth}")
    assert _params(model) == _depth_line((20, 269_722), (56, 853_018), depth)
    assert round(_params(model) / 1e6, 2) == params_m
    assert conv_linear_macs(model, X32) == _depth_line((20, 40_551_040), (56, 125_485_696), depth)
    assert _depth_line((20, 269_722), (56, 853_018), 110) == 1_727_962  # the line also hits ResNet-110


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_option_b_adds_two_fixed_projections_at_every_depth(depth):
    # the two 1x1 conv + BN projections (16->32, 32->64) do not depend on depth: REFERENCE's 20/56 rows
    a, b = get_model(f"resnet{depth}"), get_model(f"resnet{depth}", shortcut="B")
    assert _params(b) - _params(a) == 272_474 - 269_722
    assert conv_linear_macs(b, X32) - conv_linear_macs(a, X32) == 40_813_184 - 40_551_040


def _vgg_counts(cfg: list, classes: int) -> tuple[int, int]:
    """Params and MACs of a network-slimming VGG, by hand: 3x3 convs without bias, BN, one linear."""
    params, macs, channels, side = 0, 0, 3, 32
    for item in cfg:
        if item == "M":
            side //= 2
            continue
        params += 9 * channels * item + 2 * item
        macs += 9 * channels * item * side * side
        channels = item
    return params + channels * classes + classes, macs + channels * classes


@pytest.mark.parametrize("depth", [11, 13, 16, 19])
@pytest.mark.parametrize("dataset,classes", [("cifar10", 10), ("cifar100", 100)])
def test_every_vgg_matches_its_cfg_counted_by_hand(depth, dataset, classes):
    model = get_model(f"vgg{depth}", dataset)
    params, macs = _vgg_counts(VGG_CONFIGS[depth], classes)
    assert (_params(model), conv_linear_macs(model, X32)) == (params, macs)
    if depth == 19:  # and the hand count is REFERENCE.md's row
        assert params == {10: 20_035_018, 100: 20_081_188}[classes]


@pytest.mark.parametrize("stem,macs_m,params_m", [(16, 264.8, 1.020), (24, 282.9, 1.059)])
def test_densenet40_reference_counts(stem, macs_m, params_m):
    model = get_model("densenet40", stem=stem)
    assert round(conv_linear_macs(model, X32) / 1e6, 1) == macs_m
    assert round(_params(model) / 1e6, 3) == params_m


def test_resnet164_matches_paper_size():
    model = get_model("resnet164")
    assert round(_params(model) / 1e6, 2) == 1.70  # network slimming Table 1 baseline
    # paper FLOPs 4.99e8 ~ 2 x MACs plus elementwise ops
    assert 0.98 < 2 * conv_linear_macs(model, X32) / 4.99e8 < 1.0


def test_default_shortcut_is_option_a_without_params():
    assert DEFAULT_SHORTCUT == "A"
    model = get_model("resnet20")
    shortcut = model.layer2[0].shortcut
    assert isinstance(shortcut, PadShortcut) and not list(shortcut.parameters())
    x = torch.randn(2, 16, 8, 8)
    y = shortcut(x)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2]) and not y[:, :8].any() and not y[:, 24:].any()


@pytest.mark.parametrize("name", CIFAR_NAMES)
def test_every_cifar_model_fx_traces_and_runs(name):
    model = get_model(name, "cifar100").eval()
    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        out = model(X32)
        assert out.shape == (1, 100)
        assert torch.allclose(traced(X32), out)


PRUNE_CASES = [(name, {}) for name in CIFAR_NAMES] + [
    (f"resnet{d}", {"shortcut": "B"}) for d in (20, 32, 44, 56, 110)]


@pytest.mark.parametrize("name,kwargs", PRUNE_CASES, ids=[n + "-B" * bool(k) for n, k in PRUNE_CASES])
def test_every_cifar_model_prunes_half_with_equivalence(name, kwargs):
    model = randomize_bn(get_model(name, **kwargs))
    x = torch.randn(2, 3, 32, 32)
    select = name in ("resnet164", "densenet40")  # pre-activation: BNs read the residual sum / concat
    plan = slimbench.plan(model, x, method="network_slimming", ratio=0.5, residual="select" if select else "keep")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned = slimbench.prune(model, x, plan=plan)
    assert_equivalent(model, x, plan, pruned=pruned)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # caller's model untouched
    assert conv_linear_macs(pruned, x[:1]) < 0.75 * conv_linear_macs(model, x[:1])
    assert _params(pruned) < _params(model)
    assert any(isinstance(m, MaskedBatchNorm) for m in pruned.modules()) == select


def test_model_info_and_list_models():
    info = model_info("resnet56", "cifar100")
    assert (info.family, info.input_shape, info.num_classes) == ("resnet", (3, 32, 32), 100)
    assert model_info("resnet50", "ilsvrc12").input_shape == (3, 224, 224)
    digits = {i.name for i in list_models("digits")}
    assert set(CIFAR_NAMES) <= digits
    assert {"resnet18", "vgg16_bn", "mobilenet_v2", "densenet121"} <= {i.name for i in list_models("ilsvrc12")}
    with pytest.raises(AttributeError):
        info.name = "other"  # frozen


def test_torchvision_builder_without_download_and_reference_params():
    model = get_model("resnet18", "ilsvrc12")
    assert _params(model) == 11_689_512
    assert get_model("mobilenet_v2", "ilsvrc12", num_classes=10).classifier[-1].out_features == 10
    with pytest.raises(ValueError, match="never downloaded"):
        get_model("resnet18", "ilsvrc12", weights="IMAGENET1K_V1")


def test_unknown_names_and_datasets_list_valid_choices():
    with pytest.raises(ValueError, match=r"did you mean 'resnet56'.*resnet20"):
        get_model("resnet65")
    with pytest.raises(ValueError, match="dataset='ilsvrc12'"):
        get_model("resnet18", "cifar10")
    with pytest.raises(ValueError, match="cifar10, cifar100, digits, ilsvrc12"):
        get_model("resnet20", "mnist")
    with pytest.raises(ValueError, match="num_classes"):
        get_model("resnet20", num_classes=0)
    with pytest.raises(ValueError, match="'A'.*'B'"):
        get_model("resnet20", shortcut="C")


def test_checkpoint_roundtrip_and_ddp_prefix(tmp_path):
    model = randomize_bn(get_model("resnet20"))
    path = tmp_path / "w.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 3}, path)
    loaded = get_model("resnet20", checkpoint=path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(X32), model(X32))


def test_checkpoint_num_classes_mismatch_names_key_and_shapes(tmp_path):
    path = tmp_path / "c100.pt"
    torch.save(get_model("resnet20", "cifar100").state_dict(), path)
    with pytest.raises(ValueError, match=r"'fc.weight' has shape \(100, 64\).*\(10, 64\).*num_classes"):
        get_model("resnet20", "cifar10", checkpoint=path)
    assert get_model("resnet20", "cifar10", num_classes=100, checkpoint=path).fc.out_features == 100


def test_truncated_missing_and_foreign_checkpoints(tmp_path):
    good = tmp_path / "good.pt"
    torch.save(get_model("resnet20").state_dict(), good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        get_model("resnet20", checkpoint=truncated)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        get_model("resnet20", checkpoint=tmp_path / "nope.pt")
    with pytest.raises(ValueError, match="missing"):
        get_model("resnet32", checkpoint=good)


def test_pruned_checkpoint_rebuilds_pruned_size(tmp_path):
    model = randomize_bn(get_model("vgg11"))
    plan = slimbench.plan(model, (3, 32, 32), ratio=0.5)
    pruned = slimbench.prune(model, plan=plan).eval()
    path = tmp_path / "pruned.pt"
    slimbench.save_pruned_model(pruned, path, plan=plan)
    loaded = get_model("vgg11", checkpoint=path).eval()
    assert _params(loaded) == _params(pruned) < _params(model)
    with torch.no_grad():
        assert torch.allclose(loaded(X32), pruned(X32))


def test_models_cli_lists_names_and_default_shortcut(capsys):
    from slimbench.cli import main

    assert main(["models", "--dataset", "cifar10"]) == 0
    out = capsys.readouterr().out
    assert "resnet164" in out and "densenet40" in out and "option A" in out
    assert "resnet18" not in out


@pytest.mark.parametrize(("name", "dataset", "residual", "sparsity"), [
    ("vgg19", "cifar10", "none", 1e-4), ("resnet56", "cifar10", "post-activation", 1e-5),
    ("resnet164", "cifar10", "pre-activation", 1e-5), ("densenet40", "digits", "pre-activation", 1e-5),
    ("resnet18", "ilsvrc12", "post-activation", 1e-5), ("resnet50", "ilsvrc12", "post-activation", 1e-5),
    ("wide_resnet50_2", "ilsvrc12", "post-activation", 1e-5), ("densenet121", "ilsvrc12", "pre-activation", 1e-5),
    ("vgg16_bn", "ilsvrc12", "none", 1e-5), ("mobilenet_v2", "ilsvrc12", "none", 1e-5),
])
def test_model_info_carries_residual_style_and_default_sparsity(name, dataset, residual, sparsity):
    info = model_info(name, dataset)
    assert (info.residual, info.default_sparsity) == (residual, sparsity)
    assert info.residual in RESIDUAL_STYLES


def test_paper_numbers_live_on_model_info():
    assert model_info("vgg19").paper_result(0.7) == PaperResult(0.7, 2.30e6, 3.91e8, 6.20)
    assert model_info("resnet164", "cifar100").paper_result(0.4).error == 5.08
    assert model_info("resnet56").paper == () and model_info("resnet50", "ilsvrc12").paper_result(0.0) is None


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_torchvision_resnets_get_branch_removal_variants(name):
    labels = {v.label for v in variants_for(model_info(name, "ilsvrc12").residual)}
    assert "network_slimming+branch-removal" in labels
    assert {v.label for v in variants_for(model_info("densenet121", "ilsvrc12").residual)} >= {
        "network_slimming+channel-selection"}
    with pytest.raises(ValueError, match="unknown residual style 'resnet'"):
        variants_for("resnet")  # family strings are not residual styles


def test_branch_removal_on_a_torchvision_resnet_removes_dead_branches():
    model = randomize_bn(get_model("resnet18", "ilsvrc12"))
    with torch.no_grad():
        for bn in ("layer2.1.bn2", "layer3.1.bn2"):  # what sparse training does to a useless block
            model.get_submodule(bn).weight.mul_(1e-3)
    x = torch.randn(1, 3, 64, 64)
    variant = next(v for v in variants_for(model_info("resnet18", "ilsvrc12").residual) if v.branches == "remove")
    plan = slimbench.plan(model, x, **variant.plan_options())
    assert set(plan.branches) == {"layer2.1.bn2", "layer3.1.bn2"}
    assert_equivalent(model, x, plan)


def test_one_resolver_for_cli_and_report():
    assert resolve_info("resnet50").dataset == "ilsvrc12"  # without a data set: cifar10, then ilsvrc12
    on_digits = resolve_info("resnet18", "digits", any_architecture=True)  # what slimbench report runs
    assert (on_digits.dataset, on_digits.input_shape, on_digits.num_classes) == ("digits", (3, 32, 32), 10)
    assert on_digits.residual == "post-activation"
    with pytest.raises(ValueError, match="is a torchvision \\(ILSVRC12\\) model; use --dataset ilsvrc12"):
        resolve_info("resnet18", "digits")
    with pytest.raises(ValueError, match="did you mean 'resnet56'"):
        resolve_info("resnet65", "digits", any_architecture=True)
