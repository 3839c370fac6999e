"""The one MACs counter: known counts, any input form, the model's modes untouched."""

import torch
from torch import nn

from slimbench.core.counting import conv_linear_macs


def test_counts_conv_and_linear_macs_by_hand():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    expected = 8 * 3 * 9 * 16 + 128 * 10  # conv: out x in x k*k x positions; linear: in x out
    assert conv_linear_macs(model, (3, 4, 4)) == expected
    assert conv_linear_macs(model, torch.randn(2, 3, 4, 4)) == 2 * expected  # batch included
    assert conv_linear_macs(model.double(), (3, 4, 4)) == expected  # a shape follows the model's dtype


def test_leaves_train_and_eval_modes_as_they_were():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Dropout())
    model.train()
    model[2].eval()
    mean = model[1].running_mean.clone()
    conv_linear_macs(model, (3, 4, 4))
    assert model.training and model[1].training and not model[2].training
    assert torch.equal(model[1].running_mean, mean)  # counted in eval mode: BN stats unchanged
