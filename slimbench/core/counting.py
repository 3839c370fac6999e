"""The one conv + linear MACs counter: torch's own ``FlopCounterMode`` (FLOPs / 2).

The convention of the whole project (plans' ``macs_before``/``macs_after``, the report's MACs
column without thop_ext, the suites' baselines): multiply-accumulates of conv, linear and matmul-like
ops, bias and elementwise ops excluded, for the given inputs (batch included). ``thop_ext.profile``
counts the rest (FLOPs, live params).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from slimbench.core.inputs import ExampleInputs, as_example_inputs

__all__ = ["conv_linear_macs"]


def conv_linear_macs(model: nn.Module, example_inputs: ExampleInputs) -> int:
    """Conv + linear MACs of one eval-mode forward on ``example_inputs`` (a tensor, tuple of tensors or
    a shape without batch such as (3, 32, 32)). The model's train/eval modes are left as they were."""
    inputs = as_example_inputs(example_inputs, like=next(model.parameters(), None))
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(*inputs)
    finally:
        for module, training in modes.items():
            module.training = training
    return int(counter.get_total_flops()) // 2
