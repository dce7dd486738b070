"""Net2wider widening of supernet state at a DrNAS progressive stage boundary (methods.md §4.5).

When the partial-channel factor K shrinks (6 -> 4 on DARTS, 4 -> 2 on NB201), every candidate op of every
edge grows from C/K_old to C/K_new channels. DrNAS (`net2wider.py`, the `wider()` methods of `operations.py`
and `201-space/cell_operations.py`) appends copies of randomly chosen existing channels and does not rescale
the copies, so the widened op is not function-preserving. What this module reproduces:

* Index vectors are drawn per *layer*, not per op. Each `OutChannelWider` and each `InChannelWider` called
  without an index draws its own `torch.randint(0, old, (new - old,))` (uniform, with replacement). A layer
  that consumes a widened layer's output reuses that layer's out-index: the pointwise conv's input axis
  follows the depthwise conv's output axis, and a BN follows the conv before it. The first conv of an op
  gets a fresh input index (its input is the edge's own channels, which are not duplicates).
* Depthwise convs widen only their output axis; the per-group input axis stays 1 (`groups` becomes the new
  width in the reference). NHWC kernels here are [kh, kw, in / groups, out].
* BN running mean/var (and scale/bias, when affine) are gathered with the BN's index.
* The SGD momentum buffer of each parameter is gathered exactly like the parameter
  (`configure_optimizer`): same indices, input axis then output axis.

The chains, per op (stream names are `<layer>.<axis>`):

    ReLUConvBN      conv[in: conv.in, out: conv.out]  bn[conv.out]
    DilConv         depthwise[out: depthwise.out]  pointwise[in: depthwise.out, out: pointwise.out]
                    bn[pointwise.out]
    SepConv         depthwise_1[out: d1]  pointwise_1[in: d1, out: p1]  bn_1[p1]
                    depthwise_2[out: d2]  pointwise_2[in: d2, out: p2]  bn_2[p2]   (d2 is fresh, as in DrNAS)
    FactorizedReduce conv_1[in, out: c1]  conv_2[in, out: c2]  bn[c1 ++ c2]
    Pool (with BN)  bn[fresh]
    Conv7x1Conv1x7  conv_1x7[in, out: a]  conv_7x1[in: a, out: b]  bn[b]

Deviations from the reference, on purpose:
* Indices come from a hash of (seed, op-instance path, stream), not from one global torch RNG sequence, so
  params, batch_stats and momentum can be widened by separate calls and agree; the distribution (independent
  uniform draws with replacement) is the reference's.
* FactorizedReduce: DrNAS widens its BN with `cat([index1, index2])` appended after all old channels, which
  does not line up with the conv output layout [conv_1 old, conv_1 copies, conv_2 old, conv_2 copies] and
  takes conv_2's copies from conv_1's BN channels. Here the BN index is the concatenation of the two convs'
  indices with conv_2's offset by the old half width, so each BN channel keeps the statistics of the conv
  channel it normalises.
* Pruned ops are dropped rather than widened. DrNAS widens them too but never runs them again (weight 0 is
  skipped), so nothing observable changes.
* `conv_7x1_1x7` has no `wider()` in DrNAS (it is not among its primitives); it gets the chain above.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jnas.nn import ops

PyTree = Any
Seed = Any  # int or a jax PRNG key (typed or raw uint32)
Path = tuple[str, ...]

_EDGE = re.compile(r"^edge_\d+$")
_STACKED_CELLS = re.compile(r"^cells_(\d+)_(\d+)$")
_KERNEL_LEAVES = ("kernel",)
_CHANNEL_LEAVES = ("mean", "var", "scale", "bias")


# ------------------------------------------------------------------------------------------------------------
# Index draws


def _is_jax_key(x: Any) -> bool:
    return isinstance(x, jax.Array)


def _key_words(key: jax.Array) -> list[int]:
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return [int(w) for w in np.asarray(key).astype(np.uint32).ravel()]


def duplication_indices(rng: np.random.Generator | jax.Array, old_width: int, new_width: int) -> np.ndarray:
    """Net2wider channel map: [new_width] ints, `arange(old_width)`, then `new_width - old_width` copies.

    The copies are drawn uniformly with replacement from the existing channels, like DrNAS's
    `torch.randint(low=0, high=old_width, size=(new_width - old_width,))`.

    Args:
      rng: a numpy Generator, or a jax PRNG key.
      old_width: current number of channels (>= 1).
      new_width: number of channels after widening (>= old_width).
    """
    old_width, new_width = int(old_width), int(new_width)
    if old_width < 1 or new_width < old_width:
        raise ValueError(
            f"Widening needs 1 <= old_width <= new_width, got old_width={old_width}, new_width={new_width}; "
            "net2wider only adds channels."
        )
    count = new_width - old_width
    if isinstance(rng, np.random.Generator):
        copies = rng.integers(0, old_width, size=count)
    elif _is_jax_key(rng):
        copies = np.asarray(jax.random.randint(rng, (count,), 0, old_width))
    else:
        raise ValueError(f"rng must be a numpy Generator or a jax PRNG key, got {type(rng).__name__}.")
    return np.concatenate([np.arange(old_width), copies]).astype(np.int64)


def _seed_words(seed: Seed) -> tuple[int, ...]:
    if _is_jax_key(seed):
        return tuple(_key_words(seed))
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) and seed >= 0:
        return (int(seed),)
    raise ValueError(f"seed must be a non-negative int or a jax PRNG key, got {seed!r}.")


@functools.lru_cache(maxsize=4096)
def _stream_indices(
    seed_words: tuple[int, ...], instance: Path, stream: str, old: int, new: int
) -> np.ndarray:
    # A stable digest (not Python's salted hash) makes the indices reproducible across processes.
    digest = hashlib.sha256("\x1f".join(instance + (stream,)).encode()).digest()
    entropy = list(seed_words) + [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]
    rng = np.random.default_rng(np.random.SeedSequence(entropy))
    indices = duplication_indices(rng, old, new)
    indices.setflags(write=False)
    return indices


def stream_indices(seed: Seed, instance: Path, stream: str, old_width: int, new_width: int) -> np.ndarray:
    """The duplication indices `widen_like` uses for one index stream of one op instance.

    Args:
      seed: the seed passed to `widen_like`.
      instance: path of the op instance in an unstacked tree, e.g. ("cell_3", "edge_2", "sep_conv_3x3").
      stream: "<layer>.<in|out>", e.g. "pointwise_1.out" (see the module docstring).
      old_width, new_width: the stream's widths (half the op width for FactorizedReduce's convs).
    """
    return _stream_indices(_seed_words(seed), tuple(instance), stream, int(old_width), int(new_width))


# ------------------------------------------------------------------------------------------------------------
# Per-op layer plans


@dataclasses.dataclass(frozen=True)
class LayerPlan:
    """Which index streams widen a layer's axes.

    Attributes:
      in_streams: streams of the kernel's input axis, concatenated (empty: the axis must not change, as the
        per-group input axis of a depthwise conv).
      out_streams: streams of the output axis (conv kernel axis -1, BN vectors), concatenated; several
        streams split the axis into equal segments (FactorizedReduce's BN over its two convs).
    """

    in_streams: tuple[str, ...]
    out_streams: tuple[str, ...]


def _conv(in_stream: str | None, out_stream: str) -> LayerPlan:
    return LayerPlan((in_stream,) if in_stream else (), (out_stream,))


def _bn(*streams: str) -> LayerPlan:
    return LayerPlan((), tuple(streams))


_SEP_CONV = {
    "depthwise_1": _conv(None, "depthwise_1.out"),
    "pointwise_1": _conv("depthwise_1.out", "pointwise_1.out"),
    "bn_1": _bn("pointwise_1.out"),
    "depthwise_2": _conv(None, "depthwise_2.out"),
    "pointwise_2": _conv("depthwise_2.out", "pointwise_2.out"),
    "bn_2": _bn("pointwise_2.out"),
}

LAYER_PLANS: dict[type, dict[str, LayerPlan]] = {
    ops.ReLUConvBN: {"conv": _conv("conv.in", "conv.out"), "bn": _bn("conv.out")},
    ops.DilConv: {
        "depthwise": _conv(None, "depthwise.out"),
        "pointwise": _conv("depthwise.out", "pointwise.out"),
        "bn": _bn("pointwise.out"),
    },
    ops.SepConv: _SEP_CONV,
    ops.FactorizedReduce: {
        "conv_1": _conv("conv_1.in", "conv_1.out"),
        "conv_2": _conv("conv_2.in", "conv_2.out"),
        "bn": _bn("conv_1.out", "conv_2.out"),
    },
    ops.Pool: {"bn": _bn("bn.out")},
    ops.Conv7x1Conv1x7: {
        "conv_1x7": _conv("conv_1x7.in", "conv_1x7.out"),
        "conv_7x1": _conv("conv_1x7.out", "conv_7x1.out"),
        "bn": _bn("conv_7x1.out"),
    },
}


@functools.lru_cache(maxsize=None)
def _op_plan(op_name: str) -> dict[str, LayerPlan] | None:
    # Stride 2 picks the parametrised variant (skip_connect -> FactorizedReduce); other ops keep their class.
    op_class = type(ops.make_op(op_name, 2, 2, affine=False, pool_bn=True))
    return LAYER_PLANS.get(op_class)


def _op_location(path: Path) -> int | None:
    """Index of the op-name component of a candidate op inside an edge (.../edge_k/<op_name>/...), or None."""
    for i in range(len(path) - 2, 0, -1):
        if path[i] in ops.OP_NAMES and _EDGE.match(path[i - 1]):
            return i
    return None


def _instance_path(op_path: Path, lead_shape: tuple[int, ...], lead_index: tuple[int, ...]) -> Path:
    """The op instance of one slice of a stacked leaf (scanned cells have a leading cell axis).

    A scanned `cells_{i}_{j}` slice o is named `cell_{i+o}`, as in the unscanned layout, so both layouts widen
    identically.
    """
    if not lead_shape:
        return op_path
    if len(lead_shape) == 1:
        for pos, part in enumerate(op_path):
            match = _STACKED_CELLS.match(part)
            if match and int(match.group(2)) - int(match.group(1)) + 1 == lead_shape[0]:
                cell = f"cell_{int(match.group(1)) + lead_index[0]}"
                return op_path[:pos] + (cell,) + op_path[pos + 1 :]
    return op_path + tuple(f"[{i}]" for i in lead_index)


# ------------------------------------------------------------------------------------------------------------
# Tree widening


def _fmt(path: Path) -> str:
    return "/".join(path) or "<root>"


def _shape_error(path: Path, old_shape: tuple[int, ...], new_shape: tuple[int, ...], why: str) -> ValueError:
    return ValueError(
        f"Cannot widen {_fmt(path)}: old shape {old_shape}, template shape {new_shape}; {why}"
    )


def _axis_indices(
    seed_words: tuple[int, ...], instance: Path, streams: tuple[str, ...], old: int, new: int
) -> np.ndarray:
    parts = len(streams)
    if old % parts or new % parts:
        raise ValueError(
            f"Op {_fmt(instance)}: widths {old} -> {new} do not split into {parts} equal segments "
            f"for streams {streams}."
        )
    old_part, new_part = old // parts, new // parts
    return np.concatenate(
        [
            _stream_indices(seed_words, instance, stream, old_part, new_part) + k * old_part
            for k, stream in enumerate(streams)
        ]
    )


def _widen_leaf(
    path: Path, leaf: Any, new_shape: tuple[int, ...], op_pos: int, seed_words: tuple[int, ...]
) -> Any:
    old_shape = tuple(leaf.shape)
    op_path = path[: op_pos + 1]
    rest = path[op_pos + 1 :]
    plan = _op_plan(path[op_pos])
    if plan is None:
        raise _shape_error(path, old_shape, new_shape, f"op {path[op_pos]!r} has no widening plan.")
    if len(rest) != 2 or rest[0] not in plan:
        raise _shape_error(
            path, old_shape, new_shape, f"expected <layer>/<leaf> with a layer in {sorted(plan)}."
        )
    layer, leaf_name = plan[rest[0]], rest[1]
    if leaf_name in _KERNEL_LEAVES:
        base_rank, roles = 4, {2: layer.in_streams, 3: layer.out_streams}
    elif leaf_name in _CHANNEL_LEAVES:
        base_rank, roles = 1, {0: layer.out_streams}
    else:
        raise _shape_error(path, old_shape, new_shape, f"leaf {leaf_name!r} is not a kernel or a BN vector.")
    if len(old_shape) != len(new_shape) or len(old_shape) < base_rank:
        raise _shape_error(path, old_shape, new_shape, "the ranks differ.")
    lead = len(old_shape) - base_rank
    if old_shape[:lead] != new_shape[:lead]:
        raise _shape_error(path, old_shape, new_shape, "the stacked (leading) axes differ.")
    gathers = []
    for axis in range(base_rank):
        old, new = old_shape[lead + axis], new_shape[lead + axis]
        if old == new:
            continue
        streams = roles.get(axis, ())
        if not streams:
            raise _shape_error(
                path,
                old_shape,
                new_shape,
                f"axis {lead + axis} cannot be widened (kernel size or per-group input axis).",
            )
        if new < old:
            raise _shape_error(path, old_shape, new_shape, "net2wider cannot remove channels.")
        gathers.append((axis, streams, old, new))

    take = np.take if isinstance(leaf, np.ndarray) else jnp.take
    lead_shape = old_shape[:lead]
    slices = []
    for lead_index in np.ndindex(*lead_shape):
        instance = _instance_path(op_path, lead_shape, lead_index)
        value = leaf[lead_index] if lead else leaf
        for axis, streams, old, new in gathers:
            value = take(value, _axis_indices(seed_words, instance, streams, old, new), axis=axis)
        slices.append(value)
    if not lead:
        return slices[0]
    stack = np.stack if isinstance(leaf, np.ndarray) else jnp.stack
    return stack(slices).reshape(new_shape)


def widen_like(old: PyTree, template: PyTree, seed: Seed) -> PyTree:
    """`old` re-laid out with the structure and shapes of `template`, widening candidate ops by net2wider.

    Works on any nested-dict tree whose paths follow the Flax module paths: a `params` tree, a
    `batch_stats` tree, or an SGD momentum trace (params structure). Indices depend only on (seed, op-instance
    path, layer), so params, batch_stats and momentum widened with the same seed stay consistent.

    Args:
      old: the current tree.
      template: the tree of the rebuilt network (arrays or `jax.ShapeDtypeStruct`s); only shapes are read.
      seed: a non-negative int or a jax PRNG key.

    Returns:
      A tree with exactly the template's keys. Leaves of equal shape are `old`'s leaves, untouched. Leaves of
      a candidate op (.../edge_k/<op_name>/<layer>/<leaf>) whose channel axes grew are gathered along them.
      Subtrees of `old` missing from the template (pruned ops) are dropped.

    Raises:
      ValueError: a template path missing from `old`, or a shape change that is not net2wider widening of a
        candidate op.
    """
    seed_words = _seed_words(seed)

    def visit(old_node: Any, new_node: Any, path: Path) -> Any:
        if isinstance(new_node, Mapping):
            if not isinstance(old_node, Mapping):
                raise ValueError(f"{_fmt(path)} is a subtree in the template but a leaf in the old tree.")
            out = {}
            for key, child in new_node.items():
                if key not in old_node:
                    raise ValueError(
                        f"{_fmt(path + (str(key),))} is in the template but missing from the old tree; "
                        "widening can only keep or grow existing variables."
                    )
                out[key] = visit(old_node[key], child, path + (str(key),))
            return out
        if isinstance(old_node, Mapping):
            raise ValueError(f"{_fmt(path)} is a leaf in the template but a subtree in the old tree.")
        old_shape, new_shape = tuple(np.shape(old_node)), tuple(np.shape(new_node))
        if old_shape == new_shape:
            return old_node
        op_pos = _op_location(path)
        if op_pos is None:
            raise _shape_error(
                path, old_shape, new_shape, "only candidate ops (.../edge_k/<op>/...) are widened."
            )
        return _widen_leaf(path, old_node, new_shape, op_pos, seed_words)

    return visit(old, template, ())


def widen_variables(
    old_variables: Mapping[str, PyTree], template_variables: Mapping[str, PyTree], seed: Seed
) -> dict[str, PyTree]:
    """`widen_like` on each collection ({"params", "batch_stats"}) of the template, with one seed."""
    missing = [name for name in template_variables if name not in old_variables]
    if missing:
        raise ValueError(f"Old variables lack the collections {missing} of the template.")
    return {
        name: widen_like(old_variables[name], tree, seed) for name, tree in template_variables.items()
    }


def widen_opt_state(old_state: PyTree, template_state: PyTree, seed: Seed) -> PyTree:
    """Widens an optax state like the parameters (DrNAS `configure_optimizer`).

    Every dict inside the state (the SGD `TraceState.trace`, any other params-shaped buffer) is widened with
    `widen_like`, so momentum uses the parameters' indices; other leaves (step counts) must keep their shape
    and are copied. The template is `optimizer.init(new_params)` or its `jax.eval_shape`, so the result has
    the new optimizer's exact structure.
    """

    def visit(old_node: Any, new_node: Any, where: str) -> Any:
        if isinstance(new_node, Mapping):
            return widen_like(old_node, new_node, seed)
        if isinstance(new_node, (tuple, list)):
            if type(old_node) is not type(new_node) or len(old_node) != len(new_node):
                raise ValueError(
                    f"Optimizer state at {where or '<root>'}: old {type(old_node).__name__} of length "
                    f"{len(old_node) if isinstance(old_node, (tuple, list)) else '-'} does not match the "
                    f"template's {type(new_node).__name__} of length {len(new_node)}; build the new state "
                    "with the same optimizer."
                )
            children = [visit(o, n, f"{where}[{i}]") for i, (o, n) in enumerate(zip(old_node, new_node))]
            if hasattr(new_node, "_fields"):
                return type(new_node)(*children)
            return type(new_node)(children)
        if new_node is None:
            return None
        old_shape, new_shape = tuple(np.shape(old_node)), tuple(np.shape(new_node))
        if old_shape != new_shape:
            raise ValueError(
                f"Optimizer state leaf {where or '<root>'} has shape {old_shape}, template {new_shape}; only "
                "params-shaped buffers can be widened."
            )
        return old_node

    return visit(old_state, template_state, "")
