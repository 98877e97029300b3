"""Model registry: every ``--arch`` name maps to a constructor taking ``num_classes``.

A family module registers its constructors with ``@register("name")``; every module in this
package is imported once, here, so a new family only needs a new file.
"""
import importlib
import pkgutil

_REGISTRY = {}


class UnknownArchError(ValueError):
    """Raised for an ``--arch`` name that no family registered."""


def register(name, family=None):
    """Decorator: register ``fn(num_classes) -> nn.Module`` under ``name``."""
    def wrap(fn):
        if name in _REGISTRY:
            raise RuntimeError(f"architecture {name!r} registered twice")
        fn.family = family or fn.__module__.rsplit(".", 1)[-1]
        _REGISTRY[name] = fn
        return fn
    return wrap


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
