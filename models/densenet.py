"""DenseNet-BC of Huang et al. 2017, in the CIFAR form of the pytorch-cifar100 zoo.

One 3x3 stem conv of 2k channels (no downsampling, since inputs are 32x32), then dense blocks
joined by transitions that halve both the channels (compression 0.5) and the resolution.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import register


class Bottleneck(nn.Module):
    """BN-ReLU-Conv1x1(4k)-BN-ReLU-Conv3x3(k); its k new maps are appended to the input."""

    def __init__(self, in_channels, growth_rate):
        super().__init__()
        inner = 4 * growth_rate
        self.body = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, inner, 1, bias=False),
            nn.BatchNorm2d(inner),
            nn.ReLU(inplace=True),
            nn.Conv2d(inner, growth_rate, 3, padding=1, bias=False),
        )

    def forward(self, x):
        return torch.cat([x, self.body(x)], 1)


class Transition(nn.Sequential):
    """BN-Conv1x1-AvgPool2; as in the zoo there is no ReLU between the BN and the conv."""

    def __init__(self, in_channels, out_channels):
        super().__init__(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.AvgPool2d(2, stride=2),
        )


class DenseNet(nn.Module):
    def __init__(self, block_sizes, growth_rate, reduction=0.5, num_classes=10):
        super().__init__()
        channels = 2 * growth_rate
        self.conv1 = nn.Conv2d(3, channels, 3, padding=1, bias=False)
        stages = []
        for i, size in enumerate(block_sizes):
            for _ in range(size):
                stages.append(Bottleneck(channels, growth_rate))
                channels += growth_rate
            if i < len(block_sizes) - 1:
                out_channels = int(reduction * channels)  # floor, as the zoo does
                stages.append(Transition(channels, out_channels))
                channels = out_channels
        stages += [nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*stages)
        self.linear = nn.Linear(channels, num_classes)

    def forward(self, x):
        out = self.features(self.conv1(x))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


# arguments: layers per dense block, growth rate k
@register
def densenet121(num_classes=10):
    return DenseNet((6, 12, 24, 16), 32, num_classes=num_classes)


@register
def densenet161(num_classes=10):
    return DenseNet((6, 12, 36, 24), 48, num_classes=num_classes)


@register
def densenet169(num_classes=10):
    return DenseNet((6, 12, 32, 32), 32, num_classes=num_classes)


@register
def densenet201(num_classes=10):
    return DenseNet((6, 12, 48, 32), 32, num_classes=num_classes)
