"""The NAS-Bench-201 cell search space (Dong & Yang, ICLR 2020; methods.md §7.1-7.3).

A cell has 4 nodes: node 0 is the cell input and node 3 its output. Every pair j < i is joined by one edge
that carries one of 5 ops, so there are 6 edges and 5^6 = 15,625 cells. The rows of the architecture
parameters follow AutoDL's edge keys `"i<-j"` in lexicographic order: 1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2.

Architecture string (AutoDL `Structure.tostr`): one `|op~j|...|` group per node 1..3, inputs in increasing j,
groups joined by `+`:

    |nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|

Derivation is the AutoDL rule of every NB201 search model: per edge, the argmax over all 5 ops, `none`
included (methods.md §7.5 and §11 item 3), so a derived cell may contain `none`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

OP_NAMES: tuple[str, ...] = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
NUM_NODES = 4
ARCH_KEY = "cell"
_EXAMPLE = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"


def _edges(num_nodes: int) -> list[tuple[int, int]]:
    """(to_node, from_node) in AutoDL order: node-major, inputs increasing."""
    return [(i, j) for i in range(1, num_nodes) for j in range(i)]


def _num_nodes_for_edges(num_edges: int) -> int:
    """Inverse of len(_edges(n)) = n(n-1)/2; raises for counts that are not triangular."""
    num_nodes = 2
    while len(_edges(num_nodes)) < num_edges:
        num_nodes += 1
    if len(_edges(num_nodes)) != num_edges:
        raise ValueError(
            f"{num_edges} edge ops do not form a complete NB201-style cell: a cell with n nodes has "
            f"n(n-1)/2 edges (6 for the standard 4-node cell)")
    return num_nodes


def _as_index(value: Any) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"input index {value!r} is not an integer")
    return int(value)


@dataclasses.dataclass(frozen=True)
class NB201Genotype:
    """A discrete NB201 cell: `nodes[i - 1]` holds the (op, input) pairs of node i, inputs 0..i-1 in order.

    Construction validates the structure: node i >= 1 has exactly one op per input j < i, listed in
    increasing j, and every op is one of `OP_NAMES`. Lists are accepted and stored as tuples, so genotypes
    are hashable and compare equal however they were built.
    """

    nodes: tuple[tuple[tuple[str, int], ...], ...]

    def __post_init__(self):
        try:
            nodes = tuple(tuple((op, _as_index(j)) for op, j in node) for node in self.nodes)
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"NB201Genotype.nodes must hold, per node 1, 2, ..., a sequence of (op, input) pairs, "
                f"e.g. ((('nor_conv_3x3', 0),), ...); got {self.nodes!r} ({e})") from None
        if not nodes:
            raise ValueError("an NB201 genotype needs at least one node after the input node")
        for i, node in enumerate(nodes, start=1):
            for op, _ in node:
                if op not in OP_NAMES:
                    raise ValueError(
                        f"unknown NB201 op {op!r} at node {i}; the NB201 ops are: {', '.join(OP_NAMES)}")
            inputs = [j for _, j in node]
            if inputs != list(range(i)):
                raise ValueError(
                    f"node {i} must take exactly one op from each of the inputs 0..{i - 1}, in increasing "
                    f"order; got inputs {inputs}")
        object.__setattr__(self, "nodes", nodes)

    @property
    def num_nodes(self) -> int:
        """Number of nodes including the input node (4 for NB201)."""
        return len(self.nodes) + 1

    @property
    def edge_ops(self) -> tuple[str, ...]:
        """The op of every edge, in the reference edge order 1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2."""
        return tuple(op for node in self.nodes for op, _ in node)

    @classmethod
    def from_edge_ops(cls, edge_ops: Sequence[str]) -> NB201Genotype:
        """The genotype whose edges, in reference order, carry `edge_ops`."""
        edge_ops = tuple(edge_ops)
        num_nodes = _num_nodes_for_edges(len(edge_ops))
        ops = iter(edge_ops)
        return cls(tuple(tuple((next(ops), j) for j in range(i)) for i in range(1, num_nodes)))

    @classmethod
    def from_string(cls, arch_str: str, num_nodes: int = NUM_NODES) -> NB201Genotype:
        """Parses an NB201 architecture string; see `parse`."""
        return parse(arch_str, num_nodes)

    def to_string(self) -> str:
        """The AutoDL architecture string `|op~0|+|op~0|op~1|+|op~0|op~1|op~2|`."""
        return "+".join("|" + "|".join(f"{op}~{j}" for op, j in node) + "|" for node in self.nodes)

    def __str__(self) -> str:
        return self.to_string()


def parse(arch_str: str, num_nodes: int = NUM_NODES) -> NB201Genotype:
    """Parses an NB201 architecture string strictly.

    Accepted: the AutoDL format `|op~j|...|+|...|+|...|`, surrounding whitespace, and the pairs of a node in
    any order (they are sorted by input). Errors: a number of `+`-separated groups other than
    `num_nodes - 1`, a group not enclosed in `|` bars, a token not of the form `op~j`, an unknown op, an
    input index outside 0..i-1 for node i, and a missing or repeated input.
    """
    if not isinstance(arch_str, str):
        raise ValueError(f"an NB201 architecture string must be a str, got {type(arch_str).__name__}")
    groups = arch_str.strip().split("+")
    if len(groups) != num_nodes - 1:
        raise ValueError(
            f"NB201 string {arch_str!r} has {len(groups)} '+'-separated node groups; a {num_nodes}-node "
            f"cell needs {num_nodes - 1} (nodes 1..{num_nodes - 1}), e.g. {_EXAMPLE!r}")
    nodes = []
    for i, group in enumerate(groups, start=1):
        if len(group) < 2 or not (group.startswith("|") and group.endswith("|")):
            raise ValueError(
                f"node {i} group {group!r} in {arch_str!r} must be enclosed in '|' bars, like "
                f"'|op~0|op~1|'")
        pairs = []
        for token in group[1:-1].split("|"):
            op, tilde, index = token.partition("~")
            if not (tilde and op and index):
                raise ValueError(
                    f"token {token!r} of node {i} in {arch_str!r} is not of the form 'op~input' "
                    f"(e.g. 'nor_conv_3x3~0')")
            if op not in OP_NAMES:
                raise ValueError(
                    f"unknown NB201 op {op!r} at node {i} in {arch_str!r}; the NB201 ops are: "
                    f"{', '.join(OP_NAMES)}")
            if not (index.isascii() and index.isdigit()):
                raise ValueError(
                    f"input index {index!r} of node {i} in {arch_str!r} is not a non-negative integer")
            j = int(index)
            if j >= i:
                raise ValueError(
                    f"node {i} in {arch_str!r} takes input {j}, but node {i} can only take inputs "
                    f"0..{i - 1}")
            pairs.append((op, j))
        inputs = sorted(j for _, j in pairs)
        if inputs != list(range(i)):
            raise ValueError(
                f"node {i} in {arch_str!r} must take exactly one op from each of the inputs 0..{i - 1}; "
                f"got inputs {inputs}")
        nodes.append(tuple(sorted(pairs, key=lambda pair: pair[1])))
    return NB201Genotype(tuple(nodes))


def check_mixing_weights(
    weights: Mapping[str, Any], arch_shape: Mapping[str, tuple[int, int]], space_name: str
) -> dict[str, np.ndarray]:
    """Host float64 copies of `weights` after checking their keys, shapes and finiteness.

    float64 is exact for float32/bfloat16 inputs, so comparisons (argmax, ties) are unchanged.
    """
    if not isinstance(weights, Mapping):
        raise ValueError(
            f"{space_name} mixing weights must be a mapping with keys {sorted(arch_shape)}, "
            f"got {type(weights).__name__}")
    if set(weights) != set(arch_shape):
        raise ValueError(
            f"{space_name} mixing weights have keys {sorted(weights)}, expected exactly "
            f"{sorted(arch_shape)}")
    arrays = {}
    for key, shape in arch_shape.items():
        array = np.asarray(weights[key]).astype(np.float64)
        if array.shape != tuple(shape):
            raise ValueError(
                f"{space_name} mixing weights[{key!r}] have shape {array.shape}, expected {tuple(shape)} "
                f"(rows = edges in reference order, columns = ops)")
        if not np.all(np.isfinite(array)):
            raise ValueError(
                f"{space_name} mixing weights[{key!r}] contain NaN or inf; the search has probably "
                f"diverged")
        arrays[key] = array
    return arrays


class NB201Space:
    """NAS-Bench-201: one cell type shared by all 15 cells; mixing weights {"cell": (6, 5)}."""

    name = "nb201"

    def __init__(self):
        self._edges = _edges(NUM_NODES)

    @property
    def op_names(self) -> tuple[str, ...]:
        return OP_NAMES

    @property
    def num_nodes(self) -> int:
        """Nodes per cell, including the input node (node 0) and the output node (node 3)."""
        return NUM_NODES

    @property
    def edges(self) -> list[tuple[int, int]]:
        """(to_node, from_node) for each row of the mixing weights."""
        return list(self._edges)

    @property
    def num_edges(self) -> int:
        return len(self._edges)

    @property
    def edge_labels(self) -> tuple[str, ...]:
        """AutoDL's edge keys ("1<-0", ...), one per row."""
        return tuple(f"{i}<-{j}" for i, j in self._edges)

    @property
    def arch_shape(self) -> dict[str, tuple[int, int]]:
        return {ARCH_KEY: (self.num_edges, len(OP_NAMES))}

    def derive(self, weights: Mapping[str, Any]) -> NB201Genotype:
        """Per-edge argmax over all ops, `none` included; a tie goes to the first op, as in torch/numpy."""
        cell = check_mixing_weights(weights, self.arch_shape, self.name)[ARCH_KEY]
        return NB201Genotype.from_edge_ops([OP_NAMES[k] for k in np.argmax(cell, axis=1)])

    def parse(self, arch_str: str) -> NB201Genotype:
        return parse(arch_str, NUM_NODES)

    def one_hot(self, genotype: NB201Genotype | str) -> dict[str, np.ndarray]:
        """float32 mixing weights under which the supernet computes exactly `genotype`."""
        if isinstance(genotype, str):
            genotype = self.parse(genotype)
        if not isinstance(genotype, NB201Genotype):
            raise ValueError(f"expected an NB201Genotype or its string, got {type(genotype).__name__}")
        if genotype.num_nodes != NUM_NODES:
            raise ValueError(f"the genotype has {genotype.num_nodes} nodes, the NB201 cell has {NUM_NODES}")
        cell = np.zeros(self.arch_shape[ARCH_KEY], np.float32)
        for row, op in enumerate(genotype.edge_ops):
            cell[row, OP_NAMES.index(op)] = 1.0
        return {ARCH_KEY: cell}

    def __repr__(self) -> str:
        return "NB201Space()"
