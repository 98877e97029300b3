"""Pieces shared by the pytorch-cifar100 style ResNets (resnet, preactresnet, seresnet, resnext,
stochasticdepth).

They all use a 3x3 stride-1 stem without max pooling (a 32x32 input is too small to downsample
early), four stages of widths 64/128/256/512 with strides 1/2/2/2, global average pooling and one
linear classifier. Only the residual block, and whether convolutions carry a bias, differ. The
blocks per stage are those of He et al. 2016, Table 1: (2, 2, 2, 2) for depth 18, (3, 4, 6, 3)
for 34 and 50, (3, 4, 23, 3) for 101 and (3, 8, 36, 3) for 152.
"""
import torch.nn as nn
import torch.nn.functional as F

from ._layers import conv_bn

STAGE_WIDTHS = (64, 128, 256, 512)
STAGE_STRIDES = (1, 2, 2, 2)


def projection_shortcut(in_channels, out_channels, stride, bias=False, batch_norm=True):
    """Identity when shapes agree, else a strided 1x1 convolution (option B of He et al.)."""
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    if batch_norm:
        return conv_bn(in_channels, out_channels, 1, stride, bias)
    return nn.Conv2d(in_channels, out_channels, 1, stride, bias=bias)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions; ``bias`` because some reference families keep the conv biases."""
    expansion = 1

    def __init__(self, in_channels, out_channels, stride=1, bias=False):
        super().__init__()
        self.residual = nn.Sequential(
            conv_bn(in_channels, out_channels, 3, stride, bias), nn.ReLU(inplace=True),
            conv_bn(out_channels, out_channels, 3, 1, bias))
        self.shortcut = projection_shortcut(in_channels, out_channels, stride, bias)

    def forward(self, x):
        return F.relu(self.residual(x) + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride), 1x1 expand by 4."""
    expansion = 4

    def __init__(self, in_channels, width, stride=1, bias=False):
        super().__init__()
        out_channels = width * self.expansion
        self.residual = nn.Sequential(
            conv_bn(in_channels, width, 1, 1, bias), nn.ReLU(inplace=True),
            conv_bn(width, width, 3, stride, bias), nn.ReLU(inplace=True),
            conv_bn(width, out_channels, 1, 1, bias))
        self.shortcut = projection_shortcut(in_channels, out_channels, stride, bias)

    def forward(self, x):
        return F.relu(self.residual(x) + self.shortcut(x))


class ResNetBackbone(nn.Module):
    """Stem, four stages of ``block(in_channels, width, stride, **block_kwargs)``, pool, linear.

    ``block`` must expose ``expansion`` (output channels = width * expansion).
    """

    def __init__(self, block, num_blocks, num_classes, stem_bias=False, widths=STAGE_WIDTHS,
                 **block_kwargs):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, 1, 1, bias=stem_bias), nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True))
        stages, in_channels = [], widths[0]
        for width, stride, n in zip(widths, STAGE_STRIDES, num_blocks):
            blocks = []
            for i in range(n):
                blocks.append(block(in_channels, width, stride if i == 0 else 1, **block_kwargs))
                in_channels = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(in_channels, num_classes)

    def blocks(self):
        """The residual blocks, in order from input to output."""
        return [b for stage in self.stages for b in stage]

    def forward(self, x):
        out = self.stages(self.stem(x))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))
