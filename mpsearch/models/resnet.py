"""CIFAR-style residual CNNs for small images: ResNet-20 (the default model) and ResNet-18."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (1x1 conv shortcut when the shape changes)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """A 3x3 stem, one stage of ``blocks_per_stage`` basic blocks per width (stride 2 entering every
    stage after the first), global average pooling and a linear head. Stages are ``layer1``,
    ``layer2``, ...; three stages of 3 blocks make ResNet-20, four of 2 make ResNet-18."""

    def __init__(
        self,
        blocks_per_stage: int = 3,
        widths: tuple[int, ...] = (16, 32, 64),
        in_channels: int = 1,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages = []
        in_ch = widths[0]
        for i, width in enumerate(widths):
            blocks = []
            for j in range(blocks_per_stage):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(in_ch, width, stride))
                in_ch = width
            stages.append(nn.Sequential(*blocks))
        self.stages = len(stages)
        for i, stage in enumerate(stages):
            self.add_module(f"layer{i + 1}", stage)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        for i in range(self.stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(torch.flatten(self.pool(x), 1))


def resnet20(in_channels: int = 1, num_classes: int = 10) -> ResNet:
    """ResNet-20: 19 convolutions (+2 shortcut convolutions) and one linear layer."""
    return ResNet(3, (16, 32, 64), in_channels, num_classes)


def resnet18(in_channels: int = 3, num_classes: int = 10) -> ResNet:
    """ResNet-18 for 32x32 images: 17 convolutions (+3 shortcut convolutions), one linear layer,
    11.2 M parameters, 0.56 G multiply-accumulates per image."""
    return ResNet(2, (64, 128, 256, 512), in_channels, num_classes)
