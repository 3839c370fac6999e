"""One channel spread over every position of dim 1 (an opaque op's single channel reshaped or expanded
to C channels: single-head attention, a channel-mean map, a (N, 1, C) token) stays C channels wide.

Its label used to collapse to one code, so the next conv / linear was recorded reading 1 channel and
surgery cut its weight to one input channel: the pruned model failed to run even with every group
kept (timm cpubone, efficientvim, mobilevit at 64 px)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import slimbench
from slimbench.analysis.graph import build_graph

from helpers import assert_equivalent, conv_linear_macs, randomize_bn


class _Tail(nn.Module):
    """conv -> BN -> ReLU -> conv -> BN -> ReLU: the BN classes here are what gets pruned."""

    def __init__(self, cin: int, conv: type[nn.Module] = nn.Conv2d, bn: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv(cin, 24, 1, bias=False), bn(24)
        self.conv2, self.bn2 = conv(24, 16, 3, padding=1, bias=False), bn(16)

    def forward(self, x):
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class SingleHeadAttention(nn.Module):
    """Attention with one head: (N, 1, HW, C) back to (N, C, H, W) by a transpose and a reshape."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12)
        self.tail = _Tail(12)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        n, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2).unsqueeze(1)  # one head
        mixed = F.scaled_dot_product_attention(tokens, tokens, tokens)
        x = mixed.transpose(2, 3).reshape(n, c, h, w)
        return self.fc(self.tail(x).mean((2, 3)))


class ExpandedMap1d(nn.Module):
    """A sequence model: a channel-mean map (N, 1, L) expanded to C channels, then Conv1d layers."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv1d(3, 10, 3, padding=1, bias=False), nn.BatchNorm1d(10)
        self.tail = _Tail(10, nn.Conv1d, nn.BatchNorm1d)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x.flatten(2))))
        gate = x.mean(1, keepdim=True).expand(-1, x.shape[1], -1)
        return self.fc(self.tail(gate).mean(2))


class TokenHead(nn.Module):
    """A (N, 1, C) token read as (N, C) by a linear head, after a prunable trunk."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = _Tail(3)
        self.proj = nn.Conv2d(16, 8, 1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = self.proj(self.trunk(x))
        token = x.flatten(2).mean(2).unsqueeze(1).softmax(-1)  # (N, 1, 8): one channel, 8 features
        return self.fc(token.reshape(x.shape[0], -1))


MODELS = {"attention_one_head": SingleHeadAttention, "expand_conv1d": ExpandedMap1d, "token_linear": TokenHead}


def _input_channels(module: nn.Module) -> int:
    return module.weight.shape[1] * getattr(module, "groups", 1)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_recorded_layer_reads_its_real_channel_count(name):
    model = randomize_bn(MODELS[name]())
    graph = build_graph(model, torch.randn(2, 3, 8, 8))
    modules = dict(model.named_modules())
    for layer, rec in graph.convs.items():
        if rec.role == "dense":
            assert len(rec.in_gids) == _input_channels(modules[layer]), layer


@pytest.mark.parametrize("name", sorted(MODELS))
def test_pruned_equals_zeroed_and_is_smaller(name):
    torch.manual_seed(0)
    model = randomize_bn(MODELS[name]())
    x = torch.randn(2, 3, 8, 8)
    plan = slimbench.plan(model, x, ratio=0.5)
    pruned = slimbench.prune(model, x, plan=plan)
    assert_equivalent(model, x, plan, pruned)
    assert_equivalent(model.double(), x.double(), plan, pruned.double())
    model.float(), pruned.float()
    tail = pruned.trunk if name == "token_linear" else pruned.tail
    assert tail.conv1.out_channels < 24 or tail.conv2.out_channels < 16
    assert conv_linear_macs(pruned, x[:1]) < conv_linear_macs(model, x[:1])


def test_a_layer_whose_input_label_has_another_length_is_frozen_not_sliced(monkeypatch):
    """The rules' own guard: were a label ever one code short of the channels a conv reads (the old
    collapse), the conv's channels are frozen with the reason, not recorded with the wrong count."""
    import slimbench.core.labels as labels

    def old_compact(codes):
        for dim in range(codes.dim()):
            if codes.shape[dim] > 1 and bool((codes == codes.narrow(dim, 0, 1)).all()):
                codes = codes.narrow(dim, 0, 1)
        return codes

    monkeypatch.setattr(labels, "compact", old_compact)
    model = randomize_bn(ExpandedMap1d())
    x = torch.randn(2, 3, 8, 8)
    graph = build_graph(model, x)
    assert "tail.conv1" not in graph.convs
    assert any(r and "tail.conv1: 1 channel labels for its 10 input channels" in r for r in graph.class_reason)
    plan = slimbench.plan(model, x, ratio=0.5)
    assert_equivalent(model, x, plan, slimbench.prune(model, x, plan=plan))
