"""End to end on real data (scikit-learn's digits): sparse-train -> prune 50 % -> fine-tune.

Digits are 8x8 images, trained here at 16x16 (upsampling further adds compute, not information).
The models end in global average pooling, so MACs are also counted at 32x32 for the
CIFAR-comparable figure. Run with ``-s`` to see the measured numbers.
"""

from __future__ import annotations

import time

import pytest
import torch

import slimbench
from slimbench.data import digits_loaders
from slimbench.models import get_model
from slimbench.models.vgg import VGG
from slimbench.training.loop import evaluate, finetune, train

from helpers import conv_linear_macs

SIZE = 16
SPARSE_EPOCHS, FINETUNE_EPOCHS, S = 6, 3, 1e-4
# VGG-11's layout at half width: the full-width net costs 4x more and learns digits no better
HALF_VGG11 = [32, "M", 64, "M", 128, 128, "M", 256, 256, "M", 256, 256]

BUILDERS = {
    "resnet20": lambda: get_model("resnet20", "digits"),
    "vgg11_half": lambda: VGG(HALF_VGG11, num_classes=10),
}


@pytest.fixture(scope="module")
def digits():
    return digits_loaders(input_size=SIZE, batch_size=64, seed=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BUILDERS))
def test_sparse_train_prune_finetune_keeps_accuracy(name, digits):
    train_loader, test_loader = digits
    torch.manual_seed(0)
    model = BUILDERS[name]()
    began = time.perf_counter()
    train(model, train_loader, epochs=SPARSE_EPOCHS, sparsity=S, progress=False, seed=0)
    train_s = time.perf_counter() - began
    base_acc = evaluate(model, test_loader)["top1"]

    began = time.perf_counter()
    pruned = slimbench.prune(model, (3, SIZE, SIZE), method="network_slimming", ratio=0.5)
    prune_s = time.perf_counter() - began
    pruned_acc = evaluate(pruned, test_loader)["top1"]

    began = time.perf_counter()
    finetune(pruned, train_loader, epochs=FINETUNE_EPOCHS, progress=False, seed=0)
    finetune_s = time.perf_counter() - began
    final_acc = evaluate(pruned, test_loader)["top1"]

    macs = {size: (conv_linear_macs(model, torch.zeros(1, 3, size, size)),
                   conv_linear_macs(pruned, torch.zeros(1, 3, size, size))) for size in (SIZE, 32)}
    print(f"\n[e2e digits] {name}: acc sparse-trained {base_acc:.4f}, pruned {pruned_acc:.4f}, "
          f"fine-tuned {final_acc:.4f} ({final_acc / base_acc:.3f} of unpruned); MACs@16 "
          f"{macs[16][0]:,} -> {macs[16][1]:,}, MACs@32 {macs[32][0]:,} -> {macs[32][1]:,} "
          f"({1 - macs[32][1] / macs[32][0]:.1%} fewer); params {sum(p.numel() for p in model.parameters()):,} -> "
          f"{sum(p.numel() for p in pruned.parameters()):,}; times train {train_s:.1f}s prune {prune_s:.2f}s "
          f"finetune {finetune_s:.1f}s")
    assert base_acc >= 0.85, "sparse training did not learn digits; the comparison below would be empty"
    assert final_acc >= 0.9 * base_acc
    for size, (before, after) in macs.items():
        assert after <= 0.7 * before, f"MACs at {size}x{size}: {after} vs {before}"
