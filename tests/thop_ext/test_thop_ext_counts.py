"""thop_ext counting rules on small hand-built models whose counts are worked out by hand."""

from __future__ import annotations

import copy

import pytest
import thop
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import thop_ext
from slimbench.core.modules import ChannelSelection, MaskedBatchNorm


class SubConv(nn.Conv2d):
    """A conv subclass, as wrappers and pruning libraries make them: plain thop counts it as 0."""


def test_conv_subclass_counted_where_plain_thop_counts_zero():
    model = nn.Sequential(SubConv(3, 4, 3, padding=1, bias=False))
    x = torch.randn(1, 3, 8, 8)
    plain_macs, _ = thop.profile(copy.deepcopy(model), inputs=(x,), verbose=False)
    result = thop_ext.profile(model, x)
    assert plain_macs == 0
    assert result.macs == 4 * 3 * 9 * 64
    assert result.params == 4 * 3 * 9
    assert result.layer("0").type == "SubConv"
    assert result.layer("0").output_shape == (1, 4, 8, 8)


def test_zero_channels_do_not_count_single_zeros_do():
    """Liveness is structural: a whole out-slice or in-slice of zeros is a dead channel; lone zeros are not."""
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight[1].zero_()  # a whole output channel
        conv.weight[:, 0].zero_()  # a whole input channel
        conv.weight[0, 2].zero_()  # one (out, in) slice of live channels: still counted
        conv.weight[2, 1, 1, 1] = 0  # one entry: still counted
    result = thop_ext.profile(conv, (3, 8, 8))
    live_slices = 3 * 2  # live outputs x live inputs
    assert result.macs == live_slices * 9 * 64
    assert result.params == live_slices * 9
    plain = thop_ext.profile(conv, (3, 8, 8), skip_zero=False)
    assert plain.macs == 12 * 9 * 64
    assert plain.params == sum(p.numel() for p in conv.parameters())


def test_grouped_conv_liveness_is_per_group():
    conv = nn.Conv2d(4, 4, 3, padding=1, groups=2, bias=False)  # weight (4, 2, 3, 3)
    with torch.no_grad():
        conv.weight[0].zero_()  # output 0 (group 0) dead
        conv.weight[2:, 1].zero_()  # input 3 (second input of group 1) dead
    result = thop_ext.profile(conv, (4, 8, 8))
    assert result.params == (1 * 2 + 2 * 1) * 9  # group 0: 1 out x 2 in; group 1: 2 out x 1 in


@pytest.mark.parametrize("name", ["resnet18", "vgg11_bn"])
def test_unpruned_params_equal_numel_whatever_single_weights_are_zero(name):
    """A freshly initialised weight that happens to be exactly 0.0 must not change the count."""
    model = getattr(torchvision.models, name)().eval()
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        for i, module in enumerate([convs[0], convs[len(convs) // 2], convs[-2], convs[-1]]):
            module.weight.view(-1)[7 * i + 3] = 0.0
    result = thop_ext.profile(model, (3, 32, 32))
    assert result.params == sum(p.numel() for p in model.parameters())
    assert result.macs == thop_ext.profile(model, (3, 32, 32), skip_zero=False).macs


def test_linear_zero_rows_and_bias():
    fc = nn.Linear(6, 5)
    with torch.no_grad():
        fc.weight[2].zero_()
        fc.bias[2] = 0
        fc.weight[3].zero_()  # bias of row 3 stays non-zero: that output still exists
    result = thop_ext.profile(fc, torch.randn(2, 6))
    assert result.macs == 2 * (30 - 12)
    assert result.params == (30 - 12) + 4
    # paper FLOPs: 2 per MAC + one add per live bias entry
    assert result.flops == 2 * result.macs + 2 * 4


def test_batchnorm_channel_dead_only_when_gamma_and_beta_are_zero():
    bn = nn.BatchNorm2d(4).eval()
    with torch.no_grad():
        bn.weight[1] = 0
        bn.bias[1] = 0
        bn.weight[2] = 0  # beta still non-zero: the channel emits a constant, it is live
        bn.bias[2] = 0.5
    result = thop_ext.profile(bn, (4, 5, 5))
    assert result.params == 2 * 3
    assert result.flops == 2 * 3 * 25
    assert result.macs == 0
    assert thop_ext.profile(bn, (4, 5, 5), skip_zero=False).params == 8


class Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.branch = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                                    nn.BatchNorm2d(channels), nn.ReLU(),
                                    nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                                    nn.BatchNorm2d(channels))

    def forward(self, x):
        return F.relu(x + self.branch(x))


def test_all_zero_residual_branch_counts_nothing():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), Residual(8)).eval()
    dense = thop_ext.profile(model, (3, 6, 6))
    with torch.no_grad():
        for param in model[1].branch.parameters():
            param.zero_()
    dead = thop_ext.profile(model, (3, 6, 6))
    stem = 8 * 3 * 9 * 36
    assert dense.macs == stem + 2 * 8 * 8 * 9 * 36
    assert dead.macs == stem
    assert dead.params == 8 * 3 * 9
    assert all(row.macs == 0 and row.params == 0 for row in dead.layers if row.name.startswith("1.branch"))
    # the residual add and the relu after it are functional: charged to the block that runs them
    assert dead.layer("1").flops == 2 * 8 * 36


