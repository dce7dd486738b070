"""Macro networks of the NB201 and DARTS spaces, and the discrete networks built from a genotype.

The macro skeletons (`nb201_forward`, `darts_cells_forward`) are shared with the supernets in
`jnas.nn.supernet`: a discrete network and a supernet differ only in the cell they plug in. Submodules are
named identically in both (`cell_3/edge_5/sep_conv_3x3/...`), so the parameters of a discrete network built
with `search_mode=True` are a subset of the supernet's, which is what the one-hot equivalence relies on.

Cell naming: cell `i` of the macro network is `cell_{i}`; with `scan_cells=True` a run of identical
consecutive cells `i..j` is one scanned module `cells_{i}_{j}` whose variables have a leading axis of length
j-i+1. `convert_cell_layout` moves variables between the two layouts. NB201 numbers its 17 blocks like
AutoDL's `TinyNetwork.cells` (ResNet reduction blocks are `resblock_5` and `resblock_11` for N=5).
"""

from __future__ import annotations

import collections
import re
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jnas.nn.ops import (
    Array,
    Dtype,
    FactorizedReduce,
    Identity,
    ReLUConvBN,
    ResNetBlock,
    batch_norm,
    conv2d,
    drop_path,
    linear,
    make_op,
)

# NB201 edge order (to_node, from_node): "i<-j" keys sorted lexicographically, the row order of alpha.
NB201_EDGES: tuple[tuple[int, int], ...] = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))


# ------------------------------------------------------------------------------------------------------------
# Shared pieces


def apply_cells(
    cell: nn.Module,
    carry: Any,
    cell_args: tuple[Any, ...],
    step: Callable[..., Any],
    *,
    length: int | None,
    remat: bool,
) -> Any:
    """Runs `carry = step(cell, carry, *cell_args)` once, or `length` times with `nn.scan`.

    `cell_args` (mixing weights, a drop-path rate) are broadcast to every scanned cell. Static flags such as
    `train` belong in the `step` closure. With `remat`, each cell's activations are recomputed in the
    backward pass. Scanned variables are stacked on a new leading axis.
    """

    def body(module: nn.Module, c: Any, *args: Any) -> tuple[Any, None]:
        return step(module, c, *args), None

    fn = body
    if remat:
        # prevent_cse is only needed outside scan; inside it blocks useful XLA optimisations.
        fn = nn.remat(fn, prevent_cse=length is None)
    if length is not None:
        fn = nn.scan(
            fn,
            variable_axes={"params": 0, "batch_stats": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=(nn.broadcast,) * len(cell_args),
            length=length,
        )
    carry, _ = fn(cell, carry, *cell_args)
    return carry


def classifier_head(x: Array, num_classes: int, dtype: Dtype) -> Array:
    """Global average pooling and a PyTorch-initialised linear layer; float32 logits."""
    features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    logits = linear(num_classes, features.shape[-1], dtype=dtype, name="classifier")(features.astype(dtype))
    return logits.astype(jnp.float32)


class DiscreteEdge(nn.Module):
    """The ops a genotype puts on one edge of a discrete cell, summed.

    Usually one op; a DARTS genotype may take the same input twice with different ops, and then both live on
    this edge. Each op is named by its op name (a repeat of the same op gets a `_2` suffix), the same path a
    supernet's `MixedOp` gives it. With a drop-path rate, every op output except identities is drop-pathed
    (DARTS model.py).
    """

    op_names: tuple[str, ...]
    stride: int = 1
    affine: bool = True
    pool_bn: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool, drop_path_rate: float | Array | None = None) -> Array:
        counts: collections.Counter[str] = collections.Counter()
        out = None
        for op_name in self.op_names:
            counts[op_name] += 1
            module_name = op_name if counts[op_name] == 1 else f"{op_name}_{counts[op_name]}"
            op = make_op(
                op_name,
                x.shape[-1],
                self.stride,
                self.affine,
                self.pool_bn,
                dtype=self.dtype,
                module_name=module_name,
            )
            y = op(x, train)
            if drop_path_rate is not None and not isinstance(op, Identity):
                y = drop_path(y, drop_path_rate, self.make_rng("dropout"))
            out = y if out is None else out + y
        return out


