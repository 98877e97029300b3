"""SqueezeNet with simple bypass (Iandola et al. 2016) as configured in the pytorch-cifar100 zoo.

CIFAR changes: a 3x3 stride-1 stem with BN, BN inside every fire module, and only two 2x2
max-pools after the stem (after fire4 and fire8). The classifier is a 1x1 convolution whose
class maps are averaged, so there is no linear layer.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import register


def _conv_bn_relu(in_channels, out_channels, kernel_size):
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class Fire(nn.Module):
    """1x1 squeeze, then 1x1 and 3x3 expands of out/2 channels each, concatenated."""

    def __init__(self, in_channels, out_channels, squeeze_channels):
        super().__init__()
        self.squeeze = _conv_bn_relu(in_channels, squeeze_channels, 1)
        self.expand_1x1 = _conv_bn_relu(squeeze_channels, out_channels // 2, 1)
        self.expand_3x3 = _conv_bn_relu(squeeze_channels, out_channels // 2, 3)

    def forward(self, x):
        s = self.squeeze(x)
        return torch.cat([self.expand_1x1(s), self.expand_3x3(s)], 1)


class SqueezeNet(nn.Module):
    def __init__(self, fires, num_classes=10, stem=96):
        super().__init__()
        self.stem = nn.Sequential(_conv_bn_relu(3, stem, 3), nn.MaxPool2d(2, 2))
        self.fires = nn.ModuleList()
        self.bypass, self.pool_after = [], []
        in_channels = stem
        for out_channels, squeeze_channels, bypass, pool in fires:
            if bypass and in_channels != out_channels:
                raise ValueError("an identity bypass needs equal input and output widths")
            self.fires.append(Fire(in_channels, out_channels, squeeze_channels))
            self.bypass.append(bypass)
            self.pool_after.append(pool)
            in_channels = out_channels
        self.classifier = nn.Conv2d(in_channels, num_classes, 1)

    def forward(self, x):
        out = self.stem(x)
        for fire, bypass, pool in zip(self.fires, self.bypass, self.pool_after):
            out = fire(out) + out if bypass else fire(out)
            if pool:
                out = F.max_pool2d(out, 2, 2)
        return F.adaptive_avg_pool2d(self.classifier(out), 1).flatten(1)


# (output channels, squeeze channels, identity bypass, max-pool after it) for fire2 ... fire9.
# Simple bypass (paper, Fig. 2 middle) on fire3, 5, 7; the zoo leaves fire9 without one.
_FIRES = (
    (128, 16, False, False), (128, 16, True, False), (256, 32, False, True),
    (256, 32, True, False), (384, 48, False, False), (384, 48, True, False),
    (512, 64, False, True), (512, 64, False, False),
)


@register
def squeezenet(num_classes=10):
    return SqueezeNet(_FIRES, num_classes)
