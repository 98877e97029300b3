"""GoogLeNet (Inception-v1) of Szegedy et al. 2015, in the CIFAR form of the pytorch-cifar100 zoo.

The ImageNet stem is replaced by three padded 3x3 convs (3 -> 64 -> 64 -> 192, bias-free) and
a stride-2 max pool, so the inception stages run at 16x16, 8x8 and 4x4. The "5x5" branch is two
stacked 3x3 convs (same receptive field, fewer weights). Inception convs keep their bias and are
each followed by BatchNorm, as in the zoo.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import register


def _conv_bn_relu(in_channels, out_channels, kernel_size, padding=0, bias=True):
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, bias=bias),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class Inception(nn.Module):
    """Four parallel branches (1x1 | 1x1-3x3 | 1x1-3x3-3x3 | maxpool-1x1), concatenated."""

    def __init__(self, in_channels, n1x1, n3x3_reduce, n3x3, n5x5_reduce, n5x5, pool_proj):
        super().__init__()
        self.b1 = nn.Sequential(*_conv_bn_relu(in_channels, n1x1, 1))
        self.b2 = nn.Sequential(
            *_conv_bn_relu(in_channels, n3x3_reduce, 1),
            *_conv_bn_relu(n3x3_reduce, n3x3, 3, padding=1),
        )
        self.b3 = nn.Sequential(
            *_conv_bn_relu(in_channels, n5x5_reduce, 1),
            *_conv_bn_relu(n5x5_reduce, n5x5, 3, padding=1),
            *_conv_bn_relu(n5x5, n5x5, 3, padding=1),
        )
        self.b4 = nn.Sequential(
            nn.MaxPool2d(3, stride=1, padding=1),
            *_conv_bn_relu(in_channels, pool_proj, 1),
        )
        self.out_channels = n1x1 + n3x3 + n5x5 + pool_proj

    def forward(self, x):
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)


# Module arguments (n1x1, n3x3_reduce, n3x3, n5x5_reduce, n5x5, pool_proj) from Table 1 of the
# paper; None marks a stride-2 max pool (the first one ends the stem).
STAGES = (
    None,
    (64, 96, 128, 16, 32, 32),      # 3a
    (128, 128, 192, 32, 96, 64),    # 3b
    None,
    (192, 96, 208, 16, 48, 64),     # 4a
    (160, 112, 224, 24, 64, 64),    # 4b
    (128, 128, 256, 24, 64, 64),    # 4c
    (112, 144, 288, 32, 64, 64),    # 4d
    (256, 160, 320, 32, 128, 128),  # 4e
    None,
    (256, 160, 320, 32, 128, 128),  # 5a
    (384, 192, 384, 48, 128, 128),  # 5b
)


class GoogLeNet(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.prelayer = nn.Sequential(
            *_conv_bn_relu(3, 64, 3, padding=1, bias=False),
            *_conv_bn_relu(64, 64, 3, padding=1, bias=False),
            *_conv_bn_relu(64, 192, 3, padding=1, bias=False),
        )
        layers, channels = [], 192
        for spec in STAGES:
            if spec is None:
                layers.append(nn.MaxPool2d(3, stride=2, padding=1))
            else:
                layers.append(Inception(channels, *spec))
                channels = layers[-1].out_channels
        self.inceptions = nn.Sequential(*layers)
        self.dropout = nn.Dropout(0.4)
        self.linear = nn.Linear(channels, num_classes)

    def forward(self, x):
        out = self.inceptions(self.prelayer(x))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(self.dropout(out))


@register
def googlenet(num_classes=10):
    return GoogLeNet(num_classes)
