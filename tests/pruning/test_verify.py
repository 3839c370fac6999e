"""prune checks its own result against the zeroed model and never returns one that fails."""

import json

import pytest
import torch

import slimbench
from slimbench.core.errors import SlimbenchError

from helpers import randomize_bn
from nets import PostActResidual
from user_nets import RolledChannels, roll_taken_for_pointwise

X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


@pytest.fixture(autouse=True)
def lying_roll():
    with roll_taken_for_pointwise():
        yield


def Rolled():  # noqa: N802 - a model factory
    return RolledChannels()


def RolledOnly():  # noqa: N802
    return RolledChannels(only_broken=True)


def rel_err(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        ref, out = b.eval()(x), a.eval()(x)
    return ((out - ref).abs().max() / ref.abs().max()).item()


def test_clean_model_is_checked_in_float64_and_nothing_frozen():
    model = randomize_bn(PostActResidual(), seed=1)
    pruned = slimbench.prune(model, X, ratio=0.5)
    record = pruned.slimbench_plan.options["verification"]
    assert record["checked"] == "float64" and record["frozen"] == []
    assert record["max_rel_err"] <= 1e-9
    assert next(pruned.parameters()).dtype == torch.float32  # cast back after the float64 check


@pytest.mark.parametrize("net", [Rolled])
def test_unverified_pruning_of_these_models_is_wrong(net):
    model = randomize_bn(net(), seed=1)
    plan = slimbench.plan(model, X, ratio=0.5)
    pruned = slimbench.prune(model, X, plan=plan, verify=False)
    assert rel_err(pruned, slimbench.zero_bn_channels(model, plan), X) > 1e-4


@pytest.mark.parametrize("net", [Rolled])
def test_verification_freezes_the_offending_bn_and_keeps_the_rest(net):
    model = randomize_bn(net(), seed=1)
    plan = slimbench.plan(model, X, ratio=0.5)
    masks_before = {k: v.clone() for k, v in plan.masks.items()}
    with pytest.warns(UserWarning, match="kept all channels of bn "):
        pruned = slimbench.prune(model, X, plan=plan)
    used = pruned.slimbench_plan
    frozen = used.options["verification"]["frozen"]
    assert [f["bns"] for f in frozen] == [["bn"]] and frozen[0]["reason"]
    assert "bn" not in used.masks or bool(used.masks["bn"].all())
    assert not bool(used.masks["bn2"].all())  # the provable part is still pruned
    assert pruned.bn2.num_features < 8
    assert rel_err(pruned, slimbench.zero_bn_channels(model, used), X) <= 1e-5
    assert {k: v.tolist() for k, v in plan.masks.items()} == {k: v.tolist() for k, v in masks_before.items()}
    json.loads(used.to_json())  # the record travels with the plan


def test_explain_shows_what_verification_froze():
    model = randomize_bn(Rolled(), seed=1)
    with pytest.warns(UserWarning):
        pruned = slimbench.prune(model, X, ratio=0.5)
    rows = {r["bn"]: r for r in slimbench.explain(model, X, plan=pruned.slimbench_plan)}
    assert rows["bn"]["status"] == "frozen by verification"
    assert "differ from the zeroed model" in rows["bn"]["reason"]


def test_nothing_kept_is_a_clear_error():
    model = randomize_bn(RolledOnly(), seed=1)
    with pytest.raises(SlimbenchError, match="nothing of this plan can be kept.*bn"):
        slimbench.prune(model, X, ratio=0.5)


def test_fold_beta_result_is_built_from_the_verified_plan():
    model = randomize_bn(Rolled(), seed=1)
    with pytest.warns(UserWarning):
        pruned = slimbench.prune(model, X, ratio=0.5, fold_beta=True)
    assert pruned.bn.num_features == 8 and pruned.bn2.num_features < 8
    pruned.eval()(X)


def test_verification_without_example_inputs_uses_the_plan_shapes():
    model = randomize_bn(Rolled(), seed=1)
    plan = slimbench.plan(model, X, ratio=0.5)
    with pytest.warns(UserWarning, match="kept all channels of bn "):
        pruned = slimbench.prune(model, plan=plan)
    assert pruned.bn.num_features == 8


def test_after_freezing_prune_plans_again_so_the_others_are_pruned_as_asked():
    model = randomize_bn(Rolled(), seed=1)
    first = slimbench.plan(model, X, ratio=0.5)  # what prune plans first: 8 of the 16 channels
    assert first.pruned_channels == 8 and not first.masks["bn"].all()
    with pytest.warns(UserWarning, match="made again without them"):
        pruned = slimbench.prune(model, X, ratio=0.5)
    used = pruned.slimbench_plan
    record = used.options["verification"]
    assert [f["bns"] for f in record["frozen"]] == [["bn"]] and record["replanned"]["ignored_layers"] == ["bn"]
    assert used.options["ignored_layers"] == ["bn"]
    # bn2 alone now gives up as many channels as it can (7 of 8; every layer keeps one), not its first share
    assert int((~first.masks["bn2"]).sum()) < 7 == used.pruned_channels
    assert pruned.bn.num_features == 8 and pruned.bn2.num_features == 1
    assert rel_err(pruned, slimbench.zero_bn_channels(model, used), X) <= 1e-5


def test_target_macs_is_met_by_the_other_groups_after_freezing():
    model = randomize_bn(Rolled(), seed=1)
    with pytest.warns(UserWarning, match="made again without them"):
        pruned = slimbench.prune(model, X, target_macs=0.7)
    used = pruned.slimbench_plan
    assert used.macs_after <= 0.7 * used.macs_before and pruned.bn.num_features == 8


def test_verification_never_runs_the_callers_model():
    """The zeroed reference runs on a shell of the module tree: the caller's hooks see no call and
    attribute writes in forward land on the shell."""
    from nets import PostActResidual

    model = randomize_bn(PostActResidual(), seed=3).eval()
    calls = []

    def real(inputs) -> bool:  # fx tracing calls hooks too, with proxies / meta tensors: not a run
        return isinstance(inputs[0], torch.Tensor) and inputs[0].device.type != "meta"

    model.register_forward_hook(lambda m, i, o: calls.append(1) if real(i) else None)
    for module in model.modules():
        module.register_forward_pre_hook(lambda m, i: calls.append(2) if real(i) else None)
    pruned = slimbench.prune(model, (3, 16, 16), ratio=0.5)
    assert calls == []
    pruned(torch.randn(1, 3, 16, 16))  # the pruned copy keeps the hooks for the user's own runs
    assert calls
