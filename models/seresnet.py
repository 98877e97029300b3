"""Squeeze-and-Excitation ResNets (Hu et al. 2018), pytorch-cifar100 layout.

The residual branch is rescaled channel-wise by a gate computed from its own global average
(reduction ratio 16) before it is added to the shortcut. As in the reference, convolutions keep
their biases (the stem's too) and the branch ends with a ReLU before the gate.
"""
import torch.nn as nn
import torch.nn.functional as F

from . import register
from ._blocks_resnet import ResNetBackbone, projection_shortcut
from ._layers import conv_bn


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

    def __init__(self, in_channels, out_channels, stride=1):
        super().__init__()
        self.residual = nn.Sequential(
            conv_bn(in_channels, out_channels, 3, stride, bias=True), nn.ReLU(inplace=True),
            conv_bn(out_channels, out_channels, 3, 1, bias=True), nn.ReLU(inplace=True))
        self.se = SqueezeExcitation(out_channels)
        self.shortcut = projection_shortcut(in_channels, out_channels, stride, bias=True)

    def forward(self, x):
        return F.relu(self.se(self.residual(x)) + self.shortcut(x))


class SEBottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_channels, width, stride=1):
        super().__init__()
        out_channels = width * self.expansion
        self.residual = nn.Sequential(
            conv_bn(in_channels, width, 1, 1, bias=True), nn.ReLU(inplace=True),
            conv_bn(width, width, 3, stride, bias=True), nn.ReLU(inplace=True),
            conv_bn(width, out_channels, 1, 1, bias=True), nn.ReLU(inplace=True))
        self.se = SqueezeExcitation(out_channels)
        self.shortcut = projection_shortcut(in_channels, out_channels, stride, bias=True)

    def forward(self, x):
        return F.relu(self.se(self.residual(x)) + self.shortcut(x))


@register
def seresnet18(num_classes=10):
    return ResNetBackbone(SEBasicBlock, (2, 2, 2, 2), num_classes, stem_bias=True)


@register
def seresnet34(num_classes=10):
    return ResNetBackbone(SEBasicBlock, (3, 4, 6, 3), num_classes, stem_bias=True)


@register
def seresnet50(num_classes=10):
    return ResNetBackbone(SEBottleneck, (3, 4, 6, 3), num_classes, stem_bias=True)


@register
def seresnet101(num_classes=10):
    return ResNetBackbone(SEBottleneck, (3, 4, 23, 3), num_classes, stem_bias=True)


@register
def seresnet152(num_classes=10):
    return ResNetBackbone(SEBottleneck, (3, 8, 36, 3), num_classes, stem_bias=True)
