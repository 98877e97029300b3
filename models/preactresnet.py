"""Pre-activation ResNets (He et al. 2016, "Identity Mappings in Deep Residual Networks"),
pytorch-cifar100 layout.

Each block applies BN-ReLU before every convolution and adds nothing after the sum, so the
shortcut path stays a clean identity. As in the reference every convolution keeps its bias and
a shape-changing shortcut is a bare 1x1 convolution (no BN), applied to the un-normalised input.
The stem is conv-BN-ReLU, with the conv bias kept as in the reference.
"""
import torch.nn as nn

from . import register
from ._blocks_resnet import ResNetBackbone, projection_shortcut


def _bn_relu_conv(in_channels, out_channels, kernel_size, stride=1):
    return nn.Sequential(
        nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True),
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2))


class PreActBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_channels, out_channels, stride=1):
        super().__init__()
        self.residual = nn.Sequential(
            _bn_relu_conv(in_channels, out_channels, 3, stride),
            _bn_relu_conv(out_channels, out_channels, 3))
        self.shortcut = projection_shortcut(
            in_channels, out_channels, stride, bias=True, batch_norm=False)

    def forward(self, x):
        return self.residual(x) + self.shortcut(x)


class PreActBottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_channels, width, stride=1):
        super().__init__()
        out_channels = width * self.expansion
        # the reference puts the stride on the first 1x1 convolution, not on the 3x3
        self.residual = nn.Sequential(
            _bn_relu_conv(in_channels, width, 1, stride), _bn_relu_conv(width, width, 3),
            _bn_relu_conv(width, out_channels, 1))
        self.shortcut = projection_shortcut(
            in_channels, out_channels, stride, bias=True, batch_norm=False)

    def forward(self, x):
        return self.residual(x) + self.shortcut(x)


@register
def preactresnet18(num_classes=10):
    return ResNetBackbone(PreActBasicBlock, (2, 2, 2, 2), num_classes, stem_bias=True)


@register
def preactresnet34(num_classes=10):
    return ResNetBackbone(PreActBasicBlock, (3, 4, 6, 3), num_classes, stem_bias=True)


@register
def preactresnet50(num_classes=10):
    return ResNetBackbone(PreActBottleneck, (3, 4, 6, 3), num_classes, stem_bias=True)


@register
def preactresnet101(num_classes=10):
    return ResNetBackbone(PreActBottleneck, (3, 4, 23, 3), num_classes, stem_bias=True)


@register
def preactresnet152(num_classes=10):
    return ResNetBackbone(PreActBottleneck, (3, 8, 36, 3), num_classes, stem_bias=True)
