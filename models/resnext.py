"""ResNeXt (Xie et al. 2017), bottleneck form (c) with cardinality 32 and 4 channels per group
at the first stage, pytorch-cifar100 layout.

The group width scales with the stage (4, 8, 16, 32 channels), so the grouped 3x3 convolution is
2 * planes wide. As in the reference the first 1x1 convolution is grouped too, and resnext152
uses (3, 4, 36, 3) blocks.
"""
import torch.nn as nn
import torch.nn.functional as F

from . import register
from ._blocks_resnet import ResNetBackbone, conv_bn, projection_shortcut

CARDINALITY = 32
BASE_GROUP_WIDTH = 4  # channels per group when planes == 64


class ResNeXtBottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        width = CARDINALITY * (BASE_GROUP_WIDTH * planes // 64)
        out_planes = planes * self.expansion
        self.residual = nn.Sequential(
            conv_bn(in_planes, width, 1, groups=CARDINALITY), nn.ReLU(inplace=True),
            conv_bn(width, width, 3, stride, groups=CARDINALITY), nn.ReLU(inplace=True),
            conv_bn(width, out_planes, 1))
        self.shortcut = projection_shortcut(in_planes, out_planes, stride)

    def forward(self, x):
        return F.relu(self.residual(x) + self.shortcut(x))


CONFIGS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 4, 36, 3)}


def _make(depth, num_blocks):
    @register(f"resnext{depth}")
    def build(num_classes=10):
        return ResNetBackbone(ResNeXtBottleneck, num_blocks, num_classes)
    return build


for _depth, _blocks in CONFIGS.items():
    _make(_depth, _blocks)
