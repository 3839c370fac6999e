"""Sparse training and fine-tuning loops (single process and torchrun DDP: ``python -m slimbench.training``)."""

from slimbench.training.loop import evaluate, finetune, train

__all__ = ["evaluate", "finetune", "train"]
