"""The DARTS cell search space (Liu et al., ICLR 2019; methods.md §0.3, §1.6).

A cell has two input states (s0 = output of cell k-2, s1 = output of cell k-1; states 0 and 1) and
`num_nodes` intermediate nodes (states 2, 3, ...). Intermediate node i takes one edge from every earlier
state, so with 4 nodes there are 2 + 3 + 4 + 5 = 14 edges, ordered node by node and, within a node, by input
state. Normal and reduction cells have separate mixing weights: {"normal": (14, 8), "reduce": (14, 8)}.

Genotype string: exactly the repr of quark0/darts' `Genotype` namedtuple,

    Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ...], normal_concat=[2, 3, 4, 5],
             reduce=[...], reduce_concat=[2, 3, 4, 5])

(on one line). Each cell lists 2 (op, input_state) pairs per intermediate node, node by node.
"""

from __future__ import annotations

import ast
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from jnas.spaces.nb201 import check_mixing_weights

PRIMITIVES: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)
NUM_NODES = 4
CELL_TYPES = ("normal", "reduce")

Pairs = tuple[tuple[str, int], ...]


class _DartsGenotypeFields(NamedTuple):
    normal: Pairs
    normal_concat: tuple[int, ...]
    reduce: Pairs
    reduce_concat: tuple[int, ...]


class DartsGenotype(_DartsGenotypeFields):
    """A discrete DARTS genotype: per cell type, 2 (op, input_state) pairs per node, and the concat states.

    The fields are stored as tuples whatever sequences they were built from, so genotypes are hashable
    (usable as static arguments and Flax module attributes) and equal however they were built. Iterating
    and indexing behave like the reference's lists. Construction only normalises types; `validate` checks
    the structure against a space (`DartsSpace.parse` and `DartsSpace.one_hot` call it).
    """

    __slots__ = ()

    def __new__(cls, normal: Sequence, normal_concat: Sequence, reduce: Sequence, reduce_concat: Sequence):
        return super().__new__(
            cls,
            _as_pairs(normal, "normal"),
            _as_concat(normal_concat, "normal_concat"),
            _as_pairs(reduce, "reduce"),
            _as_concat(reduce_concat, "reduce_concat"),
        )

    @classmethod
    def _make(cls, iterable):  # NamedTuple._make bypasses __new__; keep the normalisation for _replace.
        return cls(*iterable)

    @property
    def num_nodes(self) -> int:
        """Number of intermediate nodes (2 pairs each)."""
        return len(self.normal) // 2

    @classmethod
    def from_string(cls, genotype_str: str) -> DartsGenotype:
        """Parses the PyTorch repr, checking ops against all 8 PRIMITIVES; see `parse`."""
        return parse(genotype_str)

    def to_string(self) -> str:
        """Exactly the repr of the reference's `Genotype` namedtuple (lists, single-quoted op names)."""

        def cell(pairs: Pairs) -> str:
            return "[" + ", ".join(f"({op!r}, {j})" for op, j in pairs) + "]"

        def concat(states: tuple[int, ...]) -> str:
            return "[" + ", ".join(str(s) for s in states) + "]"

        return (f"Genotype(normal={cell(self.normal)}, normal_concat={concat(self.normal_concat)}, "
                f"reduce={cell(self.reduce)}, reduce_concat={concat(self.reduce_concat)})")

    def __str__(self) -> str:
        return self.to_string()

    def canonical(self) -> DartsGenotype:
        """The same cells with each node's two pairs sorted by (input_state, op).

        The pair order within a node (score order) does not change the network; `derive(one_hot(g))` returns
        `g.canonical()` because one-hot weights tie every kept edge.
        """

        def sort_nodes(pairs: Pairs) -> Pairs:
            nodes = [pairs[k:k + 2] for k in range(0, len(pairs), 2)]
            return tuple(pair for node in nodes for pair in sorted(node, key=lambda pair: (pair[1], pair[0])))

        return self._replace(normal=sort_nodes(self.normal), reduce=sort_nodes(self.reduce))

    def validate(self, op_names: Sequence[str] | None = PRIMITIVES, num_nodes: int | None = None) -> None:
        """Raises ValueError unless both cells are well formed.

        Checks: 2 pairs per node in both cells (`num_nodes` nodes; inferred from the normal cell when None),
        node i's inputs in 0..i+1, ops in `op_names` (any op when None), and concat states that are distinct
        intermediate states 2..num_nodes+1. Two pairs of one node may share an input state: GDAS's
        NASNet-space derivation can pick two ops on one edge (methods.md §11 item 4).
        """
        if num_nodes is None:
            num_nodes = self.num_nodes
        if num_nodes < 1:
            raise ValueError("the genotype's normal cell has no nodes; each node needs two (op, input) pairs")
        for cell_type in CELL_TYPES:
            pairs = getattr(self, cell_type)
            if len(pairs) != 2 * num_nodes:
                raise ValueError(
                    f"{cell_type} cell has {len(pairs)} (op, input) pairs; {num_nodes} intermediate nodes "
                    f"need {2 * num_nodes} (two per node)")
            for index, (op, j) in enumerate(pairs):
                node = index // 2
                if op_names is not None and op not in op_names:
                    raise ValueError(
                        f"unknown op {op!r} in the {cell_type} cell (node {node}); the space's ops are: "
                        f"{', '.join(op_names)}")
                if not 0 <= j < node + 2:
                    raise ValueError(
                        f"{cell_type} cell node {node} (state {node + 2}) takes input state {j}, but it can "
                        f"only take states 0..{node + 1} (0 = s0, 1 = s1, 2.. = earlier nodes)")
            concat = getattr(self, f"{cell_type}_concat")
            valid = range(2, num_nodes + 2)
            if not concat or len(set(concat)) != len(concat) or any(s not in valid for s in concat):
                raise ValueError(
                    f"{cell_type}_concat {list(concat)} must list distinct intermediate states in "
                    f"{valid.start}..{valid.stop - 1} (the standard is {list(valid)})")


