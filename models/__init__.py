"""Model registry: every ``--arch`` name maps to a constructor taking ``num_classes``.

A family module defines one function per architecture, named as its ``--arch`` name, and
decorates it with a bare ``@register``::

    @register
    def resnet56(num_classes=10):
        return CifarResNet(56, num_classes)

so searching the code for an architecture's name finds its definition. The family of an
architecture is the name of the module that defines it. Every module of this package whose name
does not start with an underscore is imported once, here, so a new family only needs a new file;
building blocks shared by several families live in underscore modules (``_layers``,
``_blocks_resnet``).
"""
import importlib
import pkgutil

_REGISTRY = {}


class UnknownArchError(ValueError):
    """Raised for an ``--arch`` name that no family registered."""


def register(fn):
    """Decorator: register ``fn(num_classes=10) -> nn.Module`` under ``fn.__name__``."""
    if not callable(fn):
        raise TypeError(
            f"use a bare @register (the function's name is the --arch name), got {fn!r}")
    name = fn.__name__
    if name in _REGISTRY:
        raise RuntimeError(f"architecture {name!r} registered twice")
    fn.family = fn.__module__.rsplit(".", 1)[-1]
    _REGISTRY[name] = fn
    return fn


def names():
    """Sorted list of every registered architecture name."""
    return sorted(_REGISTRY)


def family(name):
    return _REGISTRY[name].family


def build(name, num_classes=10):
    """Construct architecture ``name`` with a ``num_classes``-way classifier."""
    if name not in _REGISTRY:
        raise UnknownArchError(f"unknown --arch {name!r}; known: {', '.join(names())}")
    return _REGISTRY[name](num_classes=num_classes)


for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")