# ------------------------------------------------------------------------------------------------------------
# NAS-Bench-201


def nb201_forward(
    x: Array,
    train: bool,
    *,
    make_cell: Callable[[int, str], nn.Module],
    cell_args: tuple[Any, ...],
    C: int,
    N: int,
    num_classes: int,
    dtype: Dtype,
    remat: bool,
    scan_cells: bool,
) -> Array:
    """AutoDL `TinyNetwork` skeleton; call from a compact method (submodules attach to the caller).

    stem conv3x3(3->C)+BN, N cells at C, ResNet block to 2C, N cells, ResNet block to 4C, N cells, BN+ReLU,
    global pooling, linear. `make_cell(channels, name)` builds a cell that is called as
    `cell(x, *cell_args, train=...)`.
    """
    x = jnp.asarray(x, dtype)
    x = conv2d(C, 3, padding=1, dtype=dtype, name="stem_conv")(x)
    x = batch_norm(train, affine=True, dtype=dtype, name="stem_bn")(x)

    def step(cell: nn.Module, h: Array, *args: Any) -> Array:
        return cell(h, *args, train=train)

    channels, index = C, 0
    for stage in range(3):
        if stage:
            channels *= 2
            x = ResNetBlock(channels, stride=2, dtype=dtype, name=f"resblock_{index}")(x, train)
            index += 1
        if scan_cells and N > 1:
            cell = make_cell(channels, f"cells_{index}_{index + N - 1}")
            x = apply_cells(cell, x, cell_args, step, length=N, remat=remat)
        else:
            for i in range(index, index + N):
                x = apply_cells(
                    make_cell(channels, f"cell_{i}"), x, cell_args, step, length=None, remat=remat
                )
        index += N
    x = nn.relu(batch_norm(train, affine=True, dtype=dtype, name="lastact_bn")(x))
    return classifier_head(x, num_classes, dtype)