def _as_pairs(pairs: Any, field: str) -> Pairs:
    try:
        result = []
        for pair in pairs:
            op, j = pair
            if not isinstance(op, str):
                raise ValueError(f"op {op!r} is not a string")
            result.append((op, _as_int(j)))
        return tuple(result)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"DartsGenotype.{field} must be a sequence of (op_name, input_state) pairs, e.g. "
            f"[('sep_conv_3x3', 0), ('skip_connect', 1), ...]; got {pairs!r} ({e})") from None


def _as_concat(states: Any, field: str) -> tuple[int, ...]:
    try:
        return tuple(_as_int(s) for s in states)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"DartsGenotype.{field} must be a sequence of state indices like [2, 3, 4, 5]; got {states!r} "
            f"({e})") from None


def _as_int(value: Any) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{value!r} is not an integer")
    return int(value)


_FIELDS = _DartsGenotypeFields._fields
_EXAMPLE = ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ...], normal_concat=[2, 3, 4, 5], "
            "reduce=[...], reduce_concat=[2, 3, 4, 5])")


def _literal_concat(node: ast.expr, field: str, text: str) -> list[int]:
    """A concat written as a list/tuple of ints or as `range(a, b)` (PC-DARTS and DrNAS write the latter)."""
    problem = f"{field} in {text!r} must be a list of ints or range(a, b); got {ast.unparse(node)!r}"
    if isinstance(node, ast.Call):
        if not (isinstance(node.func, ast.Name) and node.func.id == "range" and not node.keywords
                and 1 <= len(node.args) <= 3):
            raise ValueError(problem)
        try:
            args = [ast.literal_eval(arg) for arg in node.args]
        except ValueError:
            raise ValueError(problem) from None
        if not all(isinstance(a, int) and not isinstance(a, bool) for a in args):
            raise ValueError(problem)
        return list(range(*args))
    try:
        value = ast.literal_eval(node)
    except ValueError:
        raise ValueError(problem) from None
    if not isinstance(value, (list, tuple)):
        raise ValueError(problem)
    return list(value)


