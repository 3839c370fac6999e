"""Tracing and channel coupling: what can be pruned, what cannot, and why."""

import pytest
import torch
import torchvision
from torch import nn

import slimbench
from slimbench.analysis.explain import format_explanation
from slimbench.analysis.graph import build_graph

from helpers import assert_equivalent, randomize_bn
from nets import (
    BNShortcut,
    DenseConcat,
    LoopOverChildren,
    PostActResidual,
    PreActResidual,
    ShapeBranching,
    WithUntraceableChild,
)


def rows_by_bn(model, shape, **kw):
    return {r["bn"]: r for r in slimbench.explain(model, shape, **kw)}


def test_loop_over_named_children_keeps_module_names():
    model = randomize_bn(LoopOverChildren())
    assert slimbench.prunable_bn_names(model, (3, 16, 16)) == ["a.1", "b.1", "c.1"]
    x = torch.randn(2, 3, 16, 16)
    plan = slimbench.plan(model, x, ratio=0.5)
    assert set(plan.masks) == {"a.1", "b.1", "c.1"}
    assert_equivalent(model, x, plan)


def test_bn_to_bn_shortcut_is_coupled_and_exact():
    model = randomize_bn(BNShortcut())
    rows = rows_by_bn(model, (3, 8, 8), residual="keep")
    assert rows["bn0"]["status"] == "coupled (residual)"
    assert "bn_short" in rows["bn0"]["coupled_with"] and "body.2" in rows["bn0"]["coupled_with"]
    assert rows["body.0.1"]["status"] == "prunable"
    x = torch.randn(2, 3, 8, 8)
    for residual in ("keep", "shared"):
        plan = slimbench.plan(model, x, ratio=0.5, residual=residual)
        assert ("bn_short" in plan.masks) == (residual == "shared")
        assert_equivalent(model.double(), x.double(), plan)
        model.float()


def test_residual_coupling_in_torchvision_resnet():
    rows = rows_by_bn(torchvision.models.resnet18(), (3, 32, 32), residual="keep")
    assert rows["layer1.0.bn1"]["status"] == "prunable"
    assert rows["layer1.0.bn2"]["status"] == "coupled (residual)"
    assert "bn1" in rows["layer1.0.bn2"]["coupled_with"]
    assert "residual" in rows["layer1.0.bn2"]["reason"]


def test_concat_offsets_and_flatten_into_linear():
    model = randomize_bn(BNShortcut())
    graph = build_graph(model, (3, 8, 8))
    head = graph.convs["head"]
    assert len(head.in_gids) == 8 * 8 * 8  # each channel repeated over the 8x8 positions
    assert (head.in_gids.reshape(8, 64) == head.in_gids.reshape(8, 64)[:, :1]).all()
    dense = randomize_bn(DenseConcat())
    graph = build_graph(dense, (3, 8, 8))
    last = graph.convs["layers.2.2"]
    assert len(last.in_gids) == 6 + 2 * 4
    assert (graph.space_of[last.in_gids][:6] == graph.space_of[last.in_gids][0]).all()


def test_squeeze_excitation_and_depthwise_are_joined():
    graph = build_graph(torchvision.models.mobilenet_v3_small(), (3, 32, 32))
    se = graph.convs["features.4.block.2.fc2"]  # SE output scales the depthwise channels
    dw = graph.convs["features.4.block.1.0"]
    assert dw.role == "joined" and dw.group_size == 1
    assert (graph.class_of[se.out_gids] == graph.class_of[dw.out_gids]).all()


def test_channel_shuffle_is_mapped_and_frozen_with_reason():
    rows = rows_by_bn(torchvision.models.shufflenet_v2_x0_5(), (3, 32, 32))
    assert rows["stage2.0.branch2.1"]["status"] == "prunable"  # inside the branch: prunable
    assert rows["stage2.0.branch2.6"]["status"] == "not prunable"
    assert "channel count" in rows["stage2.0.branch2.6"]["reason"]


def test_output_channels_are_frozen():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    rows = rows_by_bn(model, (3, 8, 8))
    assert rows["1"]["status"] == "not prunable" and "output" in rows["1"]["reason"]


def test_explanation_prints_as_table():
    text = format_explanation(slimbench.explain(PostActResidual(), (3, 8, 8), residual="keep"))
    assert "stem.1" in text and "coupled (residual)" in text and "prunable" in text


def test_channel_selection_makes_preactivation_bns_prunable():
    model = PreActResidual()
    plain = rows_by_bn(model, (3, 8, 8))
    assert plain["blocks.0.0"]["status"] != "prunable"
    selected = rows_by_bn(model, (3, 8, 8), residual="select")
    assert selected["blocks.0.0"]["status"] == "prunable (channel selection)"
    assert selected["bn"]["status"] == "prunable (channel selection)"
    dense = rows_by_bn(DenseConcat(), (3, 8, 8), residual="select")
    assert all(dense[f"layers.{i}.0"]["status"] == "prunable (channel selection)" for i in range(3))


def test_untraceable_child_becomes_opaque_leaf_with_warning():
    model = randomize_bn(WithUntraceableChild())
    with pytest.warns(UserWarning, match=r"'odd' \(DataDependent\)"):
        names = slimbench.prunable_bn_names(model, (3, 8, 8))
    assert "front.1" in names and "odd.bn" not in names


def test_untraceable_root_names_model_and_says_what_to_do():
    from nets import DataDependent

    with pytest.raises(RuntimeError, match=r"DataDependent itself.*control flow"):
        slimbench.plan(DataDependent(), (3, 8, 8))


def test_model_without_batchnorm_is_rejected():
    with pytest.raises(ValueError, match="no BatchNorm"):
        slimbench.plan(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1)), (3, 8, 8))


def test_wrong_input_shape_names_the_module():
    message = r"shape \[\(1, 1, 16, 16\)\] failed at module 'a.0'.*expects 3 input channels"
    with pytest.raises(ValueError, match=message):
        slimbench.plan(LoopOverChildren(), (1, 16, 16))


@pytest.mark.parametrize("bad", ["3x32x32", (3, 0, 32), [1.5, 2.0], None])
def test_bad_example_inputs(bad):
    with pytest.raises((TypeError, ValueError), match="example_inputs"):
        slimbench.plan(LoopOverChildren(), bad)


def test_dataparallel_wrapper_is_unwrapped():
    model = LoopOverChildren()
    assert slimbench.prunable_bn_names(nn.DataParallel(model), (3, 16, 16)) == ["a.1", "b.1", "c.1"]


def test_shape_dependent_control_flow_traces_with_meta_shapes():
    model = randomize_bn(ShapeBranching())
    with pytest.raises(torch.fx.proxy.TraceError):  # plain torch.fx cannot
        torch.fx.symbolic_trace(model)
    assert slimbench.prunable_bn_names(model, (3, 8, 8)) == ["a.1", "b.1"]
    x = torch.randn(2, 3, 8, 8)
    assert_equivalent(model, x, slimbench.plan(model, x, ratio=0.5))
