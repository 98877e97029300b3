"""MobileNet v1 (Howard et al. 2017), width multiplier 1, as configured in the pytorch-cifar100 zoo.

CIFAR changes: the stem is stride 1, so the four downsampling blocks take 32 pixels to 2. As in
that zoo, the stem and depthwise convolutions have no bias but the pointwise ones do.
"""
import torch.nn as nn
import torch.nn.functional as F

from . import register


class DepthwiseSeparable(nn.Module):
    """3x3 depthwise conv-BN-ReLU, then 1x1 pointwise conv-BN-ReLU."""

    def __init__(self, in_channels, out_channels, stride):
        super().__init__()
        self.depthwise = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False),
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
        )
        self.pointwise = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x):
        return self.pointwise(self.depthwise(x))


class MobileNet(nn.Module):
    def __init__(self, blocks, num_classes=10, stem=32):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, stem, 3, padding=1, bias=False),
            nn.BatchNorm2d(stem),
            nn.ReLU(inplace=True),
        )
        layers, in_channels = [], stem
        for out_channels, stride in blocks:
            layers.append(DepthwiseSeparable(in_channels, out_channels, stride))
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x):
        out = self.features(self.stem(x))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


# (output channels, stride) of the 13 depthwise-separable blocks (paper, Table 1)
_BLOCKS = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1),
    (512, 2), (512, 1), (512, 1), (512, 1), (512, 1), (512, 1),
    (1024, 2), (1024, 1),
)


@register
def mobilenet(num_classes=10):
    return MobileNet(_BLOCKS, num_classes)
