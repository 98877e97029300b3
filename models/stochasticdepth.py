"""ResNets with stochastic depth (Huang et al. 2016), pytorch-cifar100 layout.

During training each residual branch survives with probability p_l, decaying linearly from 1 at
the first block to 0.5 at the last; a dropped branch is not computed, so the block is its
shortcut alone. In eval mode every branch runs and is scaled by p_l, its expected contribution.
As in the reference (and the authors' Torch code) there is no ReLU after the sum. The basic-block
variants keep the convolution biases and the bottleneck ones do not, again as in the reference.
The survival draw uses torch's RNG on the input's device, so ``torch.manual_seed`` reproduces it.

Note: while a branch is dropped its parameters take no part in the graph, so after backward their
``.grad`` stays ``None`` (or unchanged) for that step.
"""
import torch
import torch.nn as nn

from . import register
from ._blocks_resnet import BasicBlock, Bottleneck, ResNetBackbone

FINAL_SURVIVAL = 0.5


class StochasticDepth(nn.Module):
    """Takes over a block's ``residual`` and ``shortcut`` (same parameter names) and gates the branch."""

    def __init__(self, block, survival_prob):
        super().__init__()
        self.residual = block.residual
        self.shortcut = block.shortcut
        self.survival_prob = survival_prob

    def forward(self, x):
        if not self.training:
            return self.residual(x) * self.survival_prob + self.shortcut(x)
        if torch.rand((), device=x.device).item() < self.survival_prob:
            return self.residual(x) + self.shortcut(x)
        return self.shortcut(x)

    def extra_repr(self):
        return f"survival_prob={self.survival_prob:.4f}"


class StochasticDepthResNet(ResNetBackbone):
    def __init__(self, block, num_blocks, num_classes, bias):
        super().__init__(block, num_blocks, num_classes, stem_bias=True, bias=bias)
        # linear decay rule: p_l = 1 - (1 - p_L) * l / (L - 1), with l counted over all L blocks
        n = sum(num_blocks)
        survival = iter([1.0 - (1.0 - FINAL_SURVIVAL) * l / (n - 1) for l in range(n)])
        for stage in self.stages:
            for i, blk in enumerate(stage):
                stage[i] = StochasticDepth(blk, next(survival))


# no stochasticdepth152: the reference count table leaves it out
@register
def stochasticdepth18(num_classes=10):
    return StochasticDepthResNet(BasicBlock, (2, 2, 2, 2), num_classes, bias=True)


@register
def stochasticdepth34(num_classes=10):
    return StochasticDepthResNet(BasicBlock, (3, 4, 6, 3), num_classes, bias=True)


@register
def stochasticdepth50(num_classes=10):
    return StochasticDepthResNet(Bottleneck, (3, 4, 6, 3), num_classes, bias=False)


@register
def stochasticdepth101(num_classes=10):
    return StochasticDepthResNet(Bottleneck, (3, 4, 23, 3), num_classes, bias=False)
