"""Layers shared by several families. The leading underscore keeps the registry from importing
this module as a family of its own."""
import torch.nn as nn


def conv_bn(in_channels, out_channels, kernel_size, stride=1, bias=False, groups=1):
    """Conv (padding keeps the size at stride 1) followed by BatchNorm."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups,
                  bias=bias),
        nn.BatchNorm2d(out_channels))


def channel_shuffle(x, groups):
    """View channels as (groups, n), transpose to (n, groups) and flatten: mixes the groups."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)
