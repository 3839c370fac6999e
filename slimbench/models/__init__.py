"""Model zoo: one registry that resolves a name plus a data set to a builder and an input shape.

- CIFAR families (``cifar10``, ``cifar100``, ``digits``; 3x32x32): ``vgg11/13/16/19``,
  ``resnet20/32/44/56/110`` (shortcut option A, identity + zero pad, by default; ``shortcut="B"``
  for the 1x1-conv projection), ``resnet164`` (pre-activation bottleneck), ``densenet40``.
- ``ilsvrc12`` (3x224x224, 1000 classes): torchvision builders, always with ``weights=None``.

``list_models(dataset=None)`` returns :class:`ModelInfo` records, not bare names.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from slimbench.models import densenet_cifar, preresnet, resnet_cifar, vgg
from slimbench.models.torchvision_zoo import TORCHVISION_NAMES, available_torchvision_names, torchvision_builder
from slimbench.models.weights import extract_state_dict, load_weights
from slimbench.pruning.checkpoint import read_checkpoint

__all__ = ["ModelInfo", "DATASETS", "get_model", "model_info", "list_models"]


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    input_shape: tuple[int, int, int]


DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo("cifar10", 10, (3, 32, 32)),
    "cifar100": DatasetInfo("cifar100", 100, (3, 32, 32)),
    "digits": DatasetInfo("digits", 10, (3, 32, 32)),
    "ilsvrc12": DatasetInfo("ilsvrc12", 1000, (3, 224, 224)),
}
CIFAR_STYLE = ("cifar10", "cifar100", "digits")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    dataset: str
    family: str
    input_shape: tuple[int, int, int]
    num_classes: int
    builder: Callable[..., nn.Module]
    description: str = ""


_CIFAR: dict[str, tuple[str, Callable[..., nn.Module], str]] = {
    **{f"vgg{d}": ("vgg", getattr(vgg, f"vgg{d}"), f"VGG-{d}, network-slimming cfg, BN, no conv bias")
       for d in (11, 13, 16, 19)},
    **{f"resnet{d}": ("resnet", getattr(resnet_cifar, f"resnet{d}"),
                      f"ResNet-{d}, basic blocks, shortcut option {resnet_cifar.DEFAULT_SHORTCUT} "
                      "(identity + zero pad; shortcut='B' for 1x1 conv)")
       for d in (20, 32, 44, 56, 110)},
    "resnet164": ("preresnet", preresnet.resnet164,
                  "ResNet-164, pre-activation bottlenecks (prune with residual='select')"),
    "densenet40": ("densenet", densenet_cifar.densenet40,
                   "DenseNet-40, k=12, no bottleneck, compression 1, 16-ch stem (prune with residual='select')"),
}


def _check_dataset(dataset: str) -> DatasetInfo:
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    return DATASETS[dataset]


def model_info(name: str, dataset: str = "cifar10") -> ModelInfo:
    """Resolve ``name`` on ``dataset`` to its builder, input shape and default class count."""
    data = _check_dataset(dataset)
    if dataset in CIFAR_STYLE:
        if name not in _CIFAR:
            valid = list(_CIFAR)
            hint = difflib.get_close_matches(name, valid, n=1)
            extra = " (ILSVRC12 models need dataset='ilsvrc12')" if name in available_torchvision_names() else ""
            raise ValueError(f"unknown model {name!r} for dataset {dataset!r}{extra}"
                             + (f"; did you mean {hint[0]!r}?" if hint else "")
                             + f" Valid names: {', '.join(valid)}")
        family, builder, description = _CIFAR[name]
    else:
        valid = available_torchvision_names()
        if name not in valid:
            hint = difflib.get_close_matches(name, valid, n=1)
            extra = " (CIFAR models need dataset='cifar10', 'cifar100' or 'digits')" if name in _CIFAR else ""
            raise ValueError(f"unknown model {name!r} for dataset 'ilsvrc12'{extra}"
                             + (f"; did you mean {hint[0]!r}?" if hint else "")
                             + f" Valid names: {', '.join(valid)}")
        family, builder, description = "torchvision", torchvision_builder(name), f"torchvision {name}, weights=None"
    return ModelInfo(name, dataset, family, data.input_shape, data.num_classes, builder, description)


def list_models(dataset: str | None = None) -> list[ModelInfo]:
    """Every registered model as :class:`ModelInfo`, for one data set or all of them.

    For ``ilsvrc12`` this lists the families the pruning literature uses; ``get_model`` accepts any
    torchvision classification name.
    """
    datasets = list(DATASETS) if dataset is None else [_check_dataset(dataset).name]
    out = []
    for ds in datasets:
        names = list(_CIFAR) if ds in CIFAR_STYLE else list(TORCHVISION_NAMES)
        out.extend(model_info(n, ds) for n in names)
    return out


def get_model(name: str, dataset: str = "cifar10", *, num_classes: int | None = None,
              checkpoint: str | os.PathLike | None = None, **kwargs) -> nn.Module:
    """Build ``name`` for ``dataset`` (``num_classes`` defaults to the data set's).

    ``checkpoint``: a local file with a state dict (or ``{"state_dict": ...}``, as ``slimbench train``
    writes); a pruned checkpoint (``slimbench.save_pruned_model``) is rebuilt at its pruned size.
    Extra ``kwargs`` go to the builder (e.g. ``shortcut="B"`` for CIFAR ResNets).
    """
    info = model_info(name, dataset)
    classes = info.num_classes if num_classes is None else int(num_classes)
    if classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes!r}")
    model = info.builder(num_classes=classes, **kwargs)
    if checkpoint is None:
        return model
    data = read_checkpoint(checkpoint)
    if str(data.get("format", "")).startswith("slimbench.pruned"):
        from slimbench.pruning.checkpoint import load_pruned_model

        return load_pruned_model(model, data)
    return load_weights(model, extract_state_dict(data, f"checkpoint {checkpoint}"), f"checkpoint {checkpoint}")
