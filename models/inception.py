"""Inception-v3, Inception-v4 and Inception-ResNet-v2, in the CIFAR forms of the pytorch-cifar100 zoo.

Szegedy et al., "Rethinking the Inception Architecture" (2016) and "Inception-v4,
Inception-ResNet and the Impact of Residual Connections on Learning" (2017). For 32x32 inputs
the stems lose their stride-2 layers, so the grids are 30 -> 14 -> 6 (v3, Inception-ResNet-v2)
or 30 -> 14 -> 7 (v4) rather than 35 -> 17 -> 8. Every block is a set of parallel branches
whose outputs are concatenated; the channel widths are the zoo's, including its deviations
from the papers (noted where they change the parameter count).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import register


class ConvBN(nn.Sequential):
    """Bias-free conv, BatchNorm, ReLU. Padding defaults to k//2 per axis (size-preserving
    at stride 1, also for the factorised 1xn / nx1 kernels)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=None):
        if padding is None:
            k = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
            padding = (k[0] // 2, k[1] // 2)
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class Concat(nn.Module):
    """Runs every branch on the same input and concatenates the outputs along channels."""

    def __init__(self, *branches):
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x):
        return torch.cat([branch(x) for branch in self.branches], 1)


def _avgpool_then(in_channels, out_channels, kernel_size=1):
    return nn.Sequential(nn.AvgPool2d(3, stride=1, padding=1),
                         ConvBN(in_channels, out_channels, kernel_size))


def _split(in_channels, out_channels):
    """The 1x3 | 3x1 pair that the coarsest-grid blocks apply side by side to one trunk."""
    return Concat(ConvBN(in_channels, out_channels, (1, 3)),
                  ConvBN(in_channels, out_channels, (3, 1)))


# ---- Inception-v3 blocks (names follow the zoo's InceptionA..E) ----

def v3_block_a(c, pool_features):
    """-> 224 + pool_features channels. The zoo's pool branch uses a 3x3 conv (the paper a 1x1)."""
    return Concat(
        ConvBN(c, 64, 1),
        nn.Sequential(ConvBN(c, 48, 1), ConvBN(48, 64, 5)),
        nn.Sequential(ConvBN(c, 64, 1), ConvBN(64, 96, 3), ConvBN(96, 96, 3)),
        _avgpool_then(c, pool_features, 3),
    )


def v3_reduction_b(c):
    """Halves the grid (no padding): -> c + 480 channels."""
    return Concat(
        ConvBN(c, 384, 3, stride=2, padding=0),
        nn.Sequential(ConvBN(c, 64, 1), ConvBN(64, 96, 3), ConvBN(96, 96, 3, stride=2, padding=0)),
        nn.MaxPool2d(3, stride=2),
    )


def v3_block_c(c, c7):
    """7x7 convs factorised into 7x1 and 1x7, with a c7-wide bottleneck: -> 768 channels."""
    return Concat(
        ConvBN(c, 192, 1),
        nn.Sequential(ConvBN(c, c7, 1), ConvBN(c7, c7, (7, 1)), ConvBN(c7, 192, (1, 7))),
        nn.Sequential(ConvBN(c, c7, 1), ConvBN(c7, c7, (7, 1)), ConvBN(c7, c7, (1, 7)),
                      ConvBN(c7, c7, (7, 1)), ConvBN(c7, 192, (1, 7))),
        _avgpool_then(c, 192),
    )


def v3_reduction_d(c):
    """Halves the grid (no padding); the zoo pools with an average here: -> c + 512 channels."""
    return Concat(
        nn.Sequential(ConvBN(c, 192, 1), ConvBN(192, 320, 3, stride=2, padding=0)),
        nn.Sequential(ConvBN(c, 192, 1), ConvBN(192, 192, (1, 7)), ConvBN(192, 192, (7, 1)),
                      ConvBN(192, 192, 3, stride=2, padding=0)),
        nn.AvgPool2d(3, stride=2),
    )


def v3_block_e(c):
    """Expanded filter bank for the coarsest grid: -> 2048 channels."""
    return Concat(
        ConvBN(c, 320, 1),
        nn.Sequential(ConvBN(c, 384, 1), _split(384, 384)),
        nn.Sequential(ConvBN(c, 448, 1), ConvBN(448, 384, 3), _split(384, 384)),
        _avgpool_then(c, 192),
    )