def parse(
    genotype_str: str, op_names: Sequence[str] | None = PRIMITIVES, num_nodes: int | None = None
) -> DartsGenotype:
    """Parses a DARTS genotype string with `ast` (never eval) and validates it.

    Accepted: `Genotype(normal=[...], normal_concat=[...], reduce=[...], reduce_concat=[...])` as printed by
    the reference code, with the arguments given by keyword (any order) or by position, tuples instead of
    lists, single or double quotes, any whitespace or line breaks, and a concat written as `range(2, 6)`.
    The call may also be named `DartsGenotype`. Validation: see `DartsGenotype.validate`.
    """
    if not isinstance(genotype_str, str):
        raise ValueError(f"a DARTS genotype string must be a str, got {type(genotype_str).__name__}")
    text = genotype_str.strip()
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as e:
        raise ValueError(
            f"DARTS genotype string {genotype_str!r} is not valid syntax ({e.msg}); expected {_EXAMPLE}"
        ) from None
    call = tree.body
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
            and call.func.id in ("Genotype", "DartsGenotype")):
        raise ValueError(
            f"DARTS genotype string {genotype_str!r} must be a call Genotype(...), like {_EXAMPLE}")
    if len(call.args) > len(_FIELDS) or any(isinstance(a, ast.Starred) for a in call.args):
        raise ValueError(f"Genotype(...) takes at most {len(_FIELDS)} plain arguments; got {genotype_str!r}")
    nodes: dict[str, ast.expr] = dict(zip(_FIELDS, call.args))
    for keyword in call.keywords:
        if keyword.arg not in _FIELDS:
            raise ValueError(
                f"unknown Genotype field {keyword.arg!r} in {genotype_str!r}; the fields are "
                f"{', '.join(_FIELDS)}")
        if keyword.arg in nodes:
            raise ValueError(f"Genotype field {keyword.arg!r} is given twice in {genotype_str!r}")
        nodes[keyword.arg] = keyword.value
    missing = [f for f in _FIELDS if f not in nodes]
    if missing:
        raise ValueError(f"Genotype string {genotype_str!r} lacks the field(s) {', '.join(missing)}")
    values = {}
    for cell_type in CELL_TYPES:
        try:
            values[cell_type] = ast.literal_eval(nodes[cell_type])
        except ValueError:
            raise ValueError(
                f"{cell_type} in {genotype_str!r} must be a literal list of (op_name, input_state) pairs; "
                f"got {ast.unparse(nodes[cell_type])!r}") from None
        field = f"{cell_type}_concat"
        values[field] = _literal_concat(nodes[field], field, genotype_str)
    genotype = DartsGenotype(**values)
    genotype.validate(op_names, num_nodes)
    return genotype


def derive_cell(cell_weights: np.ndarray, op_names: Sequence[str], num_nodes: int = NUM_NODES) -> Pairs:
    """quark0/darts `_parse` (model_search.py) on one cell's weights [num_edges, num_ops].

    Per node: score each incoming edge by its largest non-`none` weight, keep the two best edges
    (`sorted(..., key=-score)` is stable, so a tie goes to the lower input state), and on each kept edge take
    the first largest non-`none` op. Pairs are emitted in score order. Without `none` in `op_names` (DrNAS)
    every op counts.
    """
    candidates = [k for k, op in enumerate(op_names) if op != "none"]
    pairs = []
    start = 0
    for node in range(num_nodes):
        num_inputs = node + 2
        node_weights = cell_weights[start:start + num_inputs]
        scores = [max(node_weights[j][k] for k in candidates) for j in range(num_inputs)]
        for j in sorted(range(num_inputs), key=lambda j: -scores[j])[:2]:
            best = candidates[0]
            for k in candidates[1:]:
                if node_weights[j][k] > node_weights[j][best]:
                    best = k
            pairs.append((op_names[best], j))
        start += num_inputs
    return tuple(pairs)


def _validated_op_names(op_names: Sequence[str]) -> tuple[str, ...]:
    if isinstance(op_names, str):
        raise ValueError(f"op_names must be a sequence of op names, got the string {op_names!r}")
    op_names = tuple(op_names)
    unknown = [op for op in op_names if op not in PRIMITIVES]
    if unknown:
        raise ValueError(
            f"op_names has unknown op(s) {unknown}; the DARTS primitives are: {', '.join(PRIMITIVES)}")
    if len(set(op_names)) != len(op_names):
        raise ValueError(f"op_names {list(op_names)} lists an op more than once")
    reference_order = tuple(op for op in PRIMITIVES if op in op_names)
    if op_names != reference_order:
        raise ValueError(
            f"op_names must follow the reference PRIMITIVES order (it fixes the columns of the architecture "
            f"parameters): use {list(reference_order)} instead of {list(op_names)}")
    if not any(op != "none" for op in op_names):
        raise ValueError("op_names needs at least one op other than 'none'")
    return op_names


