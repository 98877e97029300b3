"""ShuffleNet v1 (Zhang et al. 2018) as configured in the pytorch-cifar100 zoo: groups=3, 4/8/4 units.

CIFAR changes: a stride-1 3x3 stem without max-pooling, so the three stages run at 16, 8 and 4 pixels.
As in that zoo, every 1x1 convolution (including the first one of stage 2) is grouped and every
convolution keeps its bias, which the parameter count depends on.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import register


def channel_shuffle(x, groups):
    """View channels as (groups, n), transpose to (n, groups) and flatten: mixes the groups."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


def _conv_bn(in_ch, out_ch, kernel_size, stride=1, groups=1):
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size, stride, kernel_size // 2, groups=groups),
        nn.BatchNorm2d(out_ch),
    )


class ShuffleUnit(nn.Module):
    """Grouped 1x1 -> shuffle -> depthwise 3x3 -> grouped 1x1, bottleneck width out/4.

    A unit that changes shape concatenates its branch with a 3x3-average-pooled input instead of
    adding it, so its branch only produces the ``out_ch - in_ch`` new channels.
    """

    def __init__(self, in_ch, out_ch, stride, groups):
        super().__init__()
        mid = out_ch // 4
        self.groups = groups
        self.concat = stride != 1 or in_ch != out_ch
        self.reduce = _conv_bn(in_ch, mid, 1, groups=groups)
        self.depthwise = _conv_bn(mid, mid, 3, stride, groups=mid)
        self.expand = _conv_bn(mid, out_ch - in_ch if self.concat else out_ch, 1, groups=groups)
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
        self.stem = nn.Sequential(_conv_bn(3, stem, 3), nn.ReLU(inplace=True))
        stages, in_ch = [], stem
        for width, n in zip(widths, blocks):
            units = []
            for i in range(n):
                units.append(ShuffleUnit(in_ch, width, 2 if i == 0 else 1, groups))
                in_ch = width
            stages.append(nn.Sequential(*units))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x):
        out = self.stages(self.stem(x))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


# stage widths for g=3 (Table 1 of the paper); units per stage 4, 8, 4
_CONFIGS = {
    "shufflenet": dict(widths=(240, 480, 960), blocks=(4, 8, 4), groups=3),
}


def _make(name, cfg):
    @register(name)
    def build(num_classes=10):
        return ShuffleNet(num_classes=num_classes, **cfg)
    return build


for _name, _cfg in _CONFIGS.items():
    _make(_name, _cfg)
