"""MobileNetV2 (Sandler et al. 2018) as configured in the pytorch-cifar100 zoo.

CIFAR changes: a 1x1 stem (kept with the zoo's padding of 1, so features start at 34x34), and
only three stride-2 stages instead of four. As in that zoo, every convolution keeps its bias and
the classifier is a 1x1 convolution applied after global pooling.
"""
import torch.nn as nn
import torch.nn.functional as F

from . import register


class LinearBottleneck(nn.Module):
    """Expand 1x1 (x t) -> depthwise 3x3 -> linear 1x1 projection (no ReLU6 after it)."""

    def __init__(self, in_channels, out_channels, stride, t):
        super().__init__()
        mid = in_channels * t
        self.residual = nn.Sequential(
            nn.Conv2d(in_channels, mid, 1),
            nn.BatchNorm2d(mid),
            nn.ReLU6(inplace=True),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid),
            nn.BatchNorm2d(mid),
            nn.ReLU6(inplace=True),
            nn.Conv2d(mid, out_channels, 1),
            nn.BatchNorm2d(out_channels),
        )
        self.identity = stride == 1 and in_channels == out_channels

    def forward(self, x):
        out = self.residual(x)
        return out + x if self.identity else out


class MobileNetV2(nn.Module):
    def __init__(self, stages, num_classes=10, stem=32, head=1280):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, stem, 1, padding=1), nn.BatchNorm2d(stem), nn.ReLU6(inplace=True))
        layers, in_channels = [], stem
        for t, out_channels, n, stride in stages:
            for i in range(n):
                layers.append(
                    LinearBottleneck(in_channels, out_channels, stride if i == 0 else 1, t))
                in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Conv2d(in_channels, head, 1), nn.BatchNorm2d(head), nn.ReLU6(inplace=True))
        self.classifier = nn.Conv2d(head, num_classes, 1)

    def forward(self, x):
        out = self.head(self.features(self.stem(x)))
        return self.classifier(F.adaptive_avg_pool2d(out, 1)).flatten(1)


# (expansion t, output channels, repeats n, first stride s), the paper's Table 2 with the
# stride-2 of the 160-channel stage (and the stem's) removed for 32x32 inputs
_STAGES = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
    (6, 96, 3, 1), (6, 160, 3, 1), (6, 320, 1, 1),
)


@register
def mobilenetv2(num_classes=10):
    return MobileNetV2(_STAGES, num_classes)
