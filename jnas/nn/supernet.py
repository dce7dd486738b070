"""Supernets: every candidate op on every edge, mixed by weights that are an INPUT of the forward pass.

`build_supernet(space, model_config, num_classes)` returns a Flax module called as
`model(x, mixing_weights, train)`, with `mixing_weights` a dict keyed like `space.arch_shape` (rows = edges in
reference order, columns = ops in `space.op_names` order). The architecture never lives in the Flax variables,
so weight optimisers, weight decay and clipping cannot touch it (methods.md §1.2, §9.1).

Search networks follow the references:
* NB201: DrNAS `201-space/search_model.py` / AutoDL `search_model_darts.py` TinyNetwork: stem, three stages of
N
  search cells with ResNet reduction blocks, BN+ReLU, pooling, linear (methods.md §7.2). Cell ops use BN
  affine=False and bias-free convs; avg_pool has no BN.
* DARTS: quark0/darts `cnn/model_search.py` Network (methods.md §0.3): cell ops and preprocessing use BN
  affine=False; pooling ops get BN(affine=False) when `pool_bn`. With `stem="imagenet"`, the stem of
  PC-DARTS `model_search_imagenet.py` / DrNAS `DARTS-space/model_search_imagenet.py` (methods.md §2.4, §4.6):
  three stride-2 3x3 convs (224 -> 28) of stem_multiplier * C channels, the first cell treating its s0 as
  the output of a reduction cell; the classifier (global average pooling, linear) is the same.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from jnas.nn.networks import (
    CellSpec,
    validate_nb201_edges,
    classifier_head,
    darts_cell_specs,
    darts_cells_forward,
    darts_edge_index,
    darts_preprocess,
    nb201_forward,
)
from jnas.nn.ops import Array, Dtype, batch_norm, channel_shuffle, conv2d, make_op

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float64": jnp.float64}  # float64: tests


class MixedOp(nn.Module):
    """A supernet edge: sum_o w[o] * op_o(x) over the candidate ops (DARTS eq. 2).

    Weights may be any real values (softmax, sigmoid, Dirichlet samples, straight-through one-hots). Each op
    is a submodule named by its op name, so a discrete network with the same names has a subset of these
    parameters.

    Attributes:
      op_names: candidate ops, in mixing-weight column order.
      stride: 2 on the input edges of DARTS reduction cells.
      affine: BN scale/shift inside the ops (False in every reference search network).
      pool_bn: BN(affine=False) after pooling ops.
      partial_channels: K of PC-DARTS / DrNAS. With K > 1 only the first C/K channels go through the ops; the
        rest bypass them (2x2 max-pooled on stride-2 edges), are concatenated back and channel-shuffled with K
        groups (methods.md §2.1). K = 1 is the plain weighted sum.
      kept_ops: column indices of the ops this edge still has (DrNAS progressive pruning); the others are not
        built and their weights are ignored. None keeps all.
      sampled: the weights are a (straight-through) one-hot and only the selected op runs, through
        `nn.switch` on an unbatched index (GDAS), so the edge costs one op, not all of them.
      zero_terms: with `sampled`, add the other ops' weights as scalars (their forward value is 0): AutoDL's
        NB201 GDAS cell, which lets every architecture parameter get a gradient (methods.md §3.1).
    """

    op_names: tuple[str, ...]
    stride: int = 1
    affine: bool = False
    pool_bn: bool = False
    partial_channels: int = 1
    kept_ops: tuple[int, ...] | None = None
    sampled: bool = False
    zero_terms: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, weights: Array, train: bool) -> Array:
        if weights.shape != (len(self.op_names),):
            raise ValueError(
                f"MixedOp over {len(self.op_names)} ops got mixing weights of shape {weights.shape}."
            )
        k = self.partial_channels
        channels = x.shape[-1]
        if k < 1 or channels % k:
            raise ValueError(
                f"partial_channels={k} must be >= 1 and divide the {channels} channels of the edge."
            )
        kept = tuple(range(len(self.op_names))) if self.kept_ops is None else tuple(self.kept_ops)
        x_ops = x[..., : channels // k] if k > 1 else x
        weights = weights.astype(_mixing_dtype(self.dtype))
        ops = [make_op(self.op_names[i], x_ops.shape[-1], self.stride, self.affine, self.pool_bn,
                       dtype=self.dtype, module_name=self.op_names[i]) for i in kept]
        if self.sampled:
            out = self._sampled(ops, kept, x_ops, weights, train)
        else:
            out = None
            for i, op in zip(kept, ops):
                y = weights[i] * op(x_ops, train)
                out = y if out is None else out + y
        return _merge_partial_channels(out.astype(self.dtype), x, k)

    def _sampled(self, ops, kept, x_ops, weights, train):
        # Branches must leave the variables with one structure, so every op is built at init.
        if self.is_initializing():
            for op in ops:
                op(x_ops, train)
        kept_weights = weights[jnp.asarray(kept)]
        index = jnp.argmax(kept_weights)
        branches = [(lambda module, h, op=op: op(h, train)) for op in ops]
        out = nn.switch(index, branches, self, x_ops) * kept_weights[index]
        if self.zero_terms:
            out = out + (jnp.sum(kept_weights) - kept_weights[index])
        return out


def _mixing_dtype(dtype: Dtype) -> Dtype:
    """The dtype edges are weighted in: at least float32, also under bf16 activations.

    A mixing weight's gradient is a sum over the whole batch of (cotangent x op output). Summed in bf16 it
    was 10% off for one edge of 2048 values (tests/test_nn.py), and on the NB201 supernet (C=16, batch 64)
    the architecture gradient was 66% off and picked float32's best op on 2 of 6 edges; with the products
    in float32, 20% and 5 of 6 (the rest is the bf16 activations themselves). The weighted outputs are cast
    back to the activation dtype at the edge's output, so only the products and their sums are float32.
    """
    return jnp.promote_types(dtype, jnp.float32)


def _merge_partial_channels(out: Array, x: Array, k: int) -> Array:
    """PC-DARTS: the ops' output on the first C/K channels of `x`, then the other channels (2x2 max-pooled on
    stride-2 edges), channel-shuffled with K groups; `out` itself when K = 1."""
    if k == 1:
        return out
    bypass = x[..., x.shape[-1] // k :]
    if out.shape[1:3] != x.shape[1:3]:
        bypass = nn.max_pool(bypass, (2, 2), (2, 2))
    return channel_shuffle(jnp.concatenate([out, bypass], axis=-1), k)


def fused_mixed_ops(cell: nn.Module, x: Array, edges: list[tuple[int, Array, tuple[int, ...]]],
                    op_names: tuple[str, ...], train: bool, *, stride: int = 1, affine: bool = False,
                    pool_bn: bool = False, partial_channels: int = 1, dtype: Dtype = jnp.float32) -> list[Array]:
    """The `MixedOp`s `edge_{k}` of `cell` that all read `x`, computed together; call from `cell`'s compact
    method (not while initialising: the unfused edges create the variables).

    `edges` lists (k, the edge's mixing weights, the op columns it keeps). Each op runs once for all of its
    edges, vmapped over their stacked variables, so its convolutions become one convolution with the
    edges' kernels side by side (grouped, for depthwise and pointwise ones) and its BatchNorms one
    reduction; parameter-free ops (none, skip, pooling without BN) and everything that does not depend on
    an edge's variables (the pooling before a BN) run once. An NB201 cell then runs 6 convolutions instead
    of 12, a DARTS cell 60 instead of 168: a supernet step on a GPU is bound by launching such small
    kernels, not by arithmetic. The variables are the `MixedOp`s' own, at their paths (read from the
    cell's variables; the updated BatchNorm statistics are written back there), so the fused and unfused
    cells are the same function of the same tree, up to float rounding. Returns the edges' outputs.
    """
    k_channels = partial_channels
    x_ops = x[..., : x.shape[-1] // k_channels] if k_channels > 1 else x
    variables = cell.variables
    write_stats = train and cell.is_mutable_collection("batch_stats")
    edge_stats = {k: dict(variables.get("batch_stats", {}).get(f"edge_{k}", {})) for k, _, _ in edges}
    outs: dict[int, Array | None] = {k: None for k, _, _ in edges}
    for i, name in enumerate(op_names):
        users = [(k, weights) for k, weights, kept in edges if i in kept]
        if not users:
            continue
        op = make_op(name, x_ops.shape[-1], stride, affine, pool_bn, dtype=dtype, detached=True)
        per_edge = [{col: tree[f"edge_{k}"][name] for col, tree in variables.items()
                     if name in tree.get(f"edge_{k}", {})} for k, _ in users]
        if not per_edge[0]:
            ys = [op.apply({}, x_ops, train)] * len(users)
        else:
            stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *per_edge)
            if write_stats:
                y, new = jax.vmap(lambda v: op.apply(v, x_ops, train, mutable=["batch_stats"]))(stacked)
                for n, (k, _) in enumerate(users):
                    edge_stats[k][name] = jax.tree.map(lambda leaf, n=n: leaf[n], new["batch_stats"])
            else:
                y = jax.vmap(lambda v: op.apply(v, x_ops, train))(stacked)
            ys = [y[n] for n in range(len(users))]
        for (k, weights), y in zip(users, ys):
            term = weights.astype(_mixing_dtype(dtype))[i] * y
            outs[k] = term if outs[k] is None else outs[k] + term
    if write_stats:
        for k, stats in edge_stats.items():
            cell.put_variable("batch_stats", f"edge_{k}", stats)
    return [_merge_partial_channels(outs[k].astype(dtype), x, k_channels) for k, _, _ in edges]


def _all_ops(num_ops: int, kept_ops: tuple[tuple[int, ...], ...] | None, edge: int) -> tuple[int, ...]:
    return tuple(range(num_ops)) if kept_ops is None else tuple(kept_ops[edge])


def _weighted_edge_sum(terms: list[tuple[int, Array]], edge_weights: Array | None) -> Array:
    """A node: the sum of its incoming edges, each scaled by its edge weight (PC-DARTS β) when given."""
    if edge_weights is not None:
        terms = [(k, (edge_weights[k].astype(_mixing_dtype(t.dtype)) * t).astype(t.dtype)) for k, t in terms]
    out = terms[0][1]
    for _, t in terms[1:]:
        out = out + t
    return out


def _edge_kept_ops(kept_ops: tuple[tuple[int, ...], ...] | None, edge: int) -> tuple[int, ...] | None:
    return None if kept_ops is None else kept_ops[edge]


class NB201SearchCell(nn.Module):
    """NB201 search cell: a `MixedOp` on each of the 6 edges; node i sums its incoming edges; output node 3.

    Edge k is the submodule `edge_{k}` and uses row k of the cell's mixing weights (and entry k of the edge
    weights, PC-DARTS's normalised β, when given).
    """

    op_names: tuple[str, ...]
    edges: tuple[tuple[int, int], ...]
    partial_channels: int = 1
    kept_ops: tuple[tuple[int, ...], ...] | None = None
    sampled: bool = False
    zero_terms: bool = False
    dtype: Dtype = jnp.float32
    fuse_edges: bool = False

    @nn.compact
    def __call__(self, x: Array, cell_weights: Array, edge_weights: Array | None, train: bool) -> Array:
        edges = validate_nb201_edges(self.edges)
        if self.fuse_edges and not self.sampled and not self.is_initializing():
            return self._fused(x, edges, cell_weights, edge_weights, train)
        nodes = [x]
        for node in range(1, max(to for to, _ in edges) + 1):
            terms = [
                (k, MixedOp(
                    self.op_names, partial_channels=self.partial_channels,
                    kept_ops=_edge_kept_ops(self.kept_ops, k), sampled=self.sampled,
                    zero_terms=self.zero_terms, dtype=self.dtype, name=f"edge_{k}",
                )(nodes[frm], cell_weights[k], train))
                for k, (to, frm) in enumerate(edges)
                if to == node
            ]
            nodes.append(_weighted_edge_sum(terms, edge_weights))
        return nodes[-1]

    def _fused(self, x, edges, cell_weights, edge_weights, train):
        """The same cell, the edges leaving each node computed together (`fused_mixed_ops`)."""
        nodes, terms = [x], {}
        for source in range(max(to for to, _ in edges)):
            leaving = [(k, cell_weights[k], _all_ops(len(self.op_names), self.kept_ops, k))
                       for k, (_, frm) in enumerate(edges) if frm == source]
            outs = fused_mixed_ops(self, nodes[source], leaving, self.op_names, train,
                                   partial_channels=self.partial_channels, dtype=self.dtype)
            for (k, _, _), out in zip(leaving, outs):
                terms.setdefault(edges[k][0], []).append((k, out))
            # Node source + 1 reads only nodes up to `source`: complete. Terms in edge order, as unfused.
            nodes.append(_weighted_edge_sum(sorted(terms[source + 1], key=lambda t: t[0]), edge_weights))
        return nodes[-1]


class DartsSearchCell(nn.Module):
    """DARTS search cell: preprocess s0/s1 to C channels, `num_nodes` nodes over all earlier states, concat.

    Node i sums `MixedOp`s over states 0..i+1 (edges `edge_{k}` in the reference order; stride 2 from s0/s1 in
    reduction cells).
    """

    op_names: tuple[str, ...]
    num_nodes: int
    features: int
    reduction: bool
    reduction_prev: bool
    pool_bn: bool = True
    partial_channels: int = 1
    kept_ops: tuple[tuple[int, ...], ...] | None = None
    sampled: bool = False
    zero_terms: bool = False
    dtype: Dtype = jnp.float32
    fuse_edges: bool = False

    @nn.compact
    def __call__(self, s0: Array, s1: Array, cell_weights: Array, edge_weights: Array | None,
                 train: bool) -> Array:
        s0, s1 = darts_preprocess(s0, s1, self.features, self.reduction_prev, False, self.dtype, train)
        if self.fuse_edges and not self.sampled and not self.is_initializing():
            return self._fused([s0, s1], cell_weights, edge_weights, train)
        states = [s0, s1]
        for node in range(self.num_nodes):
            terms = [
                (darts_edge_index(node, j), MixedOp(
                    self.op_names,
                    stride=2 if self.reduction and j < 2 else 1,
                    pool_bn=self.pool_bn,
                    partial_channels=self.partial_channels,
                    kept_ops=_edge_kept_ops(self.kept_ops, darts_edge_index(node, j)),
                    sampled=self.sampled,
                    zero_terms=self.zero_terms,
                    dtype=self.dtype,
                    name=f"edge_{darts_edge_index(node, j)}",
                )(h, cell_weights[darts_edge_index(node, j)], train))
                for j, h in enumerate(states)
            ]
            states.append(_weighted_edge_sum(terms, edge_weights))
        return jnp.concatenate(states[2:], axis=-1)

    def _fused(self, states, cell_weights, edge_weights, train):
        """The same cell, the edges leaving each state computed together (`fused_mixed_ops`)."""
        terms: dict[int, list] = {}
        for source in range(self.num_nodes + 1):
            leaving = [(darts_edge_index(node, source), node) for node in range(max(0, source - 1), self.num_nodes)]
            outs = fused_mixed_ops(
                self, states[source],
                [(k, cell_weights[k], _all_ops(len(self.op_names), self.kept_ops, k)) for k, _ in leaving],
                self.op_names, train, stride=2 if self.reduction and source < 2 else 1, pool_bn=self.pool_bn,
                partial_channels=self.partial_channels, dtype=self.dtype)
            for (k, node), out in zip(leaving, outs):
                terms.setdefault(node, []).append((k, out))
            if source >= 1:  # node source - 1 reads states 0..source: complete
                states.append(_weighted_edge_sum(terms[source - 1], edge_weights))
        return jnp.concatenate(states[2:], axis=-1)


# Per cell type, per edge, the op columns still built: (("normal", ((0, 2), ...)), ...). A tuple of tuples
# because Flax module attributes must be hashable.
KeptOps = tuple[tuple[str, tuple[tuple[int, ...], ...]], ...] | None


def kept_ops_attribute(kept_ops: Mapping[str, Any] | None) -> KeptOps:
    """`{cell_type: [[op columns of edge 0], ...]}` (or a boolean mask [edges, ops]) as a module attribute."""
    if kept_ops is None:
        return None
    out = []
    for key in sorted(kept_ops):
        rows = kept_ops[key]
        out.append((key, tuple(
            tuple(int(i) for i, keep in enumerate(row) if keep) if _is_mask_row(row) else tuple(int(i) for i in row)
            for row in rows)))
    return tuple(out)


def _is_mask_row(row: Any) -> bool:
    values = list(row)
    return bool(values) and all(isinstance(v, (bool,)) or getattr(v, "dtype", None) == bool for v in values)


def _kept_for(kept_ops: KeptOps, key: str) -> tuple[tuple[int, ...], ...] | None:
    if kept_ops is None:
        return None
    return dict(kept_ops)[key]


def _check_mixing_weights(
    mixing_weights: Mapping[str, Array], arch_shape: Mapping[str, tuple[int, int]],
    edge_weights: Mapping[str, Array] | None = None,
) -> None:
    if not isinstance(mixing_weights, Mapping) or set(mixing_weights) != set(arch_shape):
        got = sorted(mixing_weights) if isinstance(mixing_weights, Mapping) else type(mixing_weights).__name__
        raise ValueError(f"mixing_weights must be a dict with keys {sorted(arch_shape)}, got {got}.")
    for key, shape in arch_shape.items():
        if tuple(mixing_weights[key].shape) != tuple(shape):
            raise ValueError(
                f"mixing_weights[{key!r}] must have shape {tuple(shape)} (edges, ops), "
                f"got {tuple(mixing_weights[key].shape)}."
            )
    if edge_weights is not None:
        if set(edge_weights) != set(arch_shape):
            raise ValueError(f"edge_weights must be a dict with keys {sorted(arch_shape)}, got {sorted(edge_weights)}.")
        for key, (num_edges, _) in arch_shape.items():
            if tuple(edge_weights[key].shape) != (num_edges,):
                raise ValueError(f"edge_weights[{key!r}] must have shape ({num_edges},), "
                                 f"got {tuple(edge_weights[key].shape)}.")


class NB201Supernet(nn.Module):
    """The DARTS supernet on NAS-Bench-201; all 3N search cells share mixing_weights["cell"] [6, ops]."""

    op_names: tuple[str, ...]
    edges: tuple[tuple[int, int], ...]
    C: int = 16
    N: int = 5
    num_classes: int = 10
    partial_channels: int = 1
    kept_ops: KeptOps = None
    sampled: bool = False
    zero_terms: bool = False
    dtype: Dtype = jnp.float32
    remat: bool = False
    scan_cells: bool = False
    fuse_edges: bool = False

    @nn.compact
    def __call__(self, x: Array, mixing_weights: Mapping[str, Array], train: bool,
                 edge_weights: Mapping[str, Array] | None = None) -> Array:
        _check_mixing_weights(mixing_weights, {"cell": (len(self.edges), len(self.op_names))}, edge_weights)
        return nb201_forward(
            x,
            train,
            make_cell=lambda channels, name: NB201SearchCell(
                self.op_names, self.edges, self.partial_channels, _kept_for(self.kept_ops, "cell"),
                self.sampled, self.zero_terms, self.dtype, self.fuse_edges, name=name
            ),
            cell_args=(mixing_weights["cell"], None if edge_weights is None else edge_weights["cell"]),
            C=self.C,
            N=self.N,
            num_classes=self.num_classes,
            dtype=self.dtype,
            remat=self.remat,
            scan_cells=self.scan_cells,
        )


class DartsSupernet(nn.Module):
    """quark0/darts search `Network`; normal cells use mixing_weights["normal"], reductions ["reduce"]."""

    op_names: tuple[str, ...]
    C: int = 16
    layers: int = 8
    num_classes: int = 10
    num_nodes: int = 4
    stem_multiplier: int = 3
    pool_bn: bool = True
    partial_channels: int = 1
    kept_ops: KeptOps = None
    sampled: bool = False
    zero_terms: bool = False
    dtype: Dtype = jnp.float32
    remat: bool = False
    scan_cells: bool = False
    fuse_edges: bool = False
    stem: str = "cifar"  # "cifar": conv3x3 + BN; "imagenet": three stride-2 convs (STEMS)

    @nn.compact
    def __call__(self, x: Array, mixing_weights: Mapping[str, Array], train: bool,
                 edge_weights: Mapping[str, Array] | None = None) -> Array:
        if self.stem not in STEMS:
            raise ValueError(f"DartsSupernet stem={self.stem!r} must be one of {', '.join(STEMS)}")
        num_edges = sum(2 + i for i in range(self.num_nodes))
        shape = (num_edges, len(self.op_names))
        _check_mixing_weights(mixing_weights, {"normal": shape, "reduce": shape}, edge_weights)

        x = jnp.asarray(x, self.dtype)
        stem_channels = self.stem_multiplier * self.C
        if self.stem == "imagenet":
            s0, s1 = imagenet_search_stem(x, stem_channels, train, self.dtype)
        else:
            s = conv2d(stem_channels, 3, padding=1, dtype=self.dtype, name="stem_conv")(x)
            s0 = s1 = batch_norm(train, affine=True, dtype=self.dtype, name="stem_bn")(s)

        def make_cell(spec: CellSpec, name: str) -> nn.Module:
            return DartsSearchCell(
                self.op_names,
                self.num_nodes,
                spec.C,
                spec.reduction,
                spec.reduction_prev,
                pool_bn=self.pool_bn,
                partial_channels=self.partial_channels,
                kept_ops=_kept_for(self.kept_ops, "reduce" if spec.reduction else "normal"),
                sampled=self.sampled,
                zero_terms=self.zero_terms,
                dtype=self.dtype,
                fuse_edges=self.fuse_edges,
                name=name,
            )

        def cell_args(spec: CellSpec) -> tuple[Array, Array | None]:
            key = "reduce" if spec.reduction else "normal"
            return mixing_weights[key], None if edge_weights is None else edge_weights[key]

        multiplier = self.num_nodes
        out, _ = darts_cells_forward(
            s0,
            s1,
            train,
            specs=darts_cell_specs(
                self.C, self.layers, (stem_channels, stem_channels), (multiplier, multiplier),
                reduction_prev=self.stem == "imagenet",
            ),
            make_cell=make_cell,
            cell_args=cell_args,
            remat=self.remat,
            scan_cells=self.scan_cells,
            normal_multiplier=multiplier,
        )
        return classifier_head(out, self.num_classes, self.dtype)


STEMS = ("cifar", "imagenet")


def imagenet_search_stem(x: Array, channels: int, train: bool, dtype: Dtype) -> tuple[Array, Array]:
    """PC-DARTS `model_search_imagenet.py` stem0 and stem1; call from a compact method.

    stem0: conv3x3 s2 (3 -> channels // 2), BN, ReLU, conv3x3 s2 (-> channels), BN; stem1: ReLU, conv3x3 s2,
    BN. Returns (s0, s1) at 1/4 and 1/8 of the input's side (224 -> 56, 28). Unlike the evaluation network
    (`DartsNetworkImageNet`, C channels), the search network's stem has stem_multiplier * C channels.
    """
    s0 = conv2d(channels // 2, 3, stride=2, padding=1, dtype=dtype, name="stem0_conv_1")(x)
    s0 = nn.relu(batch_norm(train, affine=True, dtype=dtype, name="stem0_bn_1")(s0))
    s0 = conv2d(channels, 3, stride=2, padding=1, dtype=dtype, name="stem0_conv_2")(s0)
    s0 = batch_norm(train, affine=True, dtype=dtype, name="stem0_bn_2")(s0)
    s1 = conv2d(channels, 3, stride=2, padding=1, dtype=dtype, name="stem1_conv")(nn.relu(s0))
    s1 = batch_norm(train, affine=True, dtype=dtype, name="stem1_bn")(s1)
    return s0, s1


def _get(model_config: Any, key: str, default: Any) -> Any:
    getter = getattr(model_config, "get", None)
    if getter is not None:
        return getter(key, default)
    return getattr(model_config, key, default)


def _require(model_config: Any, key: str) -> Any:
    value = _get(model_config, key, None)
    if value is None:
        raise ValueError(f"model config needs '{key}' (e.g. config.model.{key}).")
    return value


def build_supernet(
    space: Any,
    model_config: Any,
    num_classes: int,
    *,
    partial_channels: int | None = None,
    kept_ops: Mapping[str, Any] | None = None,
    sampled: bool = False,
    zero_terms: bool = False,
) -> nn.Module:
    """The supernet of `space` ("nb201" or "darts") as configured by `model_config` (config.model).

    Reads init_channels (C), num_cells (NB201: cells per stage N; DARTS: total cells),
    stem_multiplier (DARTS, 3), pool_bn (DARTS, True), stem (DARTS, "cifar" | "imagenet": the ImageNet
    search stem of PC-DARTS / DrNAS, for 224x224 input), partial_channels (PC-DARTS/DrNAS K, 1), dtype
    ("float32" | "bfloat16" activations, "float64" for numerical tests; params stay float32), remat,
    scan_cells, fuse_edges (`fused_mixed_ops`; no effect on a sampled method's edges). The keywords are set by the method, not the user: `partial_channels` overrides the config's
    K (a DrNAS progressive stage), `kept_ops` lists the op columns each edge still has (after pruning),
    `sampled`/`zero_terms` make every edge run only its selected op (`MixedOp`).
    """
    dtype_name = str(_get(model_config, "dtype", "float32"))
    if dtype_name not in _DTYPES:
        raise ValueError(f"model.dtype must be one of {sorted(_DTYPES)}, got {dtype_name!r}.")
    common = dict(
        C=int(_require(model_config, "init_channels")),
        num_classes=int(num_classes),
        partial_channels=int(partial_channels if partial_channels is not None
                             else _get(model_config, "partial_channels", 1)),
        kept_ops=kept_ops_attribute(kept_ops),
        sampled=bool(sampled),
        zero_terms=bool(zero_terms),
        dtype=_DTYPES[dtype_name],
        remat=bool(_get(model_config, "remat", False)),
        scan_cells=bool(_get(model_config, "scan_cells", False)),
        fuse_edges=bool(_get(model_config, "fuse_edges", False)),
    )
    op_names = tuple(space.op_names)
    arch_shape = {key: tuple(shape) for key, shape in space.arch_shape.items()}
    num_cells = int(_require(model_config, "num_cells"))
    stem = str(_get(model_config, "stem", "cifar"))
    if stem not in STEMS:
        raise ValueError(f"model.stem={stem!r} must be one of {', '.join(STEMS)}")
    if space.name == "nb201" and stem != "cifar":
        raise ValueError(f"model.stem={stem!r}: the NB201 network has only its own stem; use model.stem='cifar'")
    if space.name == "nb201":
        edges = tuple(tuple(edge) for edge in space.edges)
        if arch_shape != {"cell": (len(edges), len(op_names))}:
            raise ValueError(
                f"NB201 space arch_shape {arch_shape} does not match its {len(edges)} edges and "
                f"{len(op_names)} ops."
            )
        return NB201Supernet(op_names, edges, N=num_cells, **common)
    if space.name == "darts":
        num_nodes = int(space.num_nodes)  # the space owns the cell topology
        shape = (sum(2 + i for i in range(num_nodes)), len(op_names))
        if arch_shape != {"normal": shape, "reduce": shape}:
            raise ValueError(
                f"DARTS space arch_shape {arch_shape} does not match num_nodes={num_nodes} "
                f"(expected {shape} for 'normal' and 'reduce')."
            )
        return DartsSupernet(
            op_names,
            layers=num_cells,
            num_nodes=num_nodes,
            stem_multiplier=int(_get(model_config, "stem_multiplier", 3)),
            pool_bn=bool(_get(model_config, "pool_bn", True)),
            stem=stem,
            **common,
        )
    raise ValueError(f"Unknown search space {space.name!r}; build_supernet supports 'nb201' and 'darts'.")
