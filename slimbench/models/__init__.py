"""Model zoo: one registry that resolves a name plus a data set to a builder and an input shape.

- CIFAR families (``cifar10``, ``cifar100``, ``digits``; 3x32x32): ``vgg11/13/16/19``,
  ``resnet20/32/44/56/110`` (shortcut option A, identity + zero pad, by default; ``shortcut="B"``
  for the 1x1-conv projection), ``resnet164`` (pre-activation bottleneck), ``densenet40``.
- ``ilsvrc12`` (3x224x224, 1000 classes): torchvision builders, always with ``weights=None``.

``list_models(dataset=None)`` returns :class:`ModelInfo` records, not bare names. A record carries
what the rest of the project needs to know about a model (residual style, default sparsity, the
paper's numbers), so no other module keys behaviour on family strings.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from slimbench.data import DATASET_SPECS, DatasetSpec
from slimbench.models import densenet_cifar, preresnet, resnet_cifar, vgg
from slimbench.models.torchvision_zoo import TORCHVISION_NAMES, available_torchvision_names, torchvision_builder
from slimbench.models.weights import extract_state_dict, load_weights
from slimbench.pruning.checkpoint import read_checkpoint

__all__ = ["ModelInfo", "PaperResult", "RESIDUAL_STYLES", "DATASETS", "get_model", "load_checkpoint", "model_info",
           "list_models"]


DATASETS = DATASET_SPECS  # the one data-set registry lives beside the loaders (slimbench.data)
CIFAR_STYLE = ("cifar10", "cifar100", "digits")


# How a model's residual sums / concats are read, which decides the residual variants worth running:
# "post-activation" (ResNet: conv-BN-add-ReLU) can drop whole residual branches (branch removal);
# "pre-activation" (PreResNet, DenseNet: a BN reads the sum / concat) prunes through channel selection.
RESIDUAL_STYLES = ("none", "post-activation", "pre-activation")


@dataclass(frozen=True)
class PaperResult:
    """One row of a paper's table: pruned fraction of channels (0 = baseline), params, FLOPs, error %."""

    ratio: float
    params: float
    flops: float
    error: float
    dataset: str = "cifar10"
    source: str = "NS, Table 1"


# Network Slimming (Liu et al., ICCV 2017), Table 1, CIFAR-10 ("FLOPs" there ~ 2 x MACs).
_NS_TABLE1: dict[str, tuple[PaperResult, ...]] = {
    "vgg19": (PaperResult(0.0, 20.04e6, 7.97e8, 6.34), PaperResult(0.7, 2.30e6, 3.91e8, 6.20)),
    "densenet40": (PaperResult(0.0, 1.02e6, 5.33e8, 6.11), PaperResult(0.4, 0.66e6, 3.81e8, 5.19),
                   PaperResult(0.7, 0.35e6, 2.40e8, 5.65)),
    "resnet164": (PaperResult(0.0, 1.70e6, 4.99e8, 5.42), PaperResult(0.4, 1.44e6, 3.81e8, 5.08),
                  PaperResult(0.6, 1.10e6, 2.75e8, 5.27)),
}


@dataclass(frozen=True)
class ModelInfo:
    name: str
    dataset: str
    family: str
    input_shape: tuple[int, int, int]
    num_classes: int
    builder: Callable[..., nn.Module]
    description: str = ""
    residual: str = "none"  # one of RESIDUAL_STYLES
    default_sparsity: float = 1e-5  # network slimming's s (1e-4 for VGG on CIFAR, 1e-5 otherwise)
    paper: tuple[PaperResult, ...] = ()

    def paper_result(self, ratio: float) -> PaperResult | None:
        """The paper's row at this pruned fraction (rounded to 0.01), or None."""
        return next((p for p in self.paper if round(p.ratio, 2) == round(float(ratio), 2)), None)


# name: (family, builder, description, residual style, default sparsity)
_CIFAR: dict[str, tuple[str, Callable[..., nn.Module], str, str, float]] = {
    **{f"vgg{d}": ("vgg", getattr(vgg, f"vgg{d}"), f"VGG-{d}, network-slimming cfg, BN, no conv bias", "none", 1e-4)
       for d in (11, 13, 16, 19)},
    **{f"resnet{d}": ("resnet", getattr(resnet_cifar, f"resnet{d}"),
                      f"ResNet-{d}, basic blocks, shortcut option {resnet_cifar.DEFAULT_SHORTCUT} "
                      "(identity + zero pad; shortcut='B' for 1x1 conv)", "post-activation", 1e-5)
       for d in (20, 32, 44, 56, 110)},
    "resnet164": ("preresnet", preresnet.resnet164,
                  "ResNet-164, pre-activation bottlenecks (prune with residual='select')", "pre-activation", 1e-5),
    "densenet40": ("densenet", densenet_cifar.densenet40,
                   "DenseNet-40, k=12, no bottleneck, compression 1, 16-ch stem (prune with residual='select')",
                   "pre-activation", 1e-5),
}
# torchvision families by name prefix: ResNet-style blocks add then ReLU; DenseNet layers start with a BN.
_TORCHVISION_RESIDUAL = (("resnet", "post-activation"), ("resnext", "post-activation"),
                         ("wide_resnet", "post-activation"), ("densenet", "pre-activation"))


def _torchvision_residual(name: str) -> str:
    return next((style for prefix, style in _TORCHVISION_RESIDUAL if name.startswith(prefix)), "none")


def _check_dataset(dataset: str) -> DatasetSpec:
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
        family, builder, description, residual, sparsity = _CIFAR[name]
        paper = _NS_TABLE1.get(name, ())
    else:
        valid = available_torchvision_names()
        if name not in valid:
            hint = difflib.get_close_matches(name, valid, n=1)
            extra = " (CIFAR models need dataset='cifar10', 'cifar100' or 'digits')" if name in _CIFAR else ""
            raise ValueError(f"unknown model {name!r} for dataset 'ilsvrc12'{extra}"
                             + (f"; did you mean {hint[0]!r}?" if hint else "")
                             + f" Valid names: {', '.join(valid)}")
        family, builder, description = "torchvision", torchvision_builder(name), f"torchvision {name}, weights=None"
        residual, sparsity, paper = _torchvision_residual(name), 1e-5, ()
    return ModelInfo(name, dataset, family, data.input_shape, data.num_classes, builder, description,
                     residual, sparsity, paper)


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
    return model if checkpoint is None else load_checkpoint(model, checkpoint)


def load_checkpoint(model: nn.Module, checkpoint: str | os.PathLike) -> nn.Module:
    """``model`` with the weights of ``checkpoint`` (a state dict, a ``slimbench train`` checkpoint),
    or rebuilt at its pruned size from a pruned checkpoint (``slimbench.save_pruned_model``)."""
    data = read_checkpoint(checkpoint)
    if str(data.get("format", "")).startswith("slimbench.pruned"):
        from slimbench.pruning.checkpoint import load_pruned_model

        return load_pruned_model(model, data)
    return load_weights(model, extract_state_dict(data, f"checkpoint {checkpoint}"), f"checkpoint {checkpoint}")
