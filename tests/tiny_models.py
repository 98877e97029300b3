"""Narrow members of two zoo families, for the torchrun tests (tests/torchrun_audit.py registers
them in its processes; a test process adds them to the registry only for the test's duration,
so the registry's own tests never see them): the real classes, at a width a CPU
trains in seconds. One drops residual branches at random (stochastic depth), the other keeps
parameters that no forward uses (nasnet's adapters), the two reasons a step can leave
parameters without gradient."""
import models
from models._blocks_resnet import BasicBlock
from models.nasnet import NASNetA
from models.stochasticdepth import StochasticDepthResNet


def tiny_stochasticdepth(num_classes=10):
    return StochasticDepthResNet(BasicBlock, (1, 1, 1, 1), num_classes, bias=True,
                                 widths=(4, 8, 8, 8))


def tiny_nasnet(num_classes=10):
    return NASNetA(repeat=1, reductions=1, filters=4, num_classes=num_classes)


TINY = {f.__name__: f for f in (tiny_stochasticdepth, tiny_nasnet)}


def register_all():
    for fn in TINY.values():
        models.register(fn)
