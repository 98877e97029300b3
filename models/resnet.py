"""ResNet-18/34/50/101/152 in the CIFAR layout of pytorch-cifar100.

Unlike the ImageNet models the stem is a single 3x3 stride-1 convolution without max pooling, so
the four stages see 32, 16, 8 and 4 pixels. Shortcuts that change shape are 1x1 conv + BN;
no convolution has a bias (the following BatchNorm makes it redundant).
"""
from . import register
from ._blocks_resnet import BasicBlock, Bottleneck, ResNetBackbone


@register
def resnet18(num_classes=10):
    return ResNetBackbone(BasicBlock, (2, 2, 2, 2), num_classes)


@register
def resnet34(num_classes=10):
    return ResNetBackbone(BasicBlock, (3, 4, 6, 3), num_classes)


@register
def resnet50(num_classes=10):
    return ResNetBackbone(Bottleneck, (3, 4, 6, 3), num_classes)


@register
def resnet101(num_classes=10):
    return ResNetBackbone(Bottleneck, (3, 4, 23, 3), num_classes)


@register
def resnet152(num_classes=10):
    return ResNetBackbone(Bottleneck, (3, 8, 36, 3), num_classes)
