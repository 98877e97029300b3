"""ResNet-18/34/50/101/152 in the CIFAR layout of pytorch-cifar100.

Unlike the ImageNet models the stem is a single 3x3 stride-1 convolution without max pooling, so
the four stages see 32, 16, 8 and 4 pixels. Shortcuts that change shape are 1x1 conv + BN;
no convolution has a bias (the following BatchNorm makes it redundant).
"""
from . import register
from ._blocks_resnet import BASIC_DEPTHS, BOTTLENECK_DEPTHS, BasicBlock, Bottleneck, ResNetBackbone

CONFIGS = {
    **{depth: (BasicBlock, blocks) for depth, blocks in BASIC_DEPTHS.items()},
    **{depth: (Bottleneck, blocks) for depth, blocks in BOTTLENECK_DEPTHS.items()},
}


def _make(depth, block, num_blocks):
    @register(f"resnet{depth}")
    def build(num_classes=10):
        return ResNetBackbone(block, num_blocks, num_classes)
    return build


for _depth, (_block, _blocks) in CONFIGS.items():
    _make(_depth, _block, _blocks)
