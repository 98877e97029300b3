"""Residual Attention Networks (Wang et al. 2017) in the CIFAR layout of the pytorch-cifar100 zoo.

Three stages of attention modules at 256/512/1024 channels, then three plain units at 2048.
Each attention module multiplies its trunk output by (1 + mask), where the mask branch is an
hourglass of max-pooling, residual units and upsampling ending in a sigmoid.

The channel widths and unit counts follow the reference zoo, so the parameter counts match it.
Its forward pass departs from the paper (every pooling is applied to the module input; a skip unit
is built but never called in stage-1 and stage-3 modules, while a mask unit is called twice).
This file follows the paper instead: pooling is cumulative and every unit is called once, so
every parameter gets a gradient. The stage-3 skip unit, which the paper does not have, bridges
the bottom of that module's one-level hourglass.
"""
import torch.nn as nn
import torch.nn.functional as F

from . import register


class PreActBottleneck(nn.Module):
    """Pre-activation 1x1-3x3-1x1 unit with a 4x narrower middle."""

    def __init__(self, in_channels, out_channels, stride=1):
        super().__init__()
        mid = out_channels // 4
        self.residual = nn.Sequential(
            nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, mid, 1, stride),
            nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, 1, 1),
            nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_channels, 1),
        )
        # The reference zoo gives every unit a 1x1 projection shortcut, even shape-preserving
        # ones; kept so that the parameter count matches it.
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride)

    def forward(self, x):
        return self.residual(x) + self.shortcut(x)


def _units(channels, count):
    return nn.Sequential(*(PreActBottleneck(channels, channels) for _ in range(count)))


class AttentionModule(nn.Module):
    """Trunk of ``t`` units, gated by a mask branch that pools ``levels`` times.

    The mask branch runs ``r`` units after each pooling and ``r`` more at the bottom, and mirrors
    them on the way up. The first ``skips`` pooled levels also feed a one-unit skip that is added
    back on the way up, at the same resolution, before that level's up units.
    """

    def __init__(self, channels, levels, skips, p=1, t=2, r=1):
        super().__init__()
        self.pre = _units(channels, p)
        self.trunk = _units(channels, t)
        self.down = nn.ModuleList(_units(channels, r) for _ in range(levels + 1))
        self.up = nn.ModuleList(_units(channels, r) for _ in range(levels + 1))
        self.skips = nn.ModuleList(PreActBottleneck(channels, channels) for _ in range(skips))
        self.mask_head = nn.Sequential(
            nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 1),
            nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 1),
            nn.Sigmoid(),
        )
        self.post = _units(channels, p)

    def forward(self, x):
        x = self.pre(x)
        trunk = self.trunk(x)

        mask, sizes, skips = x, [], []
        for i, down in enumerate(self.down[:-1]):
            sizes.append(mask.shape[-2:])
            mask = down(F.max_pool2d(mask, 3, 2, 1))
            skips.append(self.skips[i](mask) if i < len(self.skips) else None)
        mask = self.up[0](self.down[-1](mask))
        for up, size in zip(self.up[1:], reversed(sizes)):
            skip = skips.pop()
            if skip is not None:
                mask = mask + skip
            # Nearest upsampling, as in the reference zoo: unlike bilinear, its CUDA backward
            # is deterministic.
            mask = F.interpolate(up(mask), size=size)

        return self.post((1 + self.mask_head(mask)) * trunk)


class ResidualAttentionNet(nn.Module):
    # (channels, mask poolings, mask skip units) of the attention modules in stages 1-3
    STAGES = ((256, 3, 2), (512, 2, 1), (1024, 1, 1))

    def __init__(self, modules_per_stage, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 3, 1, 1), nn.BatchNorm2d(64), nn.ReLU(inplace=True))
        stages, in_channels = [], 64
        for (channels, levels, skips), count in zip(self.STAGES, modules_per_stage):
            # Each stage opens with a strided unit that halves the resolution and widens.
            stages.append(nn.Sequential(
                PreActBottleneck(in_channels, channels, 2),
                *(AttentionModule(channels, levels, skips) for _ in range(count))))
            in_channels = channels
        stages.append(nn.Sequential(
            PreActBottleneck(1024, 2048, 2),
            PreActBottleneck(2048, 2048),
            PreActBottleneck(2048, 2048)))
        self.stages = nn.Sequential(*stages)
        self.linear = nn.Linear(2048, num_classes)

    def forward(self, x):
        out = self.stages(self.stem(x))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


# argument: attention modules in stages 1, 2 and 3
@register
def attention56(num_classes=10):
    return ResidualAttentionNet((1, 1, 1), num_classes)


@register
def attention92(num_classes=10):
    return ResidualAttentionNet((1, 2, 3), num_classes)
