"""Method registry: `config.method` names one of these.

A method says how architecture parameters become mixing weights, how a genotype is derived from them,
and which spaces it supports. The shared search step (`jnas.search`) does the rest, so adding a method
means adding one file here and one `register` line.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from jnas.methods.base import Clock, Method, OpMask, Stage, prune_mask
from jnas.methods.darts import DARTS
from jnas.methods.drnas import DrNAS
from jnas.methods.edas import EDAS
from jnas.methods.gdas import GDAS
from jnas.methods.pcdarts import PCDARTS
from jnas.methods.sigmoid import Sigmoid

_REGISTRY: dict[str, type[Method]] = {}


def register(method: type[Method]) -> type[Method]:
    if method.name in _REGISTRY:
        raise ValueError(f"method {method.name!r} is registered twice")
    _REGISTRY[method.name] = method
    return method


def get(name: str) -> type[Method]:
    """The method class called `name`; a clear error lists the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown method {name!r} (config.method); known methods: {', '.join(sorted(_REGISTRY))}"
        ) from None


def build(config: ml_collections.ConfigDict, space: Any, op_mask: OpMask | None = None) -> Method:
    """The method `config.method`, configured by `config.method_options`, on `space`."""
    return get(config.method)(config, space, op_mask)


def names() -> list[str]:
    return sorted(_REGISTRY)


for _method in (DARTS, PCDARTS, GDAS, DrNAS, EDAS, Sigmoid):
    register(_method)

__all__ = ["Clock", "Method", "OpMask", "Stage", "build", "get", "names", "prune_mask", "register"]
