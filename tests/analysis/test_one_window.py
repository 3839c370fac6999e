"""A feature map that fills exactly one attention window (halo / window attention at the last stage).

The window split leaves dim 1 of size 1; an opaque op there (matmul) labels it with one fresh
channel, and folding the windows back spreads that one code over every channel. The BN that reads
it must see one code per channel (frozen with the matmul's reason), never a one-channel label.
"""

from __future__ import annotations

import torch
from torch import nn

import slimbench
from slimbench.core.labels import Chan, collapse

from helpers import assert_equivalent, randomize_bn


class OneWindowAttention(nn.Module):
    """conv-BN, then attention over windows of ``window`` pixels (one window at this input size), BN."""

    def __init__(self, window: int = 4) -> None:
        super().__init__()
        self.window = window
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.post = nn.BatchNorm2d(8)
        self.head = nn.Sequential(nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.stem(x)
        b, c, h, w = x.shape
        nh, nw = h // self.window, w // self.window
        # (b, c, nh, win, nw, win) -> (b * c, nh * nw, win * win): dim 1 counts windows, here 1
        win = x.reshape(b, c, nh, self.window, nw, self.window).permute(0, 1, 2, 4, 3, 5)
        win = win.reshape(b * c, nh * nw, self.window * self.window)
        attn = (win.transpose(-1, -2) @ win).softmax(-1)
        out = win @ attn
        out = out.reshape(b, c, nh, nw, self.window, self.window).permute(0, 1, 2, 4, 3, 5).reshape(b, c, h, w)
        y = torch.relu(self.post(out))
        return self.fc(self.head(y).mean((2, 3)))


X = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(0))


def test_collapse_keeps_every_channel_when_they_carry_one_code():
    codes = torch.full((1, 8, 4, 4), 6)
    label = collapse(codes)
    assert isinstance(label, Chan) and label.codes.tolist() == [6] * 8


def test_one_window_attention_freezes_the_bn_after_it_and_prunes_the_rest():
    model = randomize_bn(OneWindowAttention(), seed=3)
    rows = {r["bn"]: r for r in slimbench.explain(model, X)}
    assert rows["post"]["status"] != "prunable" and "matmul" in rows["post"]["reason"]
    plan = slimbench.plan(model, X, ratio=0.5)
    assert plan.masks["head.1"].sum() < 16
    assert_equivalent(model.double(), X.double(), plan)
