"""Squeeze-and-Excitation ResNets (Hu et al. 2018), pytorch-cifar100 layout.

The residual branch is rescaled channel-wise by a gate computed from its own global average
(reduction ratio 16) before it is added to the shortcut. As in the reference, convolutions keep
their biases and the branch ends with a ReLU before the gate.
"""
import torch.nn as nn
import torch.nn.functional as F

from . import register
from ._blocks_resnet import BASIC_DEPTHS, BOTTLENECK_DEPTHS, ResNetBackbone, conv_bn, projection_shortcut


class SqueezeExcitation(nn.Module):
    def __init__(self, channels, reduction=16):
        super().__init__()
        self.gate = nn.Sequential(
            nn.Linear(channels, channels // reduction), nn.ReLU(inplace=True),
            nn.Linear(channels // reduction, channels), nn.Sigmoid())

    def forward(self, x):
        weights = self.gate(F.adaptive_avg_pool2d(x, 1).flatten(1))
        return x * weights[:, :, None, None]


class SEBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.residual = nn.Sequential(
            conv_bn(in_planes, planes, 3, stride, bias=True), nn.ReLU(inplace=True),
            conv_bn(planes, planes, 3, 1, bias=True), nn.ReLU(inplace=True))
        self.se = SqueezeExcitation(planes)
        self.shortcut = projection_shortcut(in_planes, planes, stride, bias=True)

    def forward(self, x):
        return F.relu(self.se(self.residual(x)) + self.shortcut(x))


class SEBottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        out_planes = planes * self.expansion
        self.residual = nn.Sequential(
            conv_bn(in_planes, planes, 1, 1, bias=True), nn.ReLU(inplace=True),
            conv_bn(planes, planes, 3, stride, bias=True), nn.ReLU(inplace=True),
            conv_bn(planes, out_planes, 1, 1, bias=True), nn.ReLU(inplace=True))
        self.se = SqueezeExcitation(out_planes)
        self.shortcut = projection_shortcut(in_planes, out_planes, stride, bias=True)

    def forward(self, x):
        return F.relu(self.se(self.residual(x)) + self.shortcut(x))


CONFIGS = {
    **{depth: (SEBasicBlock, blocks) for depth, blocks in BASIC_DEPTHS.items()},
    **{depth: (SEBottleneck, blocks) for depth, blocks in BOTTLENECK_DEPTHS.items()},
}


def _make(depth, block, num_blocks):
    @register(f"seresnet{depth}")
    def build(num_classes=10):
        return ResNetBackbone(block, num_blocks, num_classes, stem_bias=True)
    return build


for _depth, (_block, _blocks) in CONFIGS.items():
    _make(_depth, _block, _blocks)
