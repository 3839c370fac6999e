"""Conv stems whose output becomes tokens (hybrid vision transformers): channels moved off dim 1.

Before the fix, a token picked by ``x[:, 0]`` from a (batch, tokens, features) tensor got a
1-channel label although it has ``features`` channels on dim 1: the Linear reading it was recorded
with 1 input and sliced to 1 input even when no group was pruned, so the pruned model failed to run
("mat1 and mat2 shapes cannot be multiplied (1x16 ...)") with every channel group frozen (timm
vit_small_resnet26d_224, volo_d1_224, xcit_nano_12_p16_224). Now ``prune(model, x, ratio=0.5)``
equals the zeroed-BN reference in float64, the conv stem is pruned, and channels moved off dim 1
are frozen with a reason that says so.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import slimbench
from slimbench.analysis.graph import build_graph
from slimbench.analysis.handlers import OP_HANDLERS, register_op_handler
from slimbench.core.labels import Chan, Full, channel_codes, collapse

from helpers import assert_equivalent, randomize_bn


def cbr(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class ClassTokenHybrid(nn.Module):
    """A conv stem, a patch projection into tokens, a class token in front, a head on the class token."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(cbr(3, 8), cbr(8, 12, 2))
        self.proj = nn.Conv2d(12, 16, 2, 2)
        self.cls = nn.Parameter(torch.randn(1, 1, 16))
        self.pos = nn.Parameter(torch.randn(1, 5, 16))
        self.norm = nn.LayerNorm(16)
        self.mlp = nn.Linear(16, 16)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = self.proj(self.stem(x)).flatten(2).transpose(1, 2)  # (batch, 4 tokens, 16 features)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        x = x + self.mlp(self.norm(x))
        return self.head(self.norm(x)[:, 0])


class BNTokenEmbed(nn.Module):
    """The patch embedding ends in a BN whose channels are the token features; a query from token 0."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Sequential(cbr(3, 8, 2), nn.Conv2d(8, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16))
        self.norm = nn.LayerNorm(16)
        self.q = nn.Linear(16, 16)
        self.kv = nn.Linear(16, 32)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)  # (batch, 4, 16)
        u = self.norm(t)
        q = self.q(u[:, 0]).unsqueeze(1)  # (batch, 1, 16)
        k, v = self.kv(u).chunk(2, dim=-1)
        attn = (q @ k.transpose(-2, -1)).softmax(-1)
        return self.head((attn @ v)[:, 0] + t[:, 0])


class LastDimLinear(nn.Module):
    """A Linear over the conv channels moved to the last dim (channels-last MLP), then moved back."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.a = cbr(3, 8), cbr(8, 8)
        self.fc = nn.Linear(8, 8)
        self.b = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.b(self.fc(self.a(self.stem(x)).permute(0, 2, 3, 1)).permute(0, 3, 1, 2))


CASES = {  # model, BN that must be pruned, BN that must stay with words of its reason
    "class_token_hybrid": (ClassTokenHybrid, "stem.1.1", None, ""),
    "bn_token_embed": (BNTokenEmbed, "embed.0.1", "embed.2",
                       "transpose (node 'transpose') moves the channels off dim 1"),
    "last_dim_linear": (LastDimLinear, "stem.1", "a.1", "permute (node 'permute') moves the channels off dim 1"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_tokens_prune_to_the_zeroed_model(case):
    cls, pruned_bn, kept_bn, reason = CASES[case]
    torch.manual_seed(0)
    model = randomize_bn(cls()).double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    plan = slimbench.plan(model, x, ratio=0.5)
    pruned = slimbench.prune(model, x, plan=plan).eval()
    assert pruned.slimbench_plan.options["verification"]["frozen"] == []  # the analysis was right
    assert_equivalent(model, x, plan, pruned)  # float64: within 1e-9 of the largest output
    modules = dict(pruned.named_modules())
    assert 0 < modules[pruned_bn].num_features < dict(model.named_modules())[pruned_bn].num_features
    if kept_bn is not None:
        row = {r["bn"]: r for r in slimbench.explain(model, x)}[kept_bn]
        assert row["status"] == "not prunable" and reason in row["reason"], row
        assert kept_bn not in plan.masks or plan.masks[kept_bn].all()


@pytest.mark.parametrize("case", list(CASES))
def test_every_record_matches_its_module(case):
    """A conv / linear / BN record has one channel id per input and output channel of its module."""
    model = CASES[case][0]()
    graph = build_graph(model, (3, 8, 8))
    modules = dict(model.named_modules())
    for name, rec in graph.convs.items():
        weight = modules[name].weight
        assert len(rec.in_gids) == weight.shape[1] * getattr(modules[name], "groups", 1), name
        assert len(rec.out_gids) == weight.shape[0], name
    for name, rec in graph.bns.items():
        assert len(rec.gids) == modules[name].num_features, name


def test_a_label_spans_all_of_dim_1():
    """Codes constant along dim 1 (one token's features) still have one code per position of dim 1."""
    token = collapse(torch.full((2, 5, 3), 6))
    assert isinstance(token, Chan) and token.codes.tolist() == [6] * 5
    moved = collapse(torch.arange(3).view(1, 1, 3).expand(2, 4, 3))  # channels on the last dim
    assert isinstance(moved, Full) and moved.codes.shape == (1, 4, 3) and channel_codes(moved) is None


def doubled(x):  # a user's op, labelled below by a handler that gets the channel count wrong
    return x + 0


torch.fx.wrap("doubled")


class MislabelledOp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = cbr(3, 8), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.b(doubled(self.a(x)))


def test_a_label_of_the_wrong_length_is_refused_not_sliced():
    """A rule given more (or fewer) channel labels than its module has channels makes the module opaque
    with that reason; before, the conv was recorded with 16 inputs and sliced by them."""
    register_op_handler(doubled, lambda ctx, node, value: Chan(torch.cat([ctx.input_label(node).codes] * 2)))
    try:
        model = randomize_bn(MislabelledOp()).double()
        x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
        row = {r["bn"]: r for r in slimbench.explain(model, x)}["a.1"]
        assert row["status"] == "not prunable" and "16 channel labels for its 8 input channels" in row["reason"], row
        with pytest.warns(UserWarning, match="removes only"):
            pruned = slimbench.prune(model, x, ratio=0.5)
        assert pruned.slimbench_plan.options["verification"]["frozen"] == []
    finally:
        OP_HANDLERS.pop(doubled)


@pytest.mark.parametrize("case", list(CASES))
def test_plan_macs_count_the_ops_no_record_follows(case):
    """Token linears and attention matmuls are not channel records, but they are MACs: the plan's
    before / after equal the counter's on the real models (they counted the convs only)."""
    from slimbench.core.counting import conv_linear_macs

    torch.manual_seed(0)
    model = randomize_bn(CASES[case][0]())
    x = torch.randn(2, 3, 8, 8)
    plan = slimbench.plan(model, x, ratio=0.5)
    assert build_graph(model, x).unrecorded_macs > 0
    assert plan.macs_before == conv_linear_macs(model, x[:1])
    assert plan.macs_after == conv_linear_macs(slimbench.prune(model, x, plan=plan), x[:1]) < plan.macs_before
