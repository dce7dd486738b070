"""Search spaces: op names, cell topology, genotype types and strings, and derivation rules.

    space = jnas.spaces.get("darts", op_names=...)   # or get("nb201")
    space.arch_shape        {"normal": (14, 8), "reduce": (14, 8)}; rows: space.edges, columns: space.op_names
    space.derive(mixing_weights) -> genotype;  genotype.to_string();  space.parse(string) -> genotype

Adding a space: write a module with a class that has the attributes of `SearchSpace` and register it below
(or from anywhere with `@jnas.spaces.register("name")`).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping, Protocol, runtime_checkable

import numpy as np

from jnas.spaces.darts import DartsGenotype, DartsSpace
from jnas.spaces.nb201 import NB201Genotype, NB201Space

Genotype = NB201Genotype | DartsGenotype


@runtime_checkable
class SearchSpace(Protocol):
    """What the rest of jnas relies on; every registered space provides it."""

    name: str

    @property
    def op_names(self) -> tuple[str, ...]: ...

    @property
    def edges(self) -> list[tuple[int, int]]: ...

    @property
    def num_edges(self) -> int: ...

    @property
    def edge_labels(self) -> tuple[str, ...]: ...

    @property
    def arch_shape(self) -> dict[str, tuple[int, int]]: ...

    def derive(self, weights: Mapping[str, Any]) -> Any: ...

    def parse(self, genotype_str: str) -> Any: ...

    def one_hot(self, genotype: Any) -> dict[str, np.ndarray]: ...


_REGISTRY: dict[str, Callable[..., SearchSpace]] = {}


def register(name: str) -> Callable[[Callable[..., SearchSpace]], Callable[..., SearchSpace]]:
    """Class decorator: makes `get(name, **options)` build the space with `factory(**options)`."""

    def decorator(factory: Callable[..., SearchSpace]) -> Callable[..., SearchSpace]:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"a search space named {name!r} is already registered ({_REGISTRY[name]!r})")
        _REGISTRY[name] = factory
        return factory

    return decorator


register("nb201")(NB201Space)
register("darts")(DartsSpace)


def names() -> tuple[str, ...]:
    """The registered space names."""
    return tuple(_REGISTRY)


def get(name: str, **options: Any) -> SearchSpace:
    """The search space called `name`, built with `options` (e.g. get("darts", op_names=[...]))."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown search space {name!r}; the known spaces are: {', '.join(_REGISTRY)}")
    factory = _REGISTRY[name]
    try:
        inspect.signature(factory).bind(**options)
    except TypeError as e:
        raise ValueError(
            f"search space {name!r} does not accept the options {sorted(options)}: {e}") from None
    return factory(**options)


def parse_genotype(genotype_str: str) -> Genotype:
    """Parses either an NB201 architecture string (`|op~0|+|...|`) or a DARTS `Genotype(...)` string.

    The format is recognised from the string: NB201 strings start with '|', DARTS strings with 'Genotype('.
    DARTS genotypes are checked against the 8 reference PRIMITIVES and their own node count; use
    `space.parse` to check against a particular space's options.
    """
    if not isinstance(genotype_str, str):
        raise ValueError(f"a genotype string must be a str, got {type(genotype_str).__name__}")
    text = genotype_str.strip()
    if text.startswith("|"):
        return NB201Space().parse(text)
    if text.startswith(("Genotype", "DartsGenotype")):
        return DartsGenotype.from_string(text)
    raise ValueError(
        f"cannot tell the format of genotype string {genotype_str!r}: an NB201 architecture string starts "
        f"with '|' (e.g. '|nor_conv_3x3~0|+|...|'), a DARTS genotype with 'Genotype(' "
        f"(e.g. \"Genotype(normal=[('sep_conv_3x3', 0), ...], normal_concat=[2, 3, 4, 5], ...)\")")


__all__ = [
    "DartsGenotype",
    "DartsSpace",
    "Genotype",
    "NB201Genotype",
    "NB201Space",
    "SearchSpace",
    "get",
    "names",
    "parse_genotype",
    "register",
]
