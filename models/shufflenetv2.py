"""ShuffleNet V2 1x (Ma et al. 2018) as configured in the pytorch-cifar100 zoo.

CIFAR changes: a stride-1 3x3 stem (conv + BN, no ReLU, no max-pooling). As in that zoo, every
convolution keeps its bias, which the parameter count depends on.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import register
from ._layers import channel_shuffle


def _depthwise_then_pointwise(in_channels, out_channels, stride):
    # the depthwise conv has no ReLU after it (paper, Fig. 3)
    return [
        nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels),
        nn.BatchNorm2d(in_channels),
        nn.Conv2d(in_channels, out_channels, 1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class ShuffleUnit(nn.Module):
    """Basic unit: split channels in half, transform one half, concat, shuffle.

    A downsampling unit (or one that changes width) feeds the whole input to both branches, each
    producing half of the output channels.
    """

    def __init__(self, in_channels, out_channels, stride):
        super().__init__()
        self.split = stride == 1 and in_channels == out_channels
        branch_channels = in_channels // 2 if self.split else in_channels
        half = out_channels // 2
        self.residual = nn.Sequential(
            nn.Conv2d(branch_channels, branch_channels, 1),
            nn.BatchNorm2d(branch_channels),
            nn.ReLU(inplace=True),
            *_depthwise_then_pointwise(branch_channels, half, stride),
        )
        if self.split:
            self.shortcut = nn.Identity()
        else:
            self.shortcut = nn.Sequential(*_depthwise_then_pointwise(in_channels, half, stride))

    def forward(self, x):
        if self.split:
            short, res = x.chunk(2, dim=1)
        else:
            short, res = x, x
        out = torch.cat([self.shortcut(short), self.residual(res)], 1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, widths, blocks, head, num_classes=10, stem=24):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, stem, 3, padding=1), nn.BatchNorm2d(stem))
        stages, in_channels = [], stem
        for out_channels, n in zip(widths, blocks):
            units = []
            for i in range(n):
                units.append(ShuffleUnit(in_channels, out_channels, 2 if i == 0 else 1))
                in_channels = out_channels
            stages.append(nn.Sequential(*units))
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(
            nn.Conv2d(in_channels, head, 1), nn.BatchNorm2d(head), nn.ReLU(inplace=True))
        self.fc = nn.Linear(head, num_classes)

    def forward(self, x):
        out = self.head(self.stages(self.stem(x)))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


# the 1x width of the paper's Table 5; units per stage 4, 8, 4
@register
def shufflenetv2(num_classes=10):
    return ShuffleNetV2(widths=(116, 232, 464), blocks=(4, 8, 4), head=1024,
                        num_classes=num_classes)