def validate_nb201_edges(edges: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    edges = tuple((int(to), int(frm)) for to, frm in edges)
    if not edges or any(not 0 <= frm < to for to, frm in edges):
        raise ValueError(
            f"NB201 edges must be (to_node, from_node) pairs with to_node > from_node >= 0, got {edges}."
        )
    num_nodes = max(to for to, _ in edges) + 1
    missing = [node for node in range(1, num_nodes) if all(to != node for to, _ in edges)]
    if missing:
        raise ValueError(f"NB201 edges {edges} leave nodes {missing} without inputs.")
    return edges


class NB201InferCell(nn.Module):
    """AutoDL `InferCell`: one op per edge (`none` included); node i sums its incoming edges; output node 3.

    `affine=False` gives the search-network version of the same cell (BN without scale/shift in the ops).
    """

    edge_ops: tuple[str, ...]
    edges: tuple[tuple[int, int], ...] = NB201_EDGES
    affine: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        if len(self.edge_ops) != len(self.edges):
            raise ValueError(f"NB201 cell has {len(self.edges)} edges but got {len(self.edge_ops)} ops.")
        edges = validate_nb201_edges(self.edges)
        nodes = [x]
        for node in range(1, max(to for to, _ in edges) + 1):
            terms = [
                DiscreteEdge((op_name,), affine=self.affine, dtype=self.dtype, name=f"edge_{k}")(
                    nodes[frm], train
                )
                for k, ((to, frm), op_name) in enumerate(zip(edges, self.edge_ops))
                if to == node
            ]
            nodes.append(sum(terms[1:], terms[0]))
        return nodes[-1]


def nb201_edge_ops(genotype: Any) -> tuple[str, ...]:
    """The 6 op names of an NB201 genotype (`.edge_ops`) or of a plain sequence, in edge order."""
    edge_ops = getattr(genotype, "edge_ops", genotype)
    if isinstance(edge_ops, str) or not all(isinstance(op, str) for op in edge_ops):
        raise ValueError(
            f"Expected an NB201 genotype with .edge_ops (6 op names in edge order), got {genotype!r}; "
            "parse arch strings with jnas.spaces.get('nb201').parse(...)."
        )
    edge_ops = tuple(edge_ops)
    if len(edge_ops) != len(NB201_EDGES):
        raise ValueError(
            f"An NB201 genotype has {len(NB201_EDGES)} edge ops, got {len(edge_ops)}: {edge_ops}."
        )
    return edge_ops


class NB201Network(nn.Module):
    """NAS-Bench-201 network of one cell (AutoDL `TinyNetwork` with `InferCell`s).

    Attributes:
      genotype: NB201 genotype (`.edge_ops`: 6 op names in edge order 1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2).
      C, N: stem channels and cells per stage (16 and 5 in the benchmark).
      num_classes: 10, 100 or 120.
      search_mode: build the cells with the search settings (BN affine=False inside the ops), matching the
        supernet so that the supernet at the genotype's one-hot mixing weights equals this network.
      dtype: activation dtype; parameters stay float32.
      remat, scan_cells: rematerialise each cell / scan the N identical cells of a stage.
    """

    genotype: Any
    C: int = 16
    N: int = 5
    num_classes: int = 10
    search_mode: bool = False
    dtype: Dtype = jnp.float32
    remat: bool = False
    scan_cells: bool = False

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        edge_ops = nb201_edge_ops(self.genotype)
        return nb201_forward(
            x,
            train,
            make_cell=lambda channels, name: NB201InferCell(
                edge_ops, affine=not self.search_mode, dtype=self.dtype, name=name
            ),
            cell_args=(),
            C=self.C,
            N=self.N,
            num_classes=self.num_classes,
            dtype=self.dtype,
            remat=self.remat,
            scan_cells=self.scan_cells,
        )


# ------------------------------------------------------------------------------------------------------------
# DARTS space


class CellSpec(NamedTuple):
    """Position and widths of one DARTS cell (quark0/darts `Network.__init__` bookkeeping)."""

    index: int
    C_prev_prev: int
    C_prev: int
    C: int
    reduction: bool
    reduction_prev: bool


def darts_cell_specs(
    C: int,
    layers: int,
    stem_channels: tuple[int, int],
    multipliers: tuple[int, int] = (4, 4),
    reduction_prev: bool = False,
) -> list[CellSpec]:
    """Cells of a DARTS macro network: reductions at layers//3 and 2*layers//3 double C.

    Args:
      C: channels of the first cells' nodes.
      layers: number of cells.
      stem_channels: channels of (s0, s1) entering cell 0.
      multipliers: output channels / C of (normal, reduction) cells, i.e. the length of their concat lists.
      reduction_prev: whether cell 0's s0 has twice s1's resolution (ImageNet stem).
    """
    specs = []
    C_prev_prev, C_prev, C_curr = stem_channels[0], stem_channels[1], C
    for index in range(layers):
        reduction = index in (layers // 3, 2 * layers // 3)
        if reduction:
            C_curr *= 2
        specs.append(CellSpec(index, C_prev_prev, C_prev, C_curr, reduction, reduction_prev))
        reduction_prev = reduction
        C_prev_prev, C_prev = C_prev, multipliers[int(reduction)] * C_curr
    return specs


def _scan_groups(
    specs: Sequence[CellSpec], normal_multiplier: int, split_after: int | None
) -> list[list[CellSpec]]:
    """Maximal runs of cells that nn.scan can stack: normal cells whose s0, s1 and output share a shape."""

    def scannable(spec: CellSpec) -> bool:
        return (
            not spec.reduction
            and not spec.reduction_prev
            and spec.C_prev_prev == spec.C_prev == normal_multiplier * spec.C
        )

    groups: list[list[CellSpec]] = []
    for spec in specs:
        prev = groups[-1][-1] if groups else None
        if (
            prev is not None
            and scannable(spec)
            and scannable(prev)
            and prev.C == spec.C
            and prev.index != split_after
        ):
            groups[-1].append(spec)
        else:
            groups.append([spec])
    return groups


def darts_cells_forward(
    s0: Array,
    s1: Array,
    train: bool,
    *,
    specs: Sequence[CellSpec],
    make_cell: Callable[[CellSpec, str], nn.Module],
    cell_args: Callable[[CellSpec], tuple[Any, ...]],
    remat: bool,
    scan_cells: bool,
    normal_multiplier: int = 4,
    tap_index: int | None = None,
) -> tuple[Array, Array | None]:
    """Runs the DARTS cell stack `s0, s1 = s1, cell(s0, s1, *cell_args(spec))`; call from a compact method.

    Returns the last cell's output and the output of cell `tap_index` (the auxiliary head's input) or None.
    """

    def step(cell: nn.Module, carry: tuple[Array, Array], *args: Any) -> tuple[Array, Array]:
        h0, h1 = carry
        return h1, cell(h0, h1, *args, train=train)

    if scan_cells:
        groups = _scan_groups(specs, normal_multiplier, split_after=tap_index)
    else:
        groups = [[spec] for spec in specs]
    tapped = None
    for group in groups:
        first, last = group[0], group[-1]
        if len(group) > 1:
            cell = make_cell(first, f"cells_{first.index}_{last.index}")
            s0, s1 = apply_cells(cell, (s0, s1), cell_args(first), step, length=len(group), remat=remat)
        else:
            s0, s1 = apply_cells(
                make_cell(first, f"cell_{first.index}"),
                (s0, s1),
                cell_args(first),
                step,
                length=None,
                remat=remat,
            )
        if last.index == tap_index:
            tapped = s1
    return s1, tapped


def darts_preprocess(
    s0: Array, s1: Array, C: int, reduction_prev: bool, affine: bool, dtype: Dtype, train: bool
) -> tuple[Array, Array]:
    """preprocess0 (FactorizedReduce after a reduction cell, else ReLU-conv1x1-BN) and preprocess1."""
    if reduction_prev:
        s0 = FactorizedReduce(C, affine=affine, dtype=dtype, name="preprocess0")(s0, train)
    else:
        s0 = ReLUConvBN(C, 1, affine=affine, dtype=dtype, name="preprocess0")(s0, train)
    s1 = ReLUConvBN(C, 1, affine=affine, dtype=dtype, name="preprocess1")(s1, train)
    return s0, s1


def darts_edge_index(node: int, input_state: int) -> int:
    """Edge of intermediate node `node` (0-based) from state `input_state` in the 14-edge reference order."""
    return sum(2 + m for m in range(node)) + input_state


class DartsGenotypeCells(NamedTuple):
    """A DARTS genotype as hashable tuples: (op_name, input_state) pairs, 2 per node, and concat lists."""

    normal: tuple[tuple[str, int], ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[tuple[str, int], ...]
    reduce_concat: tuple[int, ...]

    @classmethod
    def from_genotype(cls, genotype: Any) -> "DartsGenotypeCells":
        try:
            normal, normal_concat = genotype.normal, genotype.normal_concat
            reduce, reduce_concat = genotype.reduce, genotype.reduce_concat
        except AttributeError:
            raise ValueError(
                f"Expected a DARTS Genotype(normal, normal_concat, reduce, reduce_concat), got {genotype!r}; "
                "parse genotype strings with jnas.spaces.get('darts').parse(...)."
            ) from None
        cells = []
        for kind, ops, concat in (("normal", normal, normal_concat), ("reduce", reduce, reduce_concat)):
            ops = tuple((str(op), int(j)) for op, j in ops)
            concat = tuple(int(i) for i in concat)
            if not ops or len(ops) % 2:
                raise ValueError(f"The {kind} cell needs 2 (op, input) pairs per node, got {len(ops)} pairs.")
            num_nodes = len(ops) // 2
            for pair_index, (_, j) in enumerate(ops):
                if not 0 <= j < 2 + pair_index // 2:
                    raise ValueError(
                        f"{kind} pair {pair_index} reads state {j}, which node {pair_index // 2} cannot see."
                    )
            if not concat or any(not 0 <= i < 2 + num_nodes for i in concat):
                raise ValueError(f"{kind}_concat {concat} must index states 0..{1 + num_nodes}.")
            cells.append((ops, concat))
        return cls(cells[0][0], cells[0][1], cells[1][0], cells[1][1])


class DartsCell(nn.Module):
    """quark0/darts eval `Cell`: each node sums two ops of earlier states; output = concat of `concat`.

    `affine=False, pool_bn=True` gives the same discrete cell with the search settings, and
    `drop_path_rate=None` disables drop path (always so in search mode).
    """

    ops: tuple[tuple[str, int], ...]
    concat: tuple[int, ...]
    features: int
    reduction: bool
    reduction_prev: bool
    affine: bool = True
    pool_bn: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, s0: Array, s1: Array, drop_path_rate: float | Array | None, train: bool) -> Array:
        s0, s1 = darts_preprocess(s0, s1, self.features, self.reduction_prev, self.affine, self.dtype, train)
        states = [s0, s1]
        for node in range(len(self.ops) // 2):
            ops_by_input: dict[int, list[str]] = {}
            for op_name, j in self.ops[2 * node : 2 * node + 2]:
                ops_by_input.setdefault(j, []).append(op_name)
            terms = [
                DiscreteEdge(
                    tuple(names),
                    stride=2 if self.reduction and j < 2 else 1,
                    affine=self.affine,
                    pool_bn=self.pool_bn,
                    dtype=self.dtype,
                    name=f"edge_{darts_edge_index(node, j)}",
                )(states[j], train, drop_path_rate)
                for j, names in ops_by_input.items()
            ]
            states.append(sum(terms[1:], terms[0]))
        return jnp.concatenate([states[i] for i in self.concat], axis=-1)


class AuxiliaryHead(nn.Module):
    """DARTS auxiliary head: ReLU, AvgPool(5), conv1x1->128, BN, ReLU, conv2x2->768, [BN], ReLU, linear.

    CIFAR (8x8 input): pool_stride=3, final_bn=True. ImageNet (7x7 input): pool_stride=2, final_bn=False,
    because quark0/darts comments that BN out to match the paper's experiments.
    """

    num_classes: int
    pool_stride: int = 3
    final_bn: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        # The reference applies an in-place ReLU to the tapped cell output; later cells start with ReLU
        # anyway, so the out-of-place version here gives the same network.
        x = nn.relu(x)
        # No padding, so count_include_pad does not matter.
        x = nn.avg_pool(x, (5, 5), (self.pool_stride, self.pool_stride))
        x = conv2d(128, 1, dtype=self.dtype, name="conv_1")(x)
        x = nn.relu(batch_norm(train, affine=True, dtype=self.dtype, name="bn_1")(x))
        x = conv2d(768, 2, dtype=self.dtype, name="conv_2")(x)
        if self.final_bn:
            x = batch_norm(train, affine=True, dtype=self.dtype, name="bn_2")(x)
        x = nn.relu(x).reshape(x.shape[0], -1)
        return linear(self.num_classes, x.shape[-1], dtype=self.dtype, name="classifier")(x).astype(
            jnp.float32
        )


def _drop_path_arg(train: bool, search_mode: bool, default: float, override: float | Array | None):
    rate = default if override is None else override
    if not train or search_mode or (isinstance(rate, (int, float)) and rate == 0):
        return None
    return rate


class DartsNetworkCIFAR(nn.Module):
    """quark0/darts `NetworkCIFAR`: the evaluation network of a DARTS-space genotype.

    Attributes:
      genotype: Genotype(normal, normal_concat, reduce, reduce_concat).
      C, layers: initial channels and number of cells (36 and 20 in the DARTS protocol).
      num_classes: number of classes.
      auxiliary: attach the auxiliary head after cell 2*layers//3; training calls then return
        (logits, aux_logits). Its parameters are created at init whatever `train` is.
      drop_path_rate: default drop-path probability in training; the call argument overrides it, so a schedule
        can pass the per-epoch rate as a traced scalar without recompiling.
      search_mode: the same discrete network with the search settings (BN affine=False in the cell ops and
        preprocessing, BN(affine=False) after pools when `pool_bn`, no drop path, no auxiliary head), so that
        the DARTS supernet at the genotype's one-hot mixing weights equals it.
      pool_bn: BN after pools in search mode (quark0/darts search networks: True).
      stem_multiplier: stem width / C.
      dtype, remat, scan_cells: activation dtype; rematerialise each cell; scan runs of identical
        normal cells.
    """

    genotype: Any
    C: int = 36
    layers: int = 20
    num_classes: int = 10
    auxiliary: bool = False
    drop_path_rate: float = 0.0
    search_mode: bool = False
    pool_bn: bool = True
    stem_multiplier: int = 3
    dtype: Dtype = jnp.float32
    remat: bool = False
    scan_cells: bool = False

    @nn.compact
    def __call__(
        self, x: Array, train: bool, drop_path_rate: float | Array | None = None
    ) -> Array | tuple[Array, Array]:
        """Logits, or (logits, aux_logits) when training with the auxiliary head.

        Drop path (training, rate > 0) draws from the 'dropout' rng stream.
        """
        cells = DartsGenotypeCells.from_genotype(self.genotype)
        if self.search_mode and self.auxiliary:
            raise ValueError(
                "search_mode builds the search network, which has no auxiliary head; set auxiliary=False."
            )
        affine = not self.search_mode
        pool_bn = self.pool_bn and self.search_mode
        rate = _drop_path_arg(train, self.search_mode, self.drop_path_rate, drop_path_rate)

        x = jnp.asarray(x, self.dtype)
        stem_channels = self.stem_multiplier * self.C
        s = conv2d(stem_channels, 3, padding=1, dtype=self.dtype, name="stem_conv")(x)
        s = batch_norm(train, affine=True, dtype=self.dtype, name="stem_bn")(s)

        def make_cell(spec: CellSpec, name: str) -> nn.Module:
            ops, concat = (
                (cells.reduce, cells.reduce_concat) if spec.reduction else (cells.normal, cells.normal_concat)
            )
            return DartsCell(
                ops,
                concat,
                spec.C,
                spec.reduction,
                spec.reduction_prev,
                affine=affine,
                pool_bn=pool_bn,
                dtype=self.dtype,
                name=name,
            )

        multipliers = (len(cells.normal_concat), len(cells.reduce_concat))
        out, aux_input = darts_cells_forward(
            s,
            s,
            train,
            specs=darts_cell_specs(self.C, self.layers, (stem_channels, stem_channels), multipliers),
            make_cell=make_cell,
            cell_args=lambda spec: (rate,),
            remat=self.remat,
            scan_cells=self.scan_cells,
            normal_multiplier=multipliers[0],
            tap_index=2 * self.layers // 3 if self.auxiliary else None,
        )
        logits = classifier_head(out, self.num_classes, self.dtype)
        if self.auxiliary and (train or self.is_initializing()):
            aux_logits = AuxiliaryHead(
                self.num_classes, pool_stride=3, final_bn=True, dtype=self.dtype, name="auxiliary_head"
            )(aux_input, train)
            if train:
                return logits, aux_logits
        return logits


class DartsNetworkImageNet(nn.Module):
    """quark0/darts `NetworkImageNet` (mobile setting, 224x224 input): three stride-2 stem convs, then cells.

    The first cell treats its predecessor as a reduction cell. The reference's final AvgPool(7) sees a 7x7 map
    at 224x224 input, so it is written as global average pooling. Attributes as in `DartsNetworkCIFAR` (no
    search mode: the ImageNet network is only an evaluation network).
    """

    genotype: Any
    C: int = 48
    layers: int = 14
    num_classes: int = 1000
    auxiliary: bool = False
    drop_path_rate: float = 0.0
    dtype: Dtype = jnp.float32
    remat: bool = False
    scan_cells: bool = False

    @nn.compact
    def __call__(
        self, x: Array, train: bool, drop_path_rate: float | Array | None = None
    ) -> Array | tuple[Array, Array]:
        """Logits, or (logits, aux_logits) when training with the auxiliary head.

        Drop path (training, rate > 0) draws from the 'dropout' rng stream.
        """
        cells = DartsGenotypeCells.from_genotype(self.genotype)
        rate = _drop_path_arg(train, False, self.drop_path_rate, drop_path_rate)
        dt, C = self.dtype, self.C

        x = jnp.asarray(x, dt)
        s0 = conv2d(C // 2, 3, stride=2, padding=1, dtype=dt, name="stem0_conv_1")(x)
        s0 = nn.relu(batch_norm(train, affine=True, dtype=dt, name="stem0_bn_1")(s0))
        s0 = conv2d(C, 3, stride=2, padding=1, dtype=dt, name="stem0_conv_2")(s0)
        s0 = batch_norm(train, affine=True, dtype=dt, name="stem0_bn_2")(s0)
        s1 = conv2d(C, 3, stride=2, padding=1, dtype=dt, name="stem1_conv")(nn.relu(s0))
        s1 = batch_norm(train, affine=True, dtype=dt, name="stem1_bn")(s1)

        def make_cell(spec: CellSpec, name: str) -> nn.Module:
            ops, concat = (
                (cells.reduce, cells.reduce_concat) if spec.reduction else (cells.normal, cells.normal_concat)
            )
            return DartsCell(ops, concat, spec.C, spec.reduction, spec.reduction_prev, dtype=dt, name=name)

        multipliers = (len(cells.normal_concat), len(cells.reduce_concat))
        out, aux_input = darts_cells_forward(
            s0,
            s1,
            train,
            specs=darts_cell_specs(C, self.layers, (C, C), multipliers, reduction_prev=True),
            make_cell=make_cell,
            cell_args=lambda spec: (rate,),
            remat=self.remat,
            scan_cells=self.scan_cells,
            normal_multiplier=multipliers[0],
            tap_index=2 * self.layers // 3 if self.auxiliary else None,
        )
        logits = classifier_head(out, self.num_classes, dt)
        if self.auxiliary and (train or self.is_initializing()):
            aux_logits = AuxiliaryHead(
                self.num_classes, pool_stride=2, final_bn=False, dtype=dt, name="auxiliary_head"
            )(aux_input, train)
            if train:
                return logits, aux_logits
        return logits


# ------------------------------------------------------------------------------------------------------------
# Variable layout with and without scan

_STACKED = re.compile(r"^cells_(\d+)_(\d+)$")


def unstack_cells(variables: Mapping[str, Any]) -> dict[str, Any]:
    """Scanned layout -> per-cell layout: every `cells_{i}_{j}` entry becomes `cell_{i}`..`cell_{j}`.

    Args:
      variables: {collection: tree} as returned by `model.init` (e.g. {"params": ..., "batch_stats": ...}).
    """
    out = {}
    for collection, tree in variables.items():
        new_tree = {}
        for key, value in tree.items():
            match = _STACKED.match(key)
            if match is None:
                new_tree[key] = value
                continue
            first, last = int(match.group(1)), int(match.group(2))
            for offset, i in enumerate(range(first, last + 1)):
                new_tree[f"cell_{i}"] = jax.tree.map(lambda leaf, o=offset: leaf[o], value)
        out[collection] = new_tree
    return out


def convert_cell_layout(variables: Mapping[str, Any], like: Mapping[str, Any]) -> dict[str, Any]:
    """Re-lays out `variables` (scanned or not) like `like` (variables or their shapes from `jax.eval_shape`).

    Lets variables of a network built with `scan_cells=True` be applied by one built without it, and the
    other way round. Only the top-level cell entries of each collection are restacked; `like` decides which
    collections and keys the result has.
    """
    flat = unstack_cells(variables)
    out = {}
    for collection, like_tree in like.items():
        tree = flat.get(collection, {})
        new_tree = {}
        for key in like_tree:
            match = _STACKED.match(key)
            if match is None:
                new_tree[key] = tree[key]
            else:
                parts = [tree[f"cell_{i}"] for i in range(int(match.group(1)), int(match.group(2)) + 1)]
                new_tree[key] = jax.tree.map(lambda *leaves: jnp.stack(leaves), *parts)
        out[collection] = new_tree
    return out


def count_params(params: Any) -> int:
    """Number of scalars in a params tree (arrays or ShapeDtypeStructs)."""
    return int(sum(np.prod(leaf.shape, dtype=np.int64) for leaf in jax.tree.leaves(params)))
