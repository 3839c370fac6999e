"""Sparse training and fine-tuning loops (single process and torchrun DDP: ``python -m slimbench.training``)."""

from slimbench.training.loop import evaluate, finetune, recalibrate_bn, train

__all__ = ["evaluate", "finetune", "recalibrate_bn", "train"]
