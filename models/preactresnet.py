"""Pre-activation ResNets (He et al. 2016, "Identity Mappings in Deep Residual Networks"),
pytorch-cifar100 layout.

Each block applies BN-ReLU before every convolution and adds nothing after the sum, so the
shortcut path stays a clean identity. As in the reference every convolution keeps its bias and
a shape-changing shortcut is a bare 1x1 convolution (no BN), applied to the un-normalised input.
"""
import torch.nn as nn

from . import register
from ._blocks_resnet import BASIC_DEPTHS, BOTTLENECK_DEPTHS, ResNetBackbone, projection_shortcut


def _bn_relu_conv(in_planes, planes, kernel_size, stride=1):
    return nn.Sequential(
        nn.BatchNorm2d(in_planes), nn.ReLU(inplace=True),
        nn.Conv2d(in_planes, planes, kernel_size, stride, kernel_size // 2))


class PreActBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.residual = nn.Sequential(
            _bn_relu_conv(in_planes, planes, 3, stride), _bn_relu_conv(planes, planes, 3))
        self.shortcut = projection_shortcut(in_planes, planes, stride, bias=True, batch_norm=False)

    def forward(self, x):
        return self.residual(x) + self.shortcut(x)


class PreActBottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        out_planes = planes * self.expansion
        # the reference puts the stride on the first 1x1 convolution, not on the 3x3
        self.residual = nn.Sequential(
            _bn_relu_conv(in_planes, planes, 1, stride), _bn_relu_conv(planes, planes, 3),
            _bn_relu_conv(planes, out_planes, 1))
        self.shortcut = projection_shortcut(in_planes, out_planes, stride, bias=True, batch_norm=False)

    def forward(self, x):
        return self.residual(x) + self.shortcut(x)


CONFIGS = {
    **{depth: (PreActBasicBlock, blocks) for depth, blocks in BASIC_DEPTHS.items()},
    **{depth: (PreActBottleneck, blocks) for depth, blocks in BOTTLENECK_DEPTHS.items()},
}


def _make(depth, block, num_blocks):
    @register(f"preactresnet{depth}")
    def build(num_classes=10):
        # the stem is conv-BN-ReLU, with the conv bias kept as in the reference
        return ResNetBackbone(block, num_blocks, num_classes, stem_bias=True)
    return build


for _depth, (_block, _blocks) in CONFIGS.items():
    _make(_depth, _block, _blocks)