# ---- Inception-v4 blocks, and the stem and reduction-A it shares with Inception-ResNet-v2 ----

def stem():
    """3 -> 384 channels, 32x32 -> 30x30 (only the first conv is unpadded)."""
    return nn.Sequential(
        ConvBN(3, 32, 3, padding=0),
        ConvBN(32, 32, 3),
        ConvBN(32, 64, 3),
        Concat(ConvBN(64, 96, 3), nn.MaxPool2d(3, stride=1, padding=1)),
        Concat(
            nn.Sequential(ConvBN(160, 64, 1), ConvBN(64, 64, (7, 1)), ConvBN(64, 64, (1, 7)),
                          ConvBN(64, 96, 3)),
            nn.Sequential(ConvBN(160, 64, 1), ConvBN(64, 96, 3)),
        ),
        Concat(nn.MaxPool2d(3, stride=1, padding=1), ConvBN(192, 192, 3)),
    )


def v4_block_a(c):
    """-> 384 channels."""
    return Concat(
        nn.Sequential(ConvBN(c, 64, 1), ConvBN(64, 96, 3), ConvBN(96, 96, 3)),
        nn.Sequential(ConvBN(c, 64, 1), ConvBN(64, 96, 3)),
        ConvBN(c, 96, 1),
        _avgpool_then(c, 96),
    )


def reduction_a(c, k, l, m, n):
    """Table 1 of the v4 paper gives (k, l, m, n) per network: -> c + m + n channels."""
    return Concat(
        nn.Sequential(ConvBN(c, k, 1), ConvBN(k, l, 3), ConvBN(l, m, 3, stride=2, padding=0)),
        ConvBN(c, n, 3, stride=2, padding=0),
        nn.MaxPool2d(3, stride=2),
    )


def v4_block_b(c):
    """-> 1024 channels."""
    return Concat(
        ConvBN(c, 384, 1),
        nn.Sequential(ConvBN(c, 192, 1), ConvBN(192, 224, (1, 7)), ConvBN(224, 256, (7, 1))),
        nn.Sequential(ConvBN(c, 192, 1), ConvBN(192, 192, (1, 7)), ConvBN(192, 224, (7, 1)),
                      ConvBN(224, 224, (1, 7)), ConvBN(224, 256, (7, 1))),
        _avgpool_then(c, 128),
    )


def v4_reduction_b(c):
    """Halves the grid with padded stride-2 layers (14 -> 7): -> c + 512 channels."""
    return Concat(
        nn.Sequential(ConvBN(c, 192, 1), ConvBN(192, 192, 3, stride=2, padding=1)),
        nn.Sequential(ConvBN(c, 256, 1), ConvBN(256, 256, (1, 7)), ConvBN(256, 320, (7, 1)),
                      ConvBN(320, 320, 3, stride=2, padding=1)),
        nn.MaxPool2d(3, stride=2, padding=1),
    )


def v4_block_c(c):
    """-> 1536 channels."""
    return Concat(
        ConvBN(c, 256, 1),
        nn.Sequential(ConvBN(c, 384, 1), _split(384, 256)),
        nn.Sequential(ConvBN(c, 384, 1), ConvBN(384, 448, (1, 3)), ConvBN(448, 512, (3, 1)),
                      _split(512, 256)),
        _avgpool_then(c, 256),
    )


# ---- Inception-ResNet-v2 blocks ----

class ResidualInception(nn.Module):
    """relu(bn(shortcut(x) + scale * project(branches(x)))).

    As in the zoo, the shortcut is always a biased 1x1 conv (even when the widths agree) and
    BatchNorm follows the sum.
    """

    def __init__(self, branches, branch_channels, in_channels, out_channels, scale):
        super().__init__()
        self.branches = branches
        self.project = nn.Conv2d(branch_channels, out_channels, 1)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1)
        self.bn = nn.BatchNorm2d(out_channels)
        self.scale = scale

    def forward(self, x):
        residual = self.project(self.branches(x)) * self.scale
        return F.relu(self.bn(self.shortcut(x) + residual))


