"""ResNeXt (Xie et al. 2017), bottleneck form (c) with cardinality 32 and 4 channels per group
at the first stage, pytorch-cifar100 layout.

The group width scales with the stage (4, 8, 16, 32 channels), so the grouped 3x3 convolution is
2 * width wide. As in the reference the first 1x1 convolution is grouped too, and resnext152
uses (3, 4, 36, 3) blocks.
"""
import torch.nn as nn
import torch.nn.functional as F

from . import register
from ._blocks_resnet import ResNetBackbone, projection_shortcut
from ._layers import conv_bn

CARDINALITY = 32
BASE_GROUP_WIDTH = 4  # channels per group when width == 64


class ResNeXtBottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_channels, width, stride=1):
        super().__init__()
        grouped_channels = CARDINALITY * (BASE_GROUP_WIDTH * width // 64)
        out_channels = width * self.expansion
        self.residual = nn.Sequential(
            conv_bn(in_channels, grouped_channels, 1, groups=CARDINALITY), nn.ReLU(inplace=True),
            conv_bn(grouped_channels, grouped_channels, 3, stride, groups=CARDINALITY),
            nn.ReLU(inplace=True),
            conv_bn(grouped_channels, out_channels, 1))
        self.shortcut = projection_shortcut(in_channels, out_channels, stride)

    def forward(self, x):
        return F.relu(self.residual(x) + self.shortcut(x))


@register
def resnext50(num_classes=10):
    return ResNetBackbone(ResNeXtBottleneck, (3, 4, 6, 3), num_classes)


@register
def resnext101(num_classes=10):
    return ResNetBackbone(ResNeXtBottleneck, (3, 4, 23, 3), num_classes)


@register
def resnext152(num_classes=10):
    return ResNetBackbone(ResNeXtBottleneck, (3, 4, 36, 3), num_classes)
