"""Xception of Chollet 2017, in the CIFAR form of the pytorch-cifar100 zoo.

Entry flow without the ImageNet stride-2 stem (two padded 3x3 convs), and its third block keeps
the resolution (728 channels at 8x8); middle flow of 8 identity-shortcut blocks; exit flow as in
the paper. Separable convs carry no bias; the 1x1 projection shortcuts do.
"""
import torch.nn as nn
import torch.nn.functional as F

from . import register


class SeparableConv2d(nn.Sequential):
    """Depthwise 3x3 then pointwise 1x1."""

    def __init__(self, in_channels, out_channels):
        super().__init__(
            nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
        )


class ProjectionBlock(nn.Module):
    """[ReLU]-Sep-BN-ReLU-Sep-BN-MaxPool, plus a strided 1x1 conv+BN shortcut."""

    def __init__(self, in_channels, mid_channels, out_channels, stride, pre_relu=True):
        super().__init__()
        # not in-place: the shortcut must still see the block's un-rectified input
        self.residual = nn.Sequential(
            nn.ReLU() if pre_relu else nn.Identity(),
            SeparableConv2d(in_channels, mid_channels),
            nn.BatchNorm2d(mid_channels),
            nn.ReLU(inplace=True),
            SeparableConv2d(mid_channels, out_channels),
            nn.BatchNorm2d(out_channels),
            nn.MaxPool2d(3, stride=stride, padding=1),
        )
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride=stride),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x):
        return self.residual(x) + self.shortcut(x)


class MiddleBlock(nn.Module):
    """Three ReLU-Sep-BN units at constant width with an identity shortcut."""

    def __init__(self, channels=728):
        super().__init__()
        units = []
        for _ in range(3):
            units += [nn.ReLU(), SeparableConv2d(channels, channels), nn.BatchNorm2d(channels)]
        self.residual = nn.Sequential(*units)

    def forward(self, x):
        return self.residual(x) + x


class Xception(nn.Module):
    def __init__(self, num_classes=10, middle_blocks=8):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
        )
        self.entry = nn.Sequential(
            ProjectionBlock(64, 128, 128, stride=2, pre_relu=False),  # stem already ends in ReLU
            ProjectionBlock(128, 256, 256, stride=2),
            ProjectionBlock(256, 728, 728, stride=1),
        )
        self.middle = nn.Sequential(*[MiddleBlock(728) for _ in range(middle_blocks)])
        self.exit = nn.Sequential(
            ProjectionBlock(728, 728, 1024, stride=2),
            SeparableConv2d(1024, 1536),
            nn.BatchNorm2d(1536),
            nn.ReLU(inplace=True),
            SeparableConv2d(1536, 2048),
            nn.BatchNorm2d(2048),
            nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x):
        out = self.exit(self.middle(self.entry(self.stem(x))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


@register
def xception(num_classes=10):
    return Xception(num_classes)
