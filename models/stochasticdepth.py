"""ResNets with stochastic depth (Huang et al. 2016), pytorch-cifar100 layout.

During training each residual branch survives with probability p_l, decaying linearly from 1 at
the first block to 0.5 at the last; a dropped branch is not computed, so the block is its
shortcut alone. In eval mode every branch runs and is scaled by p_l, its expected contribution.
As in the reference (and the authors' Torch code) there is no ReLU after the sum. The basic-block
variants keep the convolution biases and the bottleneck ones do not, again as in the reference.

The survival draws of a training forward come from the network's own CPU generator
(``random_generator``, seeded from torch's generator when the network is built, so
``torch.manual_seed`` reproduces them): one draw for all blocks per forward, read on the host, so no
device sync; every process under torchrun makes the same draws (the same blocks run everywhere, as
one process would with the global batch, and SyncBatchNorm's collectives match); its state is part
of a checkpoint. Under ``--compile`` each pattern of dropped blocks is a graph of its own.

Note: while a branch is dropped its parameters take no part in the graph, so after backward their
``.grad`` stays ``None`` (or unchanged) for that step.
"""
import torch
import torch.nn as nn

from . import register
from ._blocks_resnet import STAGE_WIDTHS, BasicBlock, Bottleneck, ResNetBackbone

FINAL_SURVIVAL = 0.5


class StochasticDepth(nn.Module):
    """Takes over a block's ``residual`` and ``shortcut`` (same parameter names) and gates the
    branch; ``survives`` is set by the network before each training forward."""

    drops_branches = True  # a training forward may leave this block's branch out of the graph

    def __init__(self, block, survival_prob):
        super().__init__()
        self.residual = block.residual
        self.shortcut = block.shortcut
        self.survival_prob = survival_prob
        self.survives = True

    def forward(self, x):
        if not self.training:
            return self.residual(x) * self.survival_prob + self.shortcut(x)
        if self.survives:
            return self.residual(x) + self.shortcut(x)
        return self.shortcut(x)

    def extra_repr(self):
        return f"survival_prob={self.survival_prob:.4f}"


class StochasticDepthResNet(ResNetBackbone):
    def __init__(self, block, num_blocks, num_classes, bias, widths=STAGE_WIDTHS):
        super().__init__(block, num_blocks, num_classes, stem_bias=True, bias=bias, widths=widths)
        # linear decay rule: p_l = 1 - (1 - p_L) * l / (L - 1), with l counted over all L blocks
        n = sum(num_blocks)
        survival = iter([1.0 - (1.0 - FINAL_SURVIVAL) * l / (n - 1) for l in range(n)])
        for stage in self.stages:
            for i, blk in enumerate(stage):
                stage[i] = StochasticDepth(blk, next(survival))
        self.survival = torch.tensor([b.survival_prob for b in self.blocks()], dtype=torch.float64,
                                     device="cpu")
        # drawn after the weights, so their initialisation is unchanged
        seed = int(torch.randint(2 ** 62, (), device="cpu"))
        self.random_generator = torch.Generator().manual_seed(seed)

    def forward(self, x):
        if self.training:
            survives = (torch.rand(len(self.survival), generator=self.random_generator,
                                   dtype=torch.float64) < self.survival).tolist()
            for block, keep in zip(self.blocks(), survives):
                block.survives = keep
        return super().forward(x)


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
