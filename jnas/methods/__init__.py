"""Method registry: `config.method` names one of these.

A method says how architecture parameters become mixing weights, how a genotype is derived from them,
and which spaces it supports. The shared search step (`jnas.search`) does the rest, so adding a method
means adding one file here and one `register` line.
"""

from __future__ import annotations

from jnas.methods.base import Method
from jnas.methods.darts import DARTS

_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in _REGISTRY:
        raise ValueError(f"method {method.name!r} is registered twice")
    _REGISTRY[method.name] = method
    return method


def get(name: str) -> Method:
    """The method called `name`; a clear error lists the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown method {name!r} (config.method); known methods: {', '.join(sorted(_REGISTRY))}"
        ) from None


def names() -> list[str]:
    return sorted(_REGISTRY)


register(DARTS())

__all__ = ["Method", "get", "names", "register"]