def resnet_block_a(c):
    """-> 384 channels; the zoo leaves this residual unscaled."""
    branches = Concat(
        ConvBN(c, 32, 1),
        nn.Sequential(ConvBN(c, 32, 1), ConvBN(32, 32, 3)),
        nn.Sequential(ConvBN(c, 32, 1), ConvBN(32, 48, 3), ConvBN(48, 64, 3)),
    )
    return ResidualInception(branches, 128, c, 384, scale=1.0)


def resnet_block_b(c):
    """-> 1154 channels, residual scaled by 0.1 (section 3.3 of the paper)."""
    branches = Concat(
        ConvBN(c, 192, 1),
        nn.Sequential(ConvBN(c, 128, 1), ConvBN(128, 160, (1, 7)), ConvBN(160, 192, (7, 1))),
    )
    return ResidualInception(branches, 384, c, 1154, scale=0.1)


def resnet_block_c(c):
    """-> 2048 channels, residual scaled by 0.1."""
    branches = Concat(
        ConvBN(c, 192, 1),
        nn.Sequential(ConvBN(c, 192, 1), ConvBN(192, 224, (1, 3)), ConvBN(224, 256, (3, 1))),
    )
    return ResidualInception(branches, 448, c, 2048, scale=0.1)


def resnet_reduction_b(c):
    """Halves the grid without padding (14 -> 6): -> c + 992 channels."""
    return Concat(
        nn.Sequential(ConvBN(c, 256, 1), ConvBN(256, 384, 3, stride=2, padding=0)),
        nn.Sequential(ConvBN(c, 256, 1), ConvBN(256, 288, 3, stride=2, padding=0)),
        nn.Sequential(ConvBN(c, 256, 1), ConvBN(256, 288, 3),
                      ConvBN(288, 320, 3, stride=2, padding=0)),
        nn.MaxPool2d(3, stride=2),
    )


# ---- networks ----

def _repeat(block, in_channels, out_channels, times):
    """`times` copies of a block whose output width is fixed; only the first sees in_channels."""
    return [block(in_channels)] + [block(out_channels) for _ in range(times - 1)]


class InceptionNet(nn.Module):
    """Stem and blocks, then global average pool, dropout and a linear classifier."""

    def __init__(self, layers, width, dropout, num_classes):
        super().__init__()
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(width, num_classes)

    def forward(self, x):
        out = F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        return self.linear(self.dropout(out))


@register
def inceptionv3(num_classes=10):
    layers = [
        ConvBN(3, 32, 3), ConvBN(32, 32, 3), ConvBN(32, 64, 3), ConvBN(64, 80, 1),
        ConvBN(80, 192, 3, padding=0),                  # 32x32 -> 30x30
        v3_block_a(192, 32), v3_block_a(256, 64), v3_block_a(288, 64),
        v3_reduction_b(288),                            # -> 768 channels, 14x14
        v3_block_c(768, 128), v3_block_c(768, 160), v3_block_c(768, 160), v3_block_c(768, 192),
        v3_reduction_d(768),                            # -> 1280 channels, 6x6
        v3_block_e(1280), v3_block_e(2048),
    ]
    return InceptionNet(layers, 2048, dropout=0.5, num_classes=num_classes)


@register
def inceptionv4(num_classes=10):
    layers = [
        stem(),
        *_repeat(v4_block_a, 384, 384, 4),
        reduction_a(384, k=192, l=224, m=256, n=384),   # -> 1024 channels, 14x14
        *_repeat(v4_block_b, 1024, 1024, 7),
        v4_reduction_b(1024),                           # -> 1536 channels, 7x7
        *_repeat(v4_block_c, 1536, 1536, 3),
    ]
    return InceptionNet(layers, 1536, dropout=0.2, num_classes=num_classes)


@register
def inceptionresnetv2(num_classes=10):
    layers = [
        stem(),
        *_repeat(resnet_block_a, 384, 384, 5),
        reduction_a(384, k=256, l=256, m=384, n=384),   # -> 1152 channels, 14x14
        *_repeat(resnet_block_b, 1152, 1154, 10),
        resnet_reduction_b(1154),                       # -> 2146 channels, 6x6
        *_repeat(resnet_block_c, 2146, 2048, 5),
    ]
    return InceptionNet(layers, 2048, dropout=0.2, num_classes=num_classes)
