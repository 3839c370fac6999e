"""Per-channel parameters read by the forward itself (layer scale ``x * gamma``, ``x + beta``)."""

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

import slimbench
from slimbench.analysis.graph import build_graph
from slimbench.core.counting import conv_linear_macs

from helpers import randomize_bn


class LayerScaleBlock(nn.Module):
    """stem conv-BN-ReLU, then a conv-BN-ReLU-conv-BN branch scaled by ``gamma`` before the residual add."""

    def __init__(self, shape=(8, 1, 1), left=False):
        super().__init__()
        self.left = left
        self.conv0, self.bn0 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv1, self.bn1 = nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.gamma = nn.Parameter(torch.rand(shape) + 0.5)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = F.relu(self.bn0(self.conv0(x)))
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        x = x + (self.gamma * y if self.left else y * self.gamma)
        return self.head(F.relu(x)).mean((2, 3))


def _check_pruned(model, x, param="gamma", channels=8):
    pruned = slimbench.prune(model, x, ratio=0.5)
    plan = pruned.slimbench_plan
    assert plan.options["verification"]["frozen"] == []
    with torch.no_grad():
        ref = slimbench.zero_bn_channels(model, plan).eval()(x)
        out = pruned.eval()(x)
    assert torch.allclose(out, ref, rtol=0, atol=1e-10 * ref.abs().max().item())
    old, new = getattr(model, param), getattr(pruned, param)
    assert isinstance(new, nn.Parameter) and new.requires_grad
    assert new.numel() < old.numel() and new.shape.numel() < channels
    assert conv_linear_macs(pruned, x) < conv_linear_macs(model, x)
    return pruned


@pytest.mark.parametrize("shape,left", [((8, 1, 1), False), ((1, 8, 1, 1), True)])
def test_layer_scale_before_residual_add_is_pruned_exactly(shape, left):
    torch.manual_seed(0)
    model = randomize_bn(LayerScaleBlock(shape, left)).double()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    pruned = _check_pruned(model, x)
    assert pruned.gamma.dim() == len(shape) and pruned.gamma.shape[len(shape) - 3] == len(pruned.bn0.weight)
    graph = build_graph(model, x)
    assert graph.params["gamma"].dim == len(shape) - 3
    assert graph.bn_class_reason("bn2") is None


def test_layer_scale_round_trips_through_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = randomize_bn(LayerScaleBlock())
    x = torch.randn(2, 3, 6, 6)
    pruned = slimbench.prune(model, x, ratio=0.5).eval()
    assert pruned.gamma.shape[0] < 8
    path = slimbench.save_pruned_model(pruned, tmp_path / "m.pt")
    loaded = slimbench.load_pruned_model(LayerScaleBlock, path).eval()
    assert loaded.gamma.shape == pruned.gamma.shape
    torch.save(pruned.state_dict(), tmp_path / "sd.pt")
    bare = slimbench.load_pruned_model(LayerScaleBlock, tmp_path / "sd.pt", example_inputs=(3, 6, 6)).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned(x))
        assert torch.equal(bare(x), pruned(x))


class BiasAdd(nn.Module):
    """``bn0(x) + beta`` read by a conv (``then_bn=False``) or by another BN first (``then_bn=True``)."""

    def __init__(self, then_bn=False):
        super().__init__()
        self.conv0, self.bn0 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.beta = nn.Parameter(torch.randn(8, 1, 1))
        self.bnb = nn.BatchNorm2d(8) if then_bn else nn.Identity()
        self.conv1, self.bn1 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = F.relu(self.bnb(self.bn0(self.conv0(x)) + self.beta))
        return self.head(F.relu(self.bn1(self.conv1(x)))).mean((2, 3))


def test_per_channel_add_read_by_a_conv_is_unsafe_with_a_reason():
    rows = {r["bn"]: r for r in slimbench.explain(randomize_bn(BiasAdd()), (3, 6, 6))}
    assert rows["bn0"]["status"] == "not prunable"
    assert "conv1" in rows["bn0"]["reason"] and "no BatchNorm zeroes it" in rows["bn0"]["reason"]
    assert rows["bn1"]["status"] == "prunable"


