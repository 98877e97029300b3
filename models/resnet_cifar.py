"""CIFAR ResNets of He et al. 2016 (section 4.2): 6n+2 layers, 16/32/64 channels, option-A shortcuts.

Option A: when a block halves the resolution and doubles the width, the shortcut subsamples by 2
and pads the new channels with zeros, so shortcuts carry no parameters.
"""
import torch.nn as nn
import torch.nn.functional as F

from . import register


class _PadShortcut(nn.Module):
    def __init__(self, extra_channels):
        super().__init__()
        self.pad = extra_channels // 2

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    def __init__(self, in_channels, out_channels, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut = _PadShortcut(out_channels - in_channels)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth, num_classes=10):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, in_channels = [], 16
        for out_channels, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(in_channels, out_channels, stride if i == 0 else 1))
                in_channels = out_channels
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            # Kaiming-normal init as in the authors' resnet.py
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


@register
def resnet8(num_classes=10):
    return CifarResNet(8, num_classes)


@register
def resnet20(num_classes=10):
    return CifarResNet(20, num_classes)


@register
def resnet32(num_classes=10):
    return CifarResNet(32, num_classes)


@register
def resnet44(num_classes=10):
    return CifarResNet(44, num_classes)


@register
def resnet56(num_classes=10):
    return CifarResNet(56, num_classes)


@register
def resnet110(num_classes=10):
    return CifarResNet(110, num_classes)


@register
def resnet1202(num_classes=10):
    return CifarResNet(1202, num_classes)
