"""VGG for CIFAR in the network-slimming configuration: 3x3 conv (no bias) -> BN -> ReLU, max-pool
between stages, then global average pooling and one linear classifier.

The official code pools with ``AvgPool2d(2)`` on the final 2x2 map; ``AdaptiveAvgPool2d(1)`` gives
the same result at 32x32 and also accepts other input sizes (e.g. 16x16 digits).
"""

from __future__ import annotations

from torch import Tensor, nn

from slimbench.models.init import init_slimming

__all__ = ["VGG", "VGG_CONFIGS", "vgg11", "vgg13", "vgg16", "vgg19"]

# "M" is a 2x2 max-pool; numbers are conv output channels (network slimming's defaultcfg).
VGG_CONFIGS: dict[int, list[int | str]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512],
}


class VGG(nn.Module):
    def __init__(self, cfg: list[int | str], num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            layers += [nn.Conv2d(channels, int(item), 3, padding=1, bias=False),
                       nn.BatchNorm2d(int(item)), nn.ReLU(inplace=True)]
            channels = int(item)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        init_slimming(self, linear_std=0.01)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.features(x))
        return self.classifier(x.flatten(1))


def vgg11(num_classes: int = 10) -> VGG:
    return VGG(VGG_CONFIGS[11], num_classes)


def vgg13(num_classes: int = 10) -> VGG:
    return VGG(VGG_CONFIGS[13], num_classes)


def vgg16(num_classes: int = 10) -> VGG:
    return VGG(VGG_CONFIGS[16], num_classes)


def vgg19(num_classes: int = 10) -> VGG:
    return VGG(VGG_CONFIGS[19], num_classes)
