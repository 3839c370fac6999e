"""Network slimming's initialisation: He-normal convs, BatchNorm gamma 0.5 and beta 0."""

from __future__ import annotations

from torch import nn


def init_slimming(model: nn.Module, *, linear_std: float | None = None) -> None:
    """gamma starts at 0.5 (not 1) as in the official code, so the L1 term has room to separate
    channels; ``linear_std``: normal init of linear layers (VGG uses 0.01), else torch's default."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 0.5)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, 0, linear_std)
            nn.init.zeros_(m.bias)