class DartsSpace:
    """The DARTS cell space: normal and reduction cells, each with `num_nodes` intermediate nodes.

    Options: `num_nodes` (intermediate nodes, 4), `op_names` (a subset of PRIMITIVES in reference order; DrNAS
    drops "none").
    """

    name = "darts"

    def __init__(self, num_nodes: int = NUM_NODES, op_names: Sequence[str] = PRIMITIVES):
        if isinstance(num_nodes, bool) or not isinstance(num_nodes, (int, np.integer)) or num_nodes < 1:
            raise ValueError(
                f"num_nodes (intermediate nodes per cell) must be a positive int, got {num_nodes!r}")
        self._num_nodes = int(num_nodes)
        self._op_names = _validated_op_names(op_names)
        self._edges = [(node + 2, j) for node in range(self._num_nodes) for j in range(node + 2)]

    @property
    def op_names(self) -> tuple[str, ...]:
        return self._op_names

    @property
    def num_nodes(self) -> int:
        """Intermediate nodes per cell (states 2 .. num_nodes + 1)."""
        return self._num_nodes

    @property
    def edges(self) -> list[tuple[int, int]]:
        """(to_state, from_state) for each row; states 0, 1 are s0, s1 and states 2.. the nodes."""
        return list(self._edges)

    @property
    def num_edges(self) -> int:
        return len(self._edges)

    @property
    def edge_labels(self) -> tuple[str, ...]:
        """Row labels in state numbering: "2<-s0", "2<-s1", "3<-s0", ..., "3<-2", ..."""
        names = {0: "s0", 1: "s1"}
        return tuple(f"{i}<-{names.get(j, j)}" for i, j in self._edges)

    @property
    def arch_shape(self) -> dict[str, tuple[int, int]]:
        shape = (self.num_edges, len(self._op_names))
        return {cell_type: shape for cell_type in CELL_TYPES}

    @property
    def concat(self) -> tuple[int, ...]:
        """The states concatenated into the cell output: all intermediate nodes."""
        return tuple(range(2, self._num_nodes + 2))

    def derive(self, weights: Mapping[str, Any]) -> DartsGenotype:
        """The DARTS top-2 rule (methods.md §1.6) on already normalised weights, e.g. softmax(α)."""
        arrays = check_mixing_weights(weights, self.arch_shape, self.name)
        cells = {c: derive_cell(arrays[c], self._op_names, self._num_nodes) for c in CELL_TYPES}
        return DartsGenotype(cells["normal"], self.concat, cells["reduce"], self.concat)

    def parse(self, genotype_str: str) -> DartsGenotype:
        return parse(genotype_str, self._op_names, self._num_nodes)

    def one_hot(self, genotype: DartsGenotype | str) -> dict[str, np.ndarray]:
        """float32 mixing weights under which the supernet computes exactly `genotype`'s cells.

        The rows of kept edges get a 1 on their op; the other rows are one-hot on "none" when the space has
        it (zero output, as an absent edge), else all zero. Two pairs on the same edge put a 1 on each op
        (a weight of 2 if they repeat the op), since the mixed edge sums its ops. The concat lists are not
        represented: the supernet always concatenates all nodes.
        """
        if isinstance(genotype, str):
            genotype = self.parse(genotype)
        if not isinstance(genotype, DartsGenotype):
            raise ValueError(f"expected a DartsGenotype or its string, got {type(genotype).__name__}")
        genotype.validate(self._op_names, self._num_nodes)
        row_of = {edge: row for row, edge in enumerate(self._edges)}
        result = {}
        for cell_type in CELL_TYPES:
            weights = np.zeros((self.num_edges, len(self._op_names)), np.float32)
            kept_rows = set()
            for index, (op, j) in enumerate(getattr(genotype, cell_type)):
                row = row_of[(index // 2 + 2, j)]
                weights[row, self._op_names.index(op)] += 1.0
                kept_rows.add(row)
            if "none" in self._op_names:
                for row in set(range(self.num_edges)) - kept_rows:
                    weights[row, self._op_names.index("none")] = 1.0
            result[cell_type] = weights
        return result

    def __repr__(self) -> str:
        return f"DartsSpace(num_nodes={self._num_nodes}, op_names={self._op_names})"