def test_masked_batchnorm_and_channel_selection_count_kept_channels():
    model = nn.Sequential(MaskedBatchNorm([0, 2], in_channels=4), nn.Conv2d(2, 3, 1, bias=False),
                          ChannelSelection([1, 2], in_channels=3), nn.Conv2d(2, 5, 1, bias=False)).eval()
    result = thop_ext.profile(model, (4, 5, 5))
    assert result.layer("0").params == 2 * 2
    assert result.layer("0").flops == 2 * 2 * 25
    assert result.layer("0").output_shape == (1, 2, 5, 5)
    assert result.layer("2").macs == 0 and result.layer("2").flops == 0
    assert result.layer("2").output_shape == (1, 2, 5, 5)
    assert result.macs == (3 * 2 + 5 * 2) * 25


class Functional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bare = nn.Parameter(torch.randn(6, 8, 1, 1))

    def forward(self, x):
        y = F.relu(self.conv(x))
        z = torch.cat([y, y + y], dim=1)  # add: 1 per element; cat: free
        z = F.conv2d(z, self.bare)  # a functional conv: counted through the dispatcher
        return F.adaptive_avg_pool2d(z, 1).flatten(1)


def test_functional_ops_are_counted_and_charged_to_the_caller():
    result = thop_ext.profile(Functional(), (3, 8, 8))
    conv_macs = 4 * 3 * 9 * 64
    bare_macs = 6 * 8 * 64
    assert result.macs == conv_macs + bare_macs
    row = result.layer("")
    assert row.macs == bare_macs
    relu, add, pool = 4 * 64, 4 * 64, 6 * 64
    assert row.flops == 2 * bare_macs + relu + add + pool
    assert result.flops == 2 * conv_macs + row.flops
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        Functional()(torch.randn(1, 3, 8, 8))
    assert counter.get_total_flops() == 2 * result.macs


def test_grouped_and_transposed_convs_match_flop_counter():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=2), nn.ConvTranspose2d(4, 2, 2, stride=2)).eval()
    x = torch.randn(1, 4, 6, 6)
    result = thop_ext.profile(model, x)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    assert result.layer("0").macs == 4 * 2 * 9 * 36
    assert result.layer("1").macs == 4 * 2 * 4 * 36  # every input position through the 2x2 kernel
    assert 2 * result.macs == counter.get_total_flops()
    assert result.params == sum(p.numel() for p in model.parameters())


def test_transposed_conv_dead_output_channel():
    deconv = nn.ConvTranspose2d(4, 3, 2, stride=2, bias=True)
    with torch.no_grad():
        deconv.weight[:, 1].zero_()  # weight is (in, out, kh, kw): output channel 1 has no live slice
        deconv.bias[1] = 0
    result = thop_ext.profile(deconv, (4, 3, 3))
    assert result.params == 4 * 2 * 4 + 2
    assert result.macs == 4 * 2 * 4 * 9


def test_shared_module_params_once_macs_per_call():
    conv = nn.Conv2d(2, 2, 1, bias=False)

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = conv

        def forward(self, x):
            return self.conv(self.conv(x))

    result = thop_ext.profile(Twice(), (2, 3, 3))
    assert result.params == 4
    assert result.macs == 2 * 4 * 9


def test_skip_zero_false_matches_numel_and_batch_scales_macs():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 10))
    with torch.no_grad():
        model[0].weight[:4].zero_()
        model[1].weight[:2].zero_()
        model[1].bias[:2].zero_()
    plain = thop_ext.profile(model, torch.randn(1, 3, 8, 8), skip_zero=False)
    assert plain.params == sum(p.numel() for p in model.parameters())
    live = thop_ext.profile(model, torch.randn(1, 3, 8, 8))
    assert live.params < plain.params
    batch3 = thop_ext.profile(model, torch.randn(3, 3, 8, 8))
    assert batch3.macs == 3 * live.macs and batch3.params == live.params


def test_meta_model_counted_by_shapes():
    with torch.device("meta"):
        model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4))
    result = thop_ext.profile(model, (3, 10, 10), skip_zero=False)
    assert result.macs == 4 * 3 * 9 * 64
    assert result.params == 4 * 27 + 8
    with pytest.raises(ValueError, match=r"'0.weight' is on the meta device.*skip_zero=False"):
        thop_ext.profile(model, (3, 10, 10))


