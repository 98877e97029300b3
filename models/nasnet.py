"""NASNet-A (Zoph et al. 2018) as configured in the pytorch-cifar100 zoo: N=4 normal cells per
stack, 2 reduction cells, 44 filters (doubled at each reduction), a 44-filter 3x3 stem.

Every cell takes the two previous outputs, ``x`` (the last) and ``prev`` (the one before). The
zoo's quirks are kept because the parameter count depends on them:
  * every cell owns a full ``Fit`` (factorized-reduction and 1x1 paths) even where it uses one
    path or none; the unused weights get no gradient but are counted;
  * biases: normal cells' 1x1 reduction and first depthwise convs have none, every other conv has one;
  * the first cell gets ``prev = x`` (the stem), hence stem filters == 44.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import register


def _avg3(t):
    return F.avg_pool2d(t, 3, 1, 1)


class SeparableConv(nn.Sequential):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, bias=True):
        super().__init__(
            nn.Conv2d(in_channels, in_channels, kernel_size, stride, kernel_size // 2,
                      groups=in_channels, bias=bias),
            nn.Conv2d(in_channels, out_channels, 1),
        )


class SeparableBranch(nn.Sequential):
    """Two rounds of ReLU -> separable conv -> BN; only the first may stride."""

    def __init__(self, channels, kernel_size, stride=1, bias=True):
        super().__init__(
            nn.ReLU(),
            SeparableConv(channels, channels, kernel_size, stride, bias),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            SeparableConv(channels, channels, kernel_size),
            nn.BatchNorm2d(channels),
        )


class Fit(nn.Module):
    """Brings ``prev`` to ``x``'s resolution and to ``filters`` channels.

    At a resolution change: factorized reduction (two 1x1 convs on the input subsampled at even and
    at odd offsets, concatenated) so no pixel is dropped. Otherwise a 1x1 conv if the width differs.
    """

    def __init__(self, prev_channels, filters):
        super().__init__()
        self.filters = filters
        self.path1 = nn.Conv2d(prev_channels, filters // 2, 1)
        self.path2 = nn.Conv2d(prev_channels, filters // 2, 1)
        self.bn = nn.BatchNorm2d(filters)
        self.dim_reduce = nn.Sequential(
            nn.ReLU(), nn.Conv2d(prev_channels, filters, 1), nn.BatchNorm2d(filters))

    def forward(self, x, prev):
        if prev is None:
            return x
        if prev.size(2) != x.size(2):
            prev = F.relu(prev)
            # odd offsets: shift up-left by one pixel (zero fill), then subsample
            shifted = F.pad(prev[:, :, 1:, 1:], (0, 1, 0, 1))
            paths = [self.path1(prev[:, :, ::2, ::2]), self.path2(shifted[:, :, ::2, ::2])]
            return self.bn(torch.cat(paths, 1))
        if prev.size(1) != self.filters:
            return self.dim_reduce(prev)
        return prev


class NormalCell(nn.Module):
    """Five pairwise-summed branches over h (reduced ``x``) and ``prev``; outputs 6 x filters."""

    def __init__(self, x_channels, prev_channels, filters):
        super().__init__()
        self.reduce = nn.Sequential(
            nn.ReLU(), nn.Conv2d(x_channels, filters, 1, bias=False), nn.BatchNorm2d(filters))
        self.sep3_h = SeparableBranch(filters, 3, bias=False)
        self.sep3_prev = SeparableBranch(filters, 3, bias=False)
        self.sep5_h = SeparableBranch(filters, 5, bias=False)
        self.sep5_prev = SeparableBranch(filters, 5, bias=False)
        self.sep3_prev2 = SeparableBranch(filters, 3, bias=False)
        # registered last, as in the zoo, so parameters flatten in its order
        self.fit = Fit(prev_channels, filters)

    def forward(self, inputs):
        x, prev = inputs
        prev = self.fit(x, prev)
        h = self.reduce(x)
        out = torch.cat([
            prev,
            self.sep3_h(h) + h,
            self.sep3_prev(prev) + self.sep5_h(h),
            _avg3(h) + h,
            _avg3(prev) + _avg3(prev),
            self.sep5_prev(prev) + self.sep3_prev2(prev),
        ], 1)
        return out, x


class ReductionCell(nn.Module):
    """Halves the resolution; concatenates 4 of its combinations (not ``prev``): 4 x filters."""

    def __init__(self, x_channels, prev_channels, filters):
        super().__init__()
        self.reduce = nn.Sequential(
            nn.ReLU(), nn.Conv2d(x_channels, filters, 1), nn.BatchNorm2d(filters))
        self.sep7_prev = SeparableBranch(filters, 7, stride=2)
        self.sep5_h = SeparableBranch(filters, 5, stride=2)
        self.sep7_prev2 = SeparableBranch(filters, 7, stride=2)
        self.sep5_prev = SeparableBranch(filters, 5, stride=2)
        self.sep3_a = SeparableBranch(filters, 3)
        self.fit = Fit(prev_channels, filters)

    def forward(self, inputs):
        x, prev = inputs
        prev = self.fit(x, prev)
        h = self.reduce(x)
        a = self.sep7_prev(prev) + self.sep5_h(h)
        b = F.max_pool2d(h, 3, 2, 1) + self.sep7_prev2(prev)
        c = F.avg_pool2d(h, 3, 2, 1) + self.sep5_prev(prev)
        d = F.max_pool2d(h, 3, 2, 1) + self.sep3_a(a)
        e = _avg3(a) + b
        return torch.cat([b, c, d, e], 1), x


class NASNetA(nn.Module):
    def __init__(self, repeat, reductions, filters, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, filters, 3, padding=1, bias=False), nn.BatchNorm2d(filters))
        cells, x_channels, prev_channels = [], filters, filters
        for stack in range(reductions + 1):
            if stack:
                filters *= 2
                cells.append(ReductionCell(x_channels, prev_channels, filters))
                x_channels, prev_channels = 4 * filters, x_channels
            for _ in range(repeat):
                cells.append(NormalCell(x_channels, prev_channels, filters))
                x_channels, prev_channels = 6 * filters, x_channels
        self.cells = nn.Sequential(*cells)
        self.fc = nn.Linear(x_channels, num_classes)

    def forward(self, x):
        out, _ = self.cells((self.stem(x), None))
        return self.fc(F.adaptive_avg_pool2d(F.relu(out), 1).flatten(1))


@register
def nasnet(num_classes=10):
    return NASNetA(repeat=4, reductions=2, filters=44, num_classes=num_classes)
