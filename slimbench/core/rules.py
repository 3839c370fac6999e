"""The registry of channel rules: one rule object per module type, looked up along the MRO.

Analysis (trace leaves, labelling, meta runs), surgery (slice, zero) and ``thop_ext`` (counting)
all ask :func:`rule_for`. Adding a module type is one rule class (see ``rule_base.ChannelRule``)
and one :func:`register_module_rule` call; a user's own conv-like module that keeps its weight as
(out, in / groups, *kernel) can reuse :class:`ConvRule` as it is::

    register_module_rule(MyConv, ConvRule())
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from slimbench.core.module_rules import (
    AlreadyPrunedRule,
    BatchNormRule,
    ConvRule,
    FlattenRule,
    IndexSelectionRule,
    LinearRule,
    MaskedBatchNormRule,
    PointwiseRule,
)
from slimbench.core.modules import ChannelSelection, MaskedBatchNorm
from slimbench.core.rule_base import BNRecord, ChannelRule, ConvRecord, LabelContext, generic_meta

__all__ = ["ChannelRule", "ConvRule", "LinearRule", "BatchNormRule", "PointwiseRule", "FlattenRule",
           "ConvRecord", "BNRecord", "LabelContext", "register_module_rule", "unregister_module_rule",
           "rule_for", "meta_call", "always_leaf"]

_RULES: dict[type, ChannelRule] = {}


def register_module_rule(cls: type, rule: ChannelRule) -> None:
    """Use ``rule`` for modules of type ``cls`` and its subclasses (replacing any earlier rule)."""
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"register_module_rule expects an nn.Module subclass, got {cls!r}")
    if not isinstance(rule, ChannelRule):
        raise TypeError(f"register_module_rule expects a ChannelRule instance for {cls.__name__}, got {rule!r}")
    _RULES[cls] = rule


def unregister_module_rule(cls: type) -> ChannelRule | None:
    """Forget the rule registered for exactly ``cls``; returns it (None if there was none)."""
    return _RULES.pop(cls, None)


def rule_for(module: nn.Module) -> ChannelRule | None:
    """The rule of the nearest class in ``type(module).__mro__`` that has one, else None."""
    for cls in type(module).__mro__:
        rule = _RULES.get(cls)
        if rule is not None:
            return rule
    if IndexSelectionRule.matches(module):  # a user's channel_selection: its forward is probed when labelled
        return _INDEX_SELECTION
    return None


_INDEX_SELECTION = IndexSelectionRule()


def always_leaf(module: nn.Module) -> bool:
    """Is ``module`` a leaf of every trace (its channels read from its rule, whatever its subclass)?"""
    rule = rule_for(module)
    return rule is not None and rule.leaf


def meta_call(module: nn.Module, args: tuple, kwargs: dict) -> Any:
    """Run a leaf module on meta tensors without touching its parameters or state."""
    rule = rule_for(module)
    return rule.meta(module, args, kwargs) if rule is not None else generic_meta(module, args, kwargs)


_POINTWISE_MODULES: dict[type, bool] = {  # does 0 stay 0?
    nn.ReLU: True, nn.ReLU6: True, nn.LeakyReLU: True, nn.ELU: True, nn.SiLU: True,
    nn.Hardswish: True, nn.GELU: True, nn.Mish: True, nn.Tanh: True, nn.Hardtanh: True,
    nn.Identity: True, nn.Dropout: True, nn.Dropout1d: True, nn.Dropout2d: True, nn.Dropout3d: True,
    nn.AlphaDropout: False, nn.MaxPool1d: True, nn.MaxPool2d: True, nn.MaxPool3d: True,
    nn.AvgPool1d: True, nn.AvgPool2d: True, nn.AvgPool3d: True, nn.AdaptiveAvgPool1d: True,
    nn.AdaptiveAvgPool2d: True, nn.AdaptiveAvgPool3d: True, nn.AdaptiveMaxPool1d: True,
    nn.AdaptiveMaxPool2d: True, nn.AdaptiveMaxPool3d: True, nn.Upsample: True,
    nn.UpsamplingNearest2d: True, nn.UpsamplingBilinear2d: True,
    nn.Sigmoid: False, nn.Hardsigmoid: False, nn.Softplus: False,
}

register_module_rule(_ConvNd, ConvRule())
register_module_rule(nn.Linear, LinearRule())
register_module_rule(_BatchNorm, BatchNormRule())
register_module_rule(MaskedBatchNorm, MaskedBatchNormRule())
register_module_rule(ChannelSelection, AlreadyPrunedRule())
register_module_rule(nn.Flatten, FlattenRule())
for _cls, _keeps in _POINTWISE_MODULES.items():
    register_module_rule(_cls, PointwiseRule(_keeps))
