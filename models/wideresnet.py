"""Wide ResNets (Zagoruyko & Komodakis 2016) in the CIFAR layout of the pytorch-cifar100 zoo.

WRN-d-k: three groups of (d - 4) / 6 pre-activation blocks of two 3x3 convolutions, with
16k/32k/64k channels. As in the reference zoo, convolutions carry biases and a block whose shape
changes gets a 1x1 projection shortcut, which fixes the parameter counts.
"""
import torch.nn as nn
import torch.nn.functional as F

from . import register


class WideBlock(nn.Module):
    def __init__(self, in_channels, out_channels, stride=1, dropout=0.5):
        super().__init__()
        self.residual = nn.Sequential(
            nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, out_channels, 3, stride, 1),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
            # nn.Dropout draws from torch's RNG and is the identity in eval mode.
            nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, 3, 1, 1),
        )
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x):
        return self.residual(x) + self.shortcut(x)


class WideResNet(nn.Module):
    def __init__(self, depth, widen_factor, num_classes=10, dropout=0.5):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"Wide ResNet depth must be 6n+4 with n >= 1, got {depth}")
        if widen_factor < 1:
            raise ValueError(f"Wide ResNet widen factor must be >= 1, got {widen_factor}")
        n = (depth - 4) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1)
        groups, in_channels = [], 16
        for base, stride in ((16, 1), (32, 2), (64, 2)):
            out_channels = base * widen_factor
            blocks = []
            for i in range(n):
                blocks.append(
                    WideBlock(in_channels, out_channels, stride if i == 0 else 1, dropout))
                in_channels = out_channels
            groups.append(nn.Sequential(*blocks))
        self.groups = nn.Sequential(*groups)
        # Blocks are pre-activation, so the last block's output still needs its BN-ReLU (the
        # reference zoo applies only the BN; the ReLU of the paper adds no parameters).
        self.bn = nn.BatchNorm2d(in_channels)
        self.linear = nn.Linear(in_channels, num_classes)

    def forward(self, x):
        out = F.relu(self.bn(self.groups(self.conv1(x))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


def wide_resnet(depth, widen_factor, num_classes=10, dropout=0.5):
    """WRN-``depth``-``widen_factor``.

    ``depth`` must be 6n + 4 for a whole number n >= 1, i.e. 10, 16, 22, 28, 34, 40, ...; each of
    the three groups then holds n blocks of two 3x3 convolutions (the paper's convention).
    ``widen_factor`` is any positive integer. ``dropout`` is the rate between the two
    convolutions of each block (0.5 in the reference zoo; 0 turns it off).
    """
    return WideResNet(depth, widen_factor, num_classes, dropout)


# "wideresnet" is the reference zoo's WRN-40-10
@register
def wideresnet(num_classes=10):
    return wide_resnet(40, 10, num_classes)


@register
def wrn16_4(num_classes=10):
    return wide_resnet(16, 4, num_classes)


@register
def wrn28_10(num_classes=10):
    return wide_resnet(28, 10, num_classes)
