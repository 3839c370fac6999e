"""ILSVRC12 models: torchvision builders by name, always with ``weights=None`` (no download)."""

from __future__ import annotations

from collections.abc import Callable

import torchvision.models as tvm
from torch import nn

__all__ = ["TORCHVISION_NAMES", "torchvision_builder"]

# The CNN families the pruning literature reports on ILSVRC12; any other classification builder
# torchvision exposes can still be reached through get_model(..., dataset="ilsvrc12").
TORCHVISION_NAMES: tuple[str, ...] = (
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn",
    "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
    "densenet121", "densenet169", "densenet201",
    "resnext50_32x4d", "wide_resnet50_2", "regnet_y_400mf", "efficientnet_b0",
)


def torchvision_builder(name: str) -> Callable[..., nn.Module]:
    """A builder ``f(num_classes=1000, **kwargs)`` for torchvision's ``name`` that never downloads."""
    fn = tvm.get_model_builder(name)

    def build(num_classes: int = 1000, **kwargs) -> nn.Module:
        if kwargs.get("weights") is not None:
            raise ValueError(
                f"{name}: pretrained weights are never downloaded here; pass checkpoint=PATH to "
                "slimbench.models.get_model to load local weights instead")
        kwargs.pop("weights", None)
        return fn(weights=None, num_classes=num_classes, **kwargs)

    build.__name__ = name
    return build


def available_torchvision_names() -> list[str]:
    """Every classification model name torchvision registers."""
    return sorted(tvm.list_models(module=tvm))