def test_per_channel_add_zeroed_again_by_a_bn_is_pruned_exactly():
    torch.manual_seed(0)
    model = randomize_bn(BiasAdd(then_bn=True)).double()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    graph = build_graph(model, x)
    assert graph.bn_class_reason("bn0") is None
    assert set(graph.class_of[graph.bns["bn0"].gids]) == set(graph.class_of[graph.bns["bnb"].gids])
    _check_pruned(model, x, param="beta")


class PosEmbed(nn.Module):
    """A positional embedding of shape [C, H, W] (frozen) next to a layer scale (prunable)."""

    def __init__(self):
        super().__init__()
        self.conv0, self.bn0 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.pos = nn.Parameter(torch.randn(8, 4, 4))
        self.conv1, self.bn1 = nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.gamma = nn.Parameter(torch.rand(16, 1, 1) + 0.5)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        x = F.relu(self.bn0(self.conv0(x))) + self.pos
        return self.head(F.relu(self.bn1(self.conv1(x))) * self.gamma).mean((2, 3))


def test_positional_embedding_stays_frozen_next_to_a_pruned_layer_scale():
    torch.manual_seed(0)
    model = randomize_bn(PosEmbed()).double()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    rows = {r["bn"]: r for r in slimbench.explain(model, x)}
    assert rows["bn0"]["status"] == "not prunable" and "do not line up" in rows["bn0"]["reason"]
    assert rows["bn1"]["status"] == "prunable"
    pruned = _check_pruned(model, x, channels=16)
    assert pruned.pos.shape == (8, 4, 4) and len(pruned.bn0.weight) == 8


class SharedScale(nn.Module):
    """One ``gamma`` scales two branches (``extra=True``: it is also read as a whole, by ``gamma.mean()``)."""

    def __init__(self, extra=False):
        super().__init__()
        self.extra = extra
        self.conv0, self.bn0 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.gamma = nn.Parameter(torch.rand(8, 1, 1) + 0.5)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        a = F.relu(self.bn0(self.conv0(x))) * self.gamma
        b = F.relu(self.bn1(self.conv1(x))) * self.gamma
        out = self.head(torch.cat([a, b], 1)).mean((2, 3))
        return out + self.gamma.mean() if self.extra else out


def test_one_parameter_at_two_sites_couples_their_channels():
    torch.manual_seed(0)
    model = randomize_bn(SharedScale()).double()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    graph = build_graph(model, x)
    assert graph.bn_class_reason("bn0") is None
    assert (graph.class_of[graph.bns["bn0"].gids] == graph.class_of[graph.bns["bn1"].gids]).all()
    pruned = _check_pruned(model, x)
    assert len(pruned.bn0.weight) == len(pruned.bn1.weight) == pruned.gamma.shape[0]


def test_a_parameter_also_read_whole_freezes_its_channels():
    reason = build_graph(randomize_bn(SharedScale(extra=True)), (3, 6, 6)).bn_class_reason("bn0")
    assert reason is not None and "'gamma' is also read by" in reason


class ShapeBranch(LayerScaleBlock):
    """The forward branches on a tensor shape: the result is a GraphModule that must read the sliced gamma."""

    def forward(self, x):
        x = F.relu(self.bn0(self.conv0(x)))
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        if x.shape[-1] > 2:
            y = y * self.gamma
        return self.head(F.relu(x + y)).mean((2, 3))


def test_a_shape_specialised_graph_module_reads_the_sliced_gamma():
    torch.manual_seed(0)
    model = randomize_bn(ShapeBranch()).double()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    pruned = _check_pruned(model, x)
    assert isinstance(pruned, fx.GraphModule)
    assert [n.target for n in pruned.graph.nodes if n.op == "get_attr"] == ["gamma"]