def test_human_units_and_table():
    assert thop_ext.human(125_490_000) == "125.49M"
    assert thop_ext.human(1_814_100_000, 4) == "1.8141G"
    assert thop_ext.human(999) == "999"
    result = thop_ext.profile(nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.ReLU()), (3, 8, 8))
    table = result.table()
    assert "Conv2d" in table and "total" in table and "3.89K" in table  # 4 * 27 * 36 MACs
    exact = result.table(exact=True)
    assert f"{result.macs:,}" in exact and "1x4x6x6" in exact
    assert str(result) == result.summary() and "live weights" in result.summary()
    assert result.to_dict()["macs"] == result.macs


def test_bad_inputs_say_what_and_what_to_do():
    conv = nn.Conv2d(3, 4, 3)
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        thop_ext.profile("resnet18", (3, 8, 8))
    with pytest.raises(TypeError, match=r"inputs must be a tensor.*\(3, 32, 32\)"):
        thop_ext.profile(conv, "3x8x8")
    with pytest.raises(ValueError, match="non-positive size"):
        thop_ext.profile(conv, (3, 0, 8))
    with pytest.raises(KeyError, match="no profiled module named 'nope'"):
        thop_ext.profile(conv, (3, 8, 8)).layer("nope")


class ValueBranch(nn.Module):
    """A forward that reads values: it cannot run on meta tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x):
        y = self.bn(self.conv(x))
        return y.relu() if float(y.mean()) > -1e9 else y


def _rows(result):
    return [(r.name, r.type, r.macs, r.flops, r.params, r.output_shape) for r in result.layers]


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "shufflenet_v2_x0_5", "densenet40-select"])
def test_meta_pass_counts_what_the_real_pass_counts(name):
    import torchvision

    import slimbench
    from slimbench.models import get_model

    torch.manual_seed(0)
    if name == "densenet40-select":
        model, shape = get_model("densenet40").eval(), (3, 32, 32)
        for bn in model.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.weight.data.uniform_(0, 1)
        plan = slimbench.plan(model, shape, ratio=0.5, residual="select")
        models = [slimbench.prune(model, shape, plan=plan), slimbench.zero(model, plan)]
    else:
        models, shape = [torchvision.models.get_model(name, weights=None).eval()], (3, 64, 64)
    for model in models:
        meta = thop_ext.profile(model, shape, forward_on_meta=True)
        real = thop_ext.profile(model, shape, forward_on_meta=False)
        assert meta.macs > 0 and _rows(meta) == _rows(real)
        assert (meta.macs, meta.flops, meta.params) == (real.macs, real.flops, real.params)


def test_value_dependent_forward_falls_back_to_the_real_pass(monkeypatch):
    import sys

    model = ValueBranch().eval()
    with pytest.raises(Exception, match="meta"):
        thop_ext.profile(model, (3, 8, 8), forward_on_meta=True)
    real = thop_ext.profile(model, (3, 8, 8), forward_on_meta=False)
    assert real.macs == 8 * 3 * 9 * 64
    # make the default choose the meta pass for this small model: it fails there and reruns for real
    monkeypatch.setattr(sys.modules["thop_ext.profile"], "_META_WORTH_IT", 0)
    assert sys.modules["thop_ext.profile"]._worth_meta(model, (torch.zeros(1, 3, 8, 8),))
    assert _rows(thop_ext.profile(model, (3, 8, 8))) == _rows(real)


class Tagger(nn.Module):
    """An LSTM tagger: the recurrent layers, then a linear head on every step."""

    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(rnn.hidden_size * (2 if rnn.bidirectional else 1), 5)

    def forward(self, x):
        return self.head(self.rnn(x)[0])


@pytest.mark.parametrize("rnn", [nn.LSTM(16, 32, num_layers=2, batch_first=True),
                                 nn.LSTM(8, 12, bidirectional=True), nn.GRU(8, 12), nn.RNN(8, 12, bias=False)],
                         ids=["lstm2", "bilstm", "gru", "rnn"])
def test_rnn_macs_follow_thops_rnn_rules(rnn):
    x = torch.randn(3, 7, rnn.input_size)
    thop_macs, _ = thop.profile(nn.Sequential(copy.deepcopy(rnn)), (x,), verbose=False)
    result = thop_ext.profile(Tagger(rnn), x)
    assert thop_macs > 0
    assert result.layer("rnn").macs == int(thop_macs)
    assert result.macs == int(thop_macs) + result.layer("head").macs
    assert result.params == sum(p.numel() for p in Tagger(rnn).parameters())


def test_lstm_cell_and_subclass_use_thops_rules():
    class MyLSTM(nn.LSTM):
        pass

    cell, sub = nn.LSTMCell(8, 12), MyLSTM(8, 12)
    x = torch.randn(4, 8)
    assert thop_ext.profile(cell, x).macs == int(thop.profile(cell, (x,), verbose=False)[0]) > 0
    seq = torch.randn(5, 4, 8)
    assert thop_ext.profile(sub, seq).macs == int(thop.profile(nn.LSTM(8, 12), (seq,), verbose=False)[0]) > 0
