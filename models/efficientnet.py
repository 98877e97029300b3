"""EfficientNet-B0 (Tan & Le 2019) as in the DLDR authors' models/efficientnet.py, which the paper used.

CIFAR changes: the stem and the 112->192 stage are stride 1, so the three stride-2 stages take
32 pixels to 4. TensorFlow "SAME" padding (extra pixel right/bottom when the total is odd), no
conv biases, squeeze-excitation width = block *input* channels / 4, dropout 0.2 before the
classifier and no drop-connect (the authors' file disables it).

The authors' BatchNorm settings are kept as they are, since training dynamics depend on them:
  * conv-BN-swish layers: momentum 0.01 (their Keras-style 0.99 converted);
  * stem BN: momentum 0.9;
  * projection BN after each block: eps 0.1, and head BN: eps 0.9 (their momentum value passed
    positionally lands in ``eps``).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import register

_BN_MOMENTUM = 0.01
_STEM_BN_MOMENTUM = 0.9
_PROJECT_BN_EPS = 1 - 0.9
_HEAD_BN_EPS = 0.9


class SameConv(nn.Conv2d):
    """Bias-free conv with TF "SAME" padding: output = ceil(input / stride), odd padding goes right/bottom."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, groups=1):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding=0, groups=groups,
                         bias=False)

    @staticmethod
    def _total_padding(size, kernel, stride):
        out = -(-size // stride)
        return max(0, (out - 1) * stride + kernel - size)

    def forward(self, x):
        ph = self._total_padding(x.size(2), self.kernel_size[0], self.stride[0])
        pw = self._total_padding(x.size(3), self.kernel_size[1], self.stride[1])
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        return super().forward(x)


def _conv_bn_swish(in_channels, out_channels, kernel_size, stride=1, groups=1):
    return nn.Sequential(
        SameConv(in_channels, out_channels, kernel_size, stride, groups),
        nn.BatchNorm2d(out_channels, momentum=_BN_MOMENTUM),
        nn.SiLU(),
    )


class SqueezeExcite(nn.Module):
    def __init__(self, channels, squeeze_channels):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(channels, squeeze_channels), nn.SiLU(),
                                nn.Linear(squeeze_channels, channels))

    def forward(self, x):
        gate = self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))
        return x * torch.sigmoid(gate)[:, :, None, None]


class MBConv(nn.Module):
    """Inverted residual: expand 1x1 (skipped when t=1) -> depthwise kxk -> SE -> linear 1x1."""

    def __init__(self, in_channels, out_channels, t, kernel_size, stride, se_ratio=4):
        super().__init__()
        mid = in_channels * t
        self.expand = _conv_bn_swish(in_channels, mid, 1) if t != 1 else nn.Identity()
        self.depthwise = _conv_bn_swish(mid, mid, kernel_size, stride, groups=mid)
        self.se = SqueezeExcite(mid, int(in_channels / se_ratio))
        self.project = nn.Sequential(SameConv(mid, out_channels, 1),
                                     nn.BatchNorm2d(out_channels, eps=_PROJECT_BN_EPS))
        self.identity = stride == 1 and in_channels == out_channels

    def forward(self, x):
        out = self.project(self.se(self.depthwise(self.expand(x))))
        return out + x if self.identity else out


def _round_width(channels, multiplier, divisor=8):
    # nearest multiple of divisor, never more than 10% below the scaled width
    channels *= multiplier
    new = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    return int(new + divisor if new < 0.9 * channels else new)


class EfficientNet(nn.Module):
    def __init__(self, stages, width=1.0, depth=1.0, num_classes=10, stem=32, head=1280, dropout=0.2):
        super().__init__()
        stem = _round_width(stem, width)
        self.stem = nn.Sequential(
            SameConv(3, stem, 3),
            nn.BatchNorm2d(stem, momentum=_STEM_BN_MOMENTUM),
            nn.SiLU(),
        )
        blocks, in_channels = [], stem
        for t, kernel_size, stride, out_channels, repeats in stages:
            out_channels = _round_width(out_channels, width)
            for i in range(int(math.ceil(repeats * depth))):
                blocks.append(
                    MBConv(in_channels, out_channels, t, kernel_size, stride if i == 0 else 1))
                in_channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        head = _round_width(head, width)
        self.head = nn.Sequential(
            SameConv(in_channels, head, 1), nn.BatchNorm2d(head, eps=_HEAD_BN_EPS), nn.SiLU())
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(head, num_classes)
        self._init_weights()

    def _init_weights(self):
        # the authors' init: Kaiming-normal (fan_out) convs, linears U(-b, b) with b = 1/int(sqrt(fan_in))
        for m in self.modules():
            if isinstance(m, SameConv):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                bound = 1 / int(math.sqrt(m.weight.size(1)))
                nn.init.uniform_(m.weight, -bound, bound)

    def forward(self, x):
        out = self.head(self.blocks(self.stem(x)))
        out = self.dropout(F.adaptive_avg_pool2d(out, 1).flatten(1))
        return self.fc(out)


# (expansion t, kernel, first stride, output channels, repeats): the B0 table with CIFAR strides
_B0_STAGES = (
    (1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3), (6, 5, 1, 192, 4), (6, 3, 1, 320, 1),
)


@register
def efficientnet(num_classes=10):
    return EfficientNet(_B0_STAGES, width=1.0, depth=1.0, num_classes=num_classes)
