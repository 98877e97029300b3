"""ShuffleNet v1 (Zhang et al. 2018) as configured in the pytorch-cifar100 zoo: groups=3, 4/8/4 units.

CIFAR changes: a stride-1 3x3 stem without max-pooling, so the three stages run at 16, 8 and 4 pixels.
As in that zoo, every 1x1 convolution (including the first one of stage 2) is grouped and every
convolution keeps its bias, which the parameter count depends on.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import register
from ._layers import channel_shuffle, conv_bn


class ShuffleUnit(nn.Module):
    """Grouped 1x1 -> shuffle -> depthwise 3x3 -> grouped 1x1, bottleneck width out/4.

    A unit that changes shape concatenates its branch with a 3x3-average-pooled input instead of
    adding it, so its branch only produces the ``out_channels - in_channels`` new channels.
    """

    def __init__(self, in_channels, out_channels, stride, groups):
        super().__init__()
        mid = out_channels // 4
        self.groups = groups
        self.concat = stride != 1 or in_channels != out_channels
        self.reduce = conv_bn(in_channels, mid, 1, bias=True, groups=groups)
        self.depthwise = conv_bn(mid, mid, 3, stride, bias=True, groups=mid)
        branch_channels = out_channels - in_channels if self.concat else out_channels
        self.expand = conv_bn(mid, branch_channels, 1, bias=True, groups=groups)
        self.shortcut = nn.AvgPool2d(3, stride, 1) if self.concat else nn.Identity()

    def forward(self, x):
        out = channel_shuffle(F.relu(self.reduce(x)), self.groups)
        out = self.expand(self.depthwise(out))
        short = self.shortcut(x)
        out = torch.cat([short, out], 1) if self.concat else short + out
        return F.relu(out)


class ShuffleNet(nn.Module):
    def __init__(self, widths, blocks, groups, num_classes=10, stem=24):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, stem, 3, bias=True), nn.ReLU(inplace=True))
        stages, in_channels = [], stem
        for out_channels, n in zip(widths, blocks):
            units = []
            for i in range(n):
                units.append(ShuffleUnit(in_channels, out_channels, 2 if i == 0 else 1, groups))
                in_channels = out_channels
            stages.append(nn.Sequential(*units))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x):
        out = self.stages(self.stem(x))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


# stage widths for g=3 (Table 1 of the paper); units per stage 4, 8, 4
@register
def shufflenet(num_classes=10):
    return ShuffleNet(widths=(240, 480, 960), blocks=(4, 8, 4), groups=3, num_classes=num_classes)
