"""Tests of jnas.nn.widen: net2wider widening of supernet state at a DrNAS stage boundary.

Variables are shaped with `jax.eval_shape` (tracing only) and filled with distinct random numbers, which is
much faster than an eager Flax init on this CPU and lets every copied channel be traced back to its source.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jnas.nn import NB201_EDGES, MixedOp, NB201Supernet, make_op
from jnas.nn.ops import conv2d
from jnas.nn.widen import (
    duplication_indices,
    stream_indices,
    widen_like,
    widen_opt_state,
    widen_variables,
)

SEED = 7
CHANNELS = 24  # edge width: ops see 24/6 = 4 channels before, 24/4 = 6 after
OLD_K, NEW_K = 6, 4
OLD_W, NEW_W = CHANNELS // OLD_K, CHANNELS // NEW_K
OPS = ("max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3", "nor_conv_3x3",
       "conv_7x1_1x7")
# Pruning keeps different ops on the two edges, as DrNAS's per-edge top-k does.
KEPT = (
    tuple(op for op in OPS if op != "nor_conv_3x3"),
    tuple(op for op in OPS if op != "avg_pool_3x3"),
)


class TwoEdges(nn.Module):
    """A stem conv (not a candidate op) feeding a stride-1 edge_0 and a stride-2 edge_1."""

    op_names: tuple[tuple[str, ...], tuple[str, ...]]
    partial_channels: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
        x = conv2d(CHANNELS, 1, name="stem")(x)
        x = nn.BatchNorm(use_running_average=not train, name="stem_bn")(x)
        outs = []
        for k, (names, stride) in enumerate(zip(self.op_names, (1, 2))):
            weights = jnp.ones((len(names),))
            outs.append(
                MixedOp(names, stride=stride, pool_bn=True, partial_channels=self.partial_channels,
                        name=f"edge_{k}")(x, weights, train)
            )
        return tuple(outs)


def random_like(shapes: Any, seed: int) -> Any:
    """Distinct random values for each leaf; BN variances are positive."""
    rng = np.random.default_rng(seed)

    def fill(path: tuple[Any, ...], leaf: Any) -> np.ndarray:
        values = rng.standard_normal(leaf.shape).astype(np.float32)
        if path[-1].key == "var":
            values = np.abs(values) + 0.5
        return values

    return jax.tree_util.tree_map_with_path(fill, shapes)


def shapes(tree: Any) -> Any:
    return jax.tree.map(lambda leaf: leaf.shape, tree)


def variable_shapes(model: nn.Module, *args: Any) -> Any:
    return jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, *args, train=False))


@pytest.fixture(scope="module")
def edges() -> dict[str, Any]:
    x = jnp.zeros((2, 8, 8, 3))
    old_shapes = variable_shapes(TwoEdges((OPS, OPS), OLD_K), x)
    template = variable_shapes(TwoEdges(KEPT, NEW_K), x)
    old = random_like(old_shapes, 0)
    return {"old": old, "template": template, "new": widen_variables(old, template, SEED)}


def match_indices(old: np.ndarray, new: np.ndarray, axis: int) -> np.ndarray:
    """For each slice j of `new` along `axis`, the unique old slice it copies (compared on old's extent)."""
    old = np.moveaxis(old, axis, 0)
    new = np.moveaxis(new, axis, 0)
    common = tuple(slice(0, size) for size in old.shape[1:])
    found = []
    for j in range(new.shape[0]):
        hits = [i for i in range(old.shape[0]) if np.array_equal(new[j][common], old[i])]
        assert len(hits) == 1, f"new channel {j} matches old channels {hits}"
        found.append(hits[0])
    return np.array(found)


def kernel_indices(old: np.ndarray, new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(input, output) channel maps of a widened [kh, kw, in, out] kernel, each checked for consistency."""
    out_idx = match_indices(old, new, axis=3)
    in_idx = match_indices(old, new, axis=2)
    # Every element, copies of copies included, must come from old[..., in_idx[i], out_idx[o]].
    np.testing.assert_array_equal(new, old[:, :, in_idx][:, :, :, out_idx])
    return in_idx, out_idx


def assert_net2wider_map(idx: np.ndarray, old: int, new: int) -> None:
    assert idx.shape == (new,)
    np.testing.assert_array_equal(idx[:old], np.arange(old))
    assert idx.min() >= 0 and idx.max() < old


# ------------------------------------------------------------------------------------------------------------


def test_duplication_indices() -> None:
    idx = duplication_indices(np.random.default_rng(0), 5, 12)
    assert_net2wider_map(idx, 5, 12)
    # With replacement, uniform over existing channels: 2000 copies of 3 channels hit each one often.
    counts = np.bincount(duplication_indices(np.random.default_rng(1), 3, 2003)[3:], minlength=3)
    assert counts.min() > 550
    key_idx = duplication_indices(jax.random.key(3), 4, 9)
    assert_net2wider_map(key_idx, 4, 9)
    np.testing.assert_array_equal(key_idx, duplication_indices(jax.random.key(3), 4, 9))
    np.testing.assert_array_equal(duplication_indices(np.random.default_rng(0), 6, 6), np.arange(6))
    with pytest.raises(ValueError, match="old_width <= new_width"):
        duplication_indices(np.random.default_rng(0), 6, 4)


def test_structure_shapes_and_untouched_leaves(edges: dict[str, Any]) -> None:
    old, template, new = edges["old"], edges["template"], edges["new"]
    for collection in ("params", "batch_stats"):
        assert jax.tree.structure(new[collection]) == jax.tree.structure(template[collection])
        assert jax.tree.map(np.shape, new[collection]) == shapes(template[collection])
    # Pruned ops are gone from both collections.
    assert "nor_conv_3x3" not in new["params"]["edge_0"]
    assert "nor_conv_3x3" in new["params"]["edge_1"]
    assert "avg_pool_3x3" not in new["batch_stats"]["edge_1"]
    assert "avg_pool_3x3" in new["batch_stats"]["edge_0"]
    # Leaves outside the candidate ops are the old arrays themselves.
    for name in ("stem", "stem_bn"):
        for collection in ("params", "batch_stats"):
            for key, leaf in new[collection].get(name, {}).items():
                assert leaf is old[collection][name][key]
    assert new["params"]["stem"]["kernel"].shape == old["params"]["stem"]["kernel"].shape
    # The widened op really grew.
    assert new["params"]["edge_0"]["sep_conv_3x3"]["pointwise_2"]["kernel"].shape == (1, 1, NEW_W, NEW_W)
    assert old["params"]["edge_0"]["sep_conv_3x3"]["pointwise_2"]["kernel"].shape == (1, 1, OLD_W, OLD_W)


def test_relu_conv_bn_channels(edges: dict[str, Any]) -> None:
    op = ("edge_1", "nor_conv_3x3")
    old_p, new_p = edges["old"]["params"][op[0]][op[1]], edges["new"]["params"][op[0]][op[1]]
    old_s, new_s = edges["old"]["batch_stats"][op[0]][op[1]], edges["new"]["batch_stats"][op[0]][op[1]]
    in_idx, out_idx = kernel_indices(old_p["conv"]["kernel"], new_p["conv"]["kernel"])
    assert_net2wider_map(in_idx, OLD_W, NEW_W)
    assert_net2wider_map(out_idx, OLD_W, NEW_W)
    # BN statistics follow the conv's output channels.
    for stat in ("mean", "var"):
        np.testing.assert_array_equal(new_s["bn"][stat], old_s["bn"][stat][out_idx])
    # DrNAS draws the input index separately from the output index.
    np.testing.assert_array_equal(in_idx, stream_indices(SEED, op, "conv.in", OLD_W, NEW_W))
    np.testing.assert_array_equal(out_idx, stream_indices(SEED, op, "conv.out", OLD_W, NEW_W))


@pytest.mark.parametrize("edge", ["edge_0", "edge_1"])
def test_sep_conv_channel_chain(edges: dict[str, Any], edge: str) -> None:
    old_p, new_p = edges["old"]["params"][edge]["sep_conv_3x3"], edges["new"]["params"][edge]["sep_conv_3x3"]
    old_s = edges["old"]["batch_stats"][edge]["sep_conv_3x3"]
    new_s = edges["new"]["batch_stats"][edge]["sep_conv_3x3"]
    for block in ("1", "2"):
        depthwise_old = old_p[f"depthwise_{block}"]["kernel"]
        depthwise_new = new_p[f"depthwise_{block}"]["kernel"]
        assert depthwise_new.shape == (3, 3, 1, NEW_W)  # the per-group input axis stays 1
        _, depthwise_idx = kernel_indices(depthwise_old, depthwise_new)
        point_in, point_out = kernel_indices(old_p[f"pointwise_{block}"]["kernel"],
                                             new_p[f"pointwise_{block}"]["kernel"])
        # The pointwise conv reads the depthwise conv's channels, so its input follows that index.
        np.testing.assert_array_equal(point_in, depthwise_idx)
        for stat in ("mean", "var"):
            np.testing.assert_array_equal(new_s[f"bn_{block}"][stat], old_s[f"bn_{block}"][stat][point_out])
        assert_net2wider_map(point_out, OLD_W, NEW_W)
        expected = stream_indices(SEED, (edge, "sep_conv_3x3"), f"depthwise_{block}.out", OLD_W, NEW_W)
        np.testing.assert_array_equal(depthwise_idx, expected)


def op_output(op_name: str, stride: int, variables: dict[str, Any], x: jax.Array) -> jax.Array:
    op = make_op(op_name, x.shape[-1], stride, affine=False, pool_bn=True)
    return op.apply(variables, x, train=False)


def op_variables(tree: dict[str, Any], edge: str, op_name: str) -> dict[str, Any]:
    collections = ("params", "batch_stats")
    return {name: tree[name][edge][op_name] for name in collections if op_name in tree[name][edge]}


@pytest.mark.parametrize(
    "edge, op_name, out_stream",
    [("edge_1", "nor_conv_3x3", "conv.out"), ("edge_0", "dil_conv_3x3", "pointwise.out"),
     ("edge_1", "dil_conv_3x3", "pointwise.out"), ("edge_1", "skip_connect", None)],
)
def test_eval_output_on_old_channels(
    edges: dict[str, Any], edge: str, op_name: str, out_stream: str | None
) -> None:
    """What net2wider without rescaling guarantees: fed the old channels (new input channels zero), the
    widened op in eval mode gives every output channel j the old op's channel idx[j], idx being the index of
    its last layer."""
    stride = 2 if edge == "edge_1" else 1
    x_old = jax.random.normal(jax.random.key(1), (2, 8, 8, OLD_W))
    x_new = jnp.concatenate([x_old, jnp.zeros((2, 8, 8, NEW_W - OLD_W))], axis=-1)
    old_out = op_output(op_name, stride, op_variables(edges["old"], edge, op_name), x_old)
    new_out = op_output(op_name, stride, op_variables(edges["new"], edge, op_name), x_new)
    if out_stream is None:
        # FactorizedReduce: BN channels [conv_1 old, conv_1 copies, conv_2 old, conv_2 copies].
        half_old, half_new = OLD_W // 2, NEW_W // 2
        idx = np.concatenate([
            stream_indices(SEED, (edge, op_name), "conv_1.out", half_old, half_new),
            half_old + stream_indices(SEED, (edge, op_name), "conv_2.out", half_old, half_new),
        ])
    else:
        idx = stream_indices(SEED, (edge, op_name), out_stream, OLD_W, NEW_W)
    np.testing.assert_allclose(new_out, old_out[..., idx], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("edge", ["edge_0", "edge_1"])
def test_pool_bn_eval_output(edges: dict[str, Any], edge: str) -> None:
    """A pool passes its new input channels straight to its BN, whose statistics follow the BN's index: an
    input duplicated with that index gives the old output duplicated with it."""
    stride = 2 if edge == "edge_1" else 1
    idx = stream_indices(SEED, (edge, "max_pool_3x3"), "bn.out", OLD_W, NEW_W)
    x_old = jax.random.normal(jax.random.key(2), (2, 8, 8, OLD_W))
    old_out = op_output("max_pool_3x3", stride, op_variables(edges["old"], edge, "max_pool_3x3"), x_old)
    new_vars = op_variables(edges["new"], edge, "max_pool_3x3")
    new_out = op_output("max_pool_3x3", stride, new_vars, x_old[..., idx])
    np.testing.assert_allclose(new_out, old_out[..., idx], rtol=1e-6, atol=1e-6)


def test_momentum_and_stats_share_the_parameter_indices(edges: dict[str, Any]) -> None:
    old, template = edges["old"], edges["template"]
    # An affine map commutes with a gather, so equal indices give exactly 2 * widened(params) + 1.
    momentum = jax.tree.map(lambda p: 2.0 * p + 1.0, old["params"])
    widened = widen_like(momentum, template["params"], SEED)
    expected = jax.tree.map(lambda p: 2.0 * p + 1.0, edges["new"]["params"])
    jax.tree.map(np.testing.assert_array_equal, widened, expected)
    # A jax key seed works too and is deterministic.
    key = jax.random.key(11)
    first = widen_like(old["params"], template["params"], key)
    jax.tree.map(np.testing.assert_array_equal, first, widen_like(old["params"], template["params"], key))
    # Another seed draws other copies.
    other = widen_like(old["params"], template["params"], SEED + 1)
    kernel = ("edge_0", "sep_conv_3x3", "pointwise_1", "kernel")
    pick = lambda tree: tree[kernel[0]][kernel[1]][kernel[2]][kernel[3]]  # noqa: E731
    assert not np.array_equal(pick(other), pick(edges["new"]["params"]))


def test_op_instances_get_their_own_indices(edges: dict[str, Any]) -> None:
    def copies(edge: str) -> np.ndarray:
        p = edges["new"]["params"][edge]["sep_conv_3x3"]
        o = edges["old"]["params"][edge]["sep_conv_3x3"]
        return np.concatenate([kernel_indices(o[name]["kernel"], p[name]["kernel"])[1][OLD_W:]
                               for name in ("depthwise_1", "pointwise_1", "depthwise_2", "pointwise_2")])

    assert not np.array_equal(copies("edge_0"), copies("edge_1"))
    wide = [stream_indices(SEED, (edge, "sep_conv_3x3"), "pointwise_1.out", 8, 64)
            for edge in ("edge_0", "edge_1")]
    assert not np.array_equal(*wide)
    # Layers of one op draw separately too (DrNAS calls torch.randint per layer).
    assert not np.array_equal(
        stream_indices(SEED, ("edge_0", "sep_conv_3x3"), "depthwise_1.out", 8, 64),
        stream_indices(SEED, ("edge_0", "sep_conv_3x3"), "pointwise_1.out", 8, 64),
    )


def test_optimizer_state(edges: dict[str, Any]) -> None:
    old_params = jax.tree.map(jnp.asarray, edges["old"]["params"])
    optimizer = optax.chain(optax.add_decayed_weights(3e-4), optax.trace(decay=0.9),
                            optax.scale_by_schedule(lambda count: -0.1 / (1 + count)))
    state = optimizer.init(old_params)
    grads = jax.tree.map(lambda p: jnp.sin(p * 3.0), old_params)
    _, state = optimizer.update(grads, state, old_params)
    template_state = jax.eval_shape(optimizer.init, edges["template"]["params"])
    new_state = widen_opt_state(state, template_state, SEED)
    assert jax.tree.structure(new_state) == jax.tree.structure(template_state)
    assert jax.tree.map(np.shape, new_state) == shapes(template_state)
    np.testing.assert_array_equal(new_state[2].count, 1)
    widened_trace = widen_like(state[1].trace, edges["template"]["params"], SEED)
    jax.tree.map(np.testing.assert_array_equal, new_state[1].trace, widened_trace)
    # Momentum of a copied output channel equals that of its source channel, like the weight.
    kernel_old = state[1].trace["edge_1"]["nor_conv_3x3"]["conv"]["kernel"]
    kernel_new = new_state[1].trace["edge_1"]["nor_conv_3x3"]["conv"]["kernel"]
    in_idx, out_idx = kernel_indices(edges["old"]["params"]["edge_1"]["nor_conv_3x3"]["conv"]["kernel"],
                                     edges["new"]["params"]["edge_1"]["nor_conv_3x3"]["conv"]["kernel"])
    np.testing.assert_array_equal(kernel_new, np.asarray(kernel_old)[:, :, in_idx][:, :, :, out_idx])
    with pytest.raises(ValueError, match="same optimizer"):
        widen_opt_state(state, jax.eval_shape(optax.sgd(0.1).init, edges["template"]["params"]), SEED)


def test_scanned_cells_widen_like_unscanned_cells() -> None:
    rng = np.random.default_rng(0)
    kernels = rng.standard_normal((2, 1, 1, 4, 4)).astype(np.float32)
    op = lambda kernel: {"edge_3": {"nor_conv_1x1": {"conv": {"kernel": kernel}}}}  # noqa: E731
    stacked = widen_like({"cells_1_2": op(kernels)}, {"cells_1_2": op(np.zeros((2, 1, 1, 4, 8)))}, SEED)
    unstacked = widen_like({"cell_1": op(kernels[0]), "cell_2": op(kernels[1])},
                           {"cell_1": op(np.zeros((1, 1, 4, 8))), "cell_2": op(np.zeros((1, 1, 4, 8)))}, SEED)
    get = lambda tree: tree["edge_3"]["nor_conv_1x1"]["conv"]["kernel"]  # noqa: E731
    np.testing.assert_array_equal(get(stacked["cells_1_2"])[0], get(unstacked["cell_1"]))
    np.testing.assert_array_equal(get(stacked["cells_1_2"])[1], get(unstacked["cell_2"]))
    # Each scanned cell is its own op instance, with its own copies.
    cell_1, cell_2 = (stream_indices(SEED, (cell, "edge_3", "nor_conv_1x1"), "conv.out", 4, 8)
                      for cell in ("cell_1", "cell_2"))
    assert not np.array_equal(cell_1, cell_2)
    np.testing.assert_array_equal(get(stacked["cells_1_2"])[1][:, :, :4], kernels[1][..., cell_2])


def test_errors(edges: dict[str, Any]) -> None:
    old, template = edges["old"]["params"], edges["template"]["params"]
    with pytest.raises(ValueError, match="edge_0/extra_op"):
        widen_like(old, {**template, "edge_0": {**template["edge_0"], "extra_op": {}}}, SEED)
    bad_stem = {**template, "stem": {"kernel": jax.ShapeDtypeStruct((1, 1, 3, 32), jnp.float32)}}
    with pytest.raises(ValueError, match=r"stem/kernel.*\(1, 1, 3, 24\).*\(1, 1, 3, 32\)"):
        widen_like(old, bad_stem, SEED)
    conv = template["edge_1"]["nor_conv_3x3"]["conv"]
    bad_op = {**template["edge_1"]["nor_conv_3x3"],
              "conv": {"kernel": jax.ShapeDtypeStruct((5, 5, NEW_W, NEW_W), jnp.float32)}}
    bad_kernel = {**template, "edge_1": {**template["edge_1"], "nor_conv_3x3": bad_op}}
    assert conv["kernel"].shape == (3, 3, NEW_W, NEW_W)
    with pytest.raises(ValueError, match=r"edge_1/nor_conv_3x3/conv/kernel.*\(3, 3, 4, 4\).*\(5, 5, 6, 6\)"):
        widen_like(old, bad_kernel, SEED)
    shrink = {"edge_0": {"nor_conv_1x1": {"conv": {"kernel": np.zeros((1, 1, 8, 8))}}}}
    with pytest.raises(ValueError, match="cannot remove channels"):
        widen_like(shrink, {"edge_0": {"nor_conv_1x1": {"conv": {"kernel": np.zeros((1, 1, 4, 4))}}}}, SEED)
    depthwise = {"edge_0": {"sep_conv_3x3": {"depthwise_1": {"kernel": np.zeros((3, 3, 1, 4))}}}}
    with pytest.raises(ValueError, match="cannot be widened"):
        grouped = {"edge_0": {"sep_conv_3x3": {"depthwise_1": {"kernel": np.zeros((3, 3, 2, 6))}}}}
        widen_like(depthwise, grouped, SEED)
    with pytest.raises(ValueError, match="seed"):
        widen_like(old, template, -1)


def test_nb201_supernet_stage_boundary() -> None:
    """DrNAS NB201 progressive: K 4 -> 2, 5 -> 3 ops per edge; the widened state runs in the rebuilt net."""
    all_ops = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
    kept = ("none", "skip_connect", "nor_conv_3x3")
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    old_model = NB201Supernet(all_ops, NB201_EDGES, C=8, N=1, partial_channels=4)
    new_model = NB201Supernet(kept, NB201_EDGES, C=8, N=1, partial_channels=2)
    old_weights, new_weights = {"cell": jnp.ones((6, 5)) / 5}, {"cell": jnp.ones((6, 3)) / 3}
    old = jax.tree.map(jnp.asarray, random_like(variable_shapes(old_model, x, old_weights), 1))
    template = variable_shapes(new_model, x, new_weights)
    new = widen_variables(old, template, SEED)
    assert jax.tree.map(np.shape, new) == shapes(template)
    # Stage 3 cell: 32 channels, op width 8 -> 16.
    kernel = new["params"]["cell_4"]["edge_5"]["nor_conv_3x3"]["conv"]["kernel"]
    assert kernel.shape == (3, 3, 16, 16)
    assert "nor_conv_1x1" not in new["params"]["cell_4"]["edge_5"]
    for name in ("stem_conv", "resblock_1", "classifier"):
        jax.tree.map(np.testing.assert_array_equal, new["params"][name], old["params"][name])
    logits = new_model.apply(new, x, new_weights, train=False)
    assert logits.shape == (2, 10) and bool(jnp.all(jnp.isfinite(logits)))
