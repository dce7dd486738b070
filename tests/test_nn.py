"""Tests of jnas.nn: ops, supernets and discrete networks.

Parameter counts are checked on the full-size networks through `jax.eval_shape` (tracing only, no compile)
against the reference PyTorch networks. Numerical tests run tiny networks eagerly: on this CPU, compiling even
a tiny DARTS supernet costs more than running it op by op, and eager ops are cached across tests.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import jnas.spaces
from jnas.nn import (
    DartsNetworkCIFAR,
    DartsNetworkImageNet,
    MixedOp,
    NB201Network,
    build_supernet,
    convert_cell_layout,
    count_params,
    make_op,
    unstack_cells,
)
from jnas.nn import ops
from jnas.nn.networks import darts_cell_specs, darts_cells_forward

REFERENCE_COUNTS = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "reference" / "parameter_counts.json"
)

DARTS_V2 = (
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
    "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], "
    "normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), "
    "('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), "
    "('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])"
)
# Two ops on one edge (GDAS's derivation can give that), pools, dilated and 5x5 convs and FactorizedReduce at
# stride 2, nodes reading earlier nodes.
MIXED_GENOTYPE = (
    "Genotype(normal=[('avg_pool_3x3', 1), ('dil_conv_5x5', 1), ('sep_conv_5x5', 0), ('max_pool_3x3', 2), "
    "('skip_connect', 3), ('dil_conv_3x3', 0), ('avg_pool_3x3', 4), ('sep_conv_3x3', 2)], "
    "normal_concat=[2, 3, 4, 5], reduce=[('avg_pool_3x3', 0), ('dil_conv_3x3', 0), ('skip_connect', 1), "
    "('dil_conv_5x5', 2), ('sep_conv_5x5', 0), ('sep_conv_3x3', 3), ('avg_pool_3x3', 4), "
    "('skip_connect', 0)], reduce_concat=[2, 3, 4, 5])"
)
NB201_ARCHS = (
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|",
    "|avg_pool_3x3~0|+|none~0|skip_connect~1|+|nor_conv_1x1~0|none~1|avg_pool_3x3~2|",
    "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|",
)

TOL = dict(rtol=1e-5, atol=1e-5)


def model_config(**overrides: Any) -> ml_collections.ConfigDict:
    config = dict(
        init_channels=16,
        num_cells=5,
        num_nodes=4,
        stem_multiplier=3,
        pool_bn=True,
        scan_cells=False,
        remat=False,
        dtype="float32",
    )
    config.update(overrides)
    return ml_collections.ConfigDict(config)


def variable_shapes(model: nn.Module, *args: Any, image_size: int = 32, **kwargs: Any) -> dict:
    """Variable shapes of `model.init`, traced without compiling."""
    x = jnp.zeros((1, image_size, image_size, 3))
    return jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, x, *args, **kwargs))


def uniform_weights(space: Any) -> dict[str, jax.Array]:
    return {key: jnp.full(shape, 1.0 / shape[1]) for key, shape in space.arch_shape.items()}


def normal(shape: tuple[int, ...], seed: int) -> jax.Array:
    # numpy, not jax.random: every new shape would compile a random-number kernel on this slow CPU.
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def random_variables(shapes: Any, seed: int) -> Any:
    """Random values for every variable, BN scale, shift and running stats included (stricter than init)."""
    rng = np.random.default_rng(seed)

    def fill(path: tuple, leaf: jax.ShapeDtypeStruct) -> jax.Array:
        if path[-1].key in ("var", "scale"):
            return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), jnp.float32)
        return jnp.asarray(rng.normal(0.0, 0.3, leaf.shape), jnp.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def take_subset(tree: Any, like: Any) -> Any:
    """The entries of `tree` at the paths of `like`; fails if a path is missing or a shape differs."""
    if isinstance(like, dict):
        return {key: take_subset(tree[key], value) for key, value in like.items()}
    assert tree.shape == like.shape, (tree.shape, like.shape)
    return tree


def assert_trees_close(a: Any, b: Any) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **TOL)


@pytest.fixture(scope="module")
def reference_counts() -> dict:
    if not REFERENCE_COUNTS.exists():
        pytest.skip(f"reference parameter counts not found at {REFERENCE_COUNTS}: ../shared is absent")
    return json.loads(REFERENCE_COUNTS.read_text())


@pytest.fixture(scope="module")
def images() -> jax.Array:
    return normal((8, 8, 8, 3), seed=1)


# ------------------------------------------------------------------------------------------------------------
# Ops


def test_avg_pool_excludes_padding():
    x = jnp.arange(9.0).reshape(1, 3, 3, 1)
    out = ops.Pool("avg", stride=1).apply({}, x, False)[0, :, :, 0]
    # Each output averages only the in-image values of its 3x3 window (count_include_pad=False).
    expected = np.array(
        [
            [(0 + 1 + 3 + 4) / 4, (0 + 1 + 2 + 3 + 4 + 5) / 6, (1 + 2 + 4 + 5) / 4],
            [(0 + 1 + 3 + 4 + 6 + 7) / 6, 36 / 9, (1 + 2 + 4 + 5 + 7 + 8) / 6],
            [(3 + 4 + 6 + 7) / 4, (3 + 4 + 5 + 6 + 7 + 8) / 6, (4 + 5 + 7 + 8) / 4],
        ]
    )
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    strided = ops.Pool("avg", stride=2).apply({}, x, False)[0, :, :, 0]
    np.testing.assert_allclose(strided, expected[::2, ::2], rtol=1e-6)


def test_max_pool_ignores_padding():
    x = -1.0 - jnp.arange(9.0).reshape(1, 3, 3, 1)
    out = ops.Pool("max", stride=2).apply({}, x, False)[0, :, :, 0]
    np.testing.assert_array_equal(out, [[-1.0, -2.0], [-4.0, -5.0]])


@pytest.mark.parametrize("size", [8, 7])
def test_factorized_reduce(size):
    module = ops.FactorizedReduce(10, affine=False)
    x = normal((2, size, size, 6), seed=0)
    variables = random_variables(jax.eval_shape(lambda: module.init(jax.random.key(1), x, False)), seed=size)
    out = module.apply(variables, x, False)
    half = (size + 1) // 2
    assert out.shape == (2, half, half, 10)
    # The second conv reads the odd positions (the one-pixel shift), zero-padded at the bottom/right for odd
    # sizes.
    relu = np.asarray(jax.nn.relu(x))
    padded = np.pad(relu, ((0, 0), (0, size % 2), (0, size % 2), (0, 0)))
    k1 = np.asarray(variables["params"]["conv_1"]["kernel"])[0, 0]
    k2 = np.asarray(variables["params"]["conv_2"]["kernel"])[0, 0]
    concat = np.concatenate([relu[:, ::2, ::2] @ k1, padded[:, 1::2, 1::2] @ k2], axis=-1)
    stats = variables["batch_stats"]["bn"]
    expected = (concat - np.asarray(stats["mean"])) / np.sqrt(np.asarray(stats["var"]) + 1e-5)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_zero_op_is_stride_aware():
    x = jnp.ones((2, 8, 8, 4))
    assert ops.Zero(2).apply({}, x, False).shape == (2, 4, 4, 4)
    assert not ops.Zero(1).apply({}, x, False).any()


def test_channel_shuffle_matches_pytorch_index_mapping():
    channels, groups = 12, 4
    shuffled = np.asarray(
        ops.channel_shuffle(jnp.arange(float(channels)).reshape(1, 1, 1, channels), groups)
    )[0, 0, 0]
    for g in range(groups):
        for j in range(channels // groups):
            assert shuffled[j * groups + g] == g * (channels // groups) + j


def test_init_matches_pytorch_defaults():
    fan_in = 64
    bound = 1.0 / np.sqrt(fan_in)
    layer = ops.linear(1000, fan_in)
    key = jax.random.key(0, impl="rbg")  # threefry kernels are slow to compile on this CPU
    params = layer.init(key, jnp.zeros((1, fan_in)))["params"]
    for value in (params["kernel"], params["bias"]):
        value = np.asarray(value)
        assert np.abs(value).max() <= bound
        assert np.abs(value).max() > 0.95 * bound  # uniform over the whole range, not a narrower init
    kernel = ops.conv2d(64, 3).init(key, jnp.zeros((1, 4, 4, 8)))["params"]["kernel"]
    assert np.abs(kernel).max() <= 1.0 / np.sqrt(3 * 3 * 8)


def test_drop_path_drops_whole_examples_and_rescales():
    x = jnp.ones((64, 2, 2, 3))
    # An rbg key: threefry kernels are slow to compile on this CPU.
    out = np.asarray(ops.drop_path(x, 0.25, jax.random.key(0, impl="rbg")))
    per_example = out.reshape(64, -1)
    assert np.all(per_example == per_example[:, :1])  # one decision per example
    kept = per_example[per_example != 0]
    np.testing.assert_allclose(kept, 1.0 / 0.75, rtol=1e-6)
    assert 0 < (per_example[:, 0] == 0).sum() < 64


def test_make_op_rejects_unknown_names():
    with pytest.raises(ValueError, match="Unknown op"):
        make_op("conv_9x9", 4, 1, affine=False, pool_bn=False)


def test_partial_channels_bypass_and_shuffle():
    x = normal((2, 4, 4, 8), seed=0)
    mixed = MixedOp(("none", "skip_connect"), partial_channels=4)
    variables = random_variables(
        jax.eval_shape(lambda: mixed.init(jax.random.key(1), x, jnp.array([0.0, 1.0]), False)), 0
    )
    # One-hot on the identity: the op channels pass unchanged, so the output is the shuffled input.
    out = mixed.apply(variables, x, jnp.array([0.0, 1.0]), False)
    np.testing.assert_array_equal(out, ops.channel_shuffle(x, 4))
    reduce = MixedOp(("none", "skip_connect"), stride=2, partial_channels=4)
    variables = random_variables(
        jax.eval_shape(lambda: reduce.init(jax.random.key(1), x, jnp.array([1.0, 0.0]), False)), 0
    )
    out = reduce.apply(variables, x, jnp.array([1.0, 0.0]), False)
    bypass = nn.max_pool(x[..., 2:], (2, 2), (2, 2))
    np.testing.assert_array_equal(
        out, ops.channel_shuffle(jnp.concatenate([jnp.zeros((2, 2, 2, 2)), bypass], -1), 4)
    )


# ------------------------------------------------------------------------------------------------------------
# Parameter counts of the full-size networks


@pytest.mark.parametrize("scan_cells", [False, True])
def test_nb201_supernet_param_count(scan_cells):
    space = jnas.spaces.get("nb201")
    model = build_supernet(space, model_config(num_cells=5, scan_cells=scan_cells), num_classes=10)
    shapes = variable_shapes(model, uniform_weights(space), train=False)
    # DrNAS 201-space TinyNetwork(C=16, N=5), k=1 (the DARTS supernet on NB201).
    assert count_params(shapes["params"]) == 1_686_106
    assert set(shapes) == {"params", "batch_stats"}


def test_darts_supernet_param_count(reference_counts):
    space = jnas.spaces.get("darts")
    model = build_supernet(space, model_config(num_cells=8), num_classes=10)
    shapes = variable_shapes(model, uniform_weights(space), train=False)
    # quark0/darts model_search.py Network(16, 10, 8).
    assert count_params(shapes["params"]) == 1_930_618
    assert count_params(shapes["params"]) == (
        reference_counts["darts_space_search_networks"]["darts_space_darts_8cells_C16_cifar10"]["weights"]
    )


def test_nb201_network_param_counts(reference_counts):
    space = jnas.spaces.get("nb201")
    for name, entry in reference_counts["nb201_networks"].items():
        genotype = space.parse(entry["arch"])
        for num_classes in (10, 100, 120):
            model = NB201Network(genotype, C=16, N=5, num_classes=num_classes, scan_cells=True)
            got = count_params(variable_shapes(model, train=False)["params"])
            assert got == entry[f"params_{num_classes}_classes"], (name, num_classes)


def _cifar_counts(genotype: Any) -> tuple[int, int]:
    model = DartsNetworkCIFAR(genotype, C=36, layers=20, num_classes=10, auxiliary=True, scan_cells=True)
    params = variable_shapes(model, train=False)["params"]
    # The references count parameters without the auxiliary head (DARTS utils.count_parameters_in_MB).
    return count_params(params) - count_params(params["auxiliary_head"]), count_params(params)


DARTS_V2_CIFAR_COUNTS = (3_349_342, 3_825_768)  # without and with the auxiliary head


def test_darts_cifar_param_count_darts_v2():
    assert _cifar_counts(jnas.spaces.get("darts").parse(DARTS_V2)) == DARTS_V2_CIFAR_COUNTS


def test_darts_cifar_param_counts(reference_counts):
    space = jnas.spaces.get("darts")
    for name, entry in reference_counts["published_genotypes"].items():
        expected = entry["cifar10_params_20cells_36ch"], entry["cifar10_params_with_aux"]
        if name == "DARTS_V2":  # built and counted by the test above
            assert (
                space.parse(entry["genotype"]) == space.parse(DARTS_V2) and expected == DARTS_V2_CIFAR_COUNTS
            )
            continue
        assert _cifar_counts(space.parse(entry["genotype"])) == expected, name


DARTS_V2_IMAGENET_COUNTS = (4_718_752, 5_979_528)  # without and with the auxiliary head


def test_darts_imagenet_param_count_darts_v2():
    model = DartsNetworkImageNet(
        jnas.spaces.get("darts").parse(DARTS_V2),
        C=48,
        layers=14,
        num_classes=1000,
        auxiliary=True,
        scan_cells=True,
    )
    params = variable_shapes(model, train=False, image_size=224)["params"]
    with_aux = count_params(params)
    assert (with_aux - count_params(params["auxiliary_head"]), with_aux) == DARTS_V2_IMAGENET_COUNTS


def test_reference_counts_match_hard_coded(reference_counts):
    entry = reference_counts["published_genotypes"]["DARTS_V2"]
    assert (
        entry["imagenet_params_14cells_48ch"],
        entry["imagenet_params_with_aux"],
    ) == DARTS_V2_IMAGENET_COUNTS
    assert reference_counts["nb201_search_network"]["softmax_supernet_C16_N5_cifar10"]["weights"] == 1_686_106


def test_darts_cifar_auxiliary_output_in_training_only():
    model = DartsNetworkCIFAR(
        jnas.spaces.get("darts").parse(DARTS_V2),
        C=4,
        layers=3,
        num_classes=10,
        auxiliary=True,
        drop_path_rate=0.2,
    )
    x = jnp.zeros((2, 32, 32, 3))
    variables = variable_shapes(model, train=False)
    rngs = {"dropout": jax.random.key(0)}
    logits, aux_logits = jax.eval_shape(
        lambda v: model.apply(v, x, train=True, rngs=rngs, mutable=["batch_stats"])[0], variables
    )
    assert logits.shape == aux_logits.shape == (2, 10)
    assert jax.eval_shape(lambda v: model.apply(v, x, train=False), variables).shape == (2, 10)


# ------------------------------------------------------------------------------------------------------------
# Supernet = discrete search network at one-hot mixing weights (tiny networks, eager)


@pytest.fixture(scope="module")
def nb201_supernet():
    space = jnas.spaces.get("nb201")
    model = build_supernet(space, model_config(init_channels=4, num_cells=1), num_classes=10)
    variables = random_variables(
        variable_shapes(model, uniform_weights(space), train=False, image_size=8), seed=0
    )
    return space, model, variables


@pytest.fixture(scope="module")
def darts_supernet():
    space = jnas.spaces.get("darts")
    # 3 cells: reductions at cells 1 and 2, so cell 2 follows a reduction and cell 1 has stride-2 edges.
    model = build_supernet(space, model_config(init_channels=4, num_cells=3), num_classes=10)
    variables = random_variables(
        variable_shapes(model, uniform_weights(space), train=False, image_size=8), seed=0
    )
    return space, model, variables


def _check_one_hot_equivalence(supernet, variables, weights, network, images):
    net_shapes = jax.eval_shape(lambda: network.init({"params": jax.random.key(0)}, images, train=False))
    net_variables = take_subset(variables, net_shapes)
    super_logits, super_updates = supernet.apply(
        variables, images, weights, train=True, mutable=["batch_stats"]
    )
    net_logits, net_updates = network.apply(net_variables, images, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(net_logits, super_logits, **TOL)
    assert_trees_close(
        net_updates["batch_stats"], take_subset(super_updates["batch_stats"], net_updates["batch_stats"])
    )
    np.testing.assert_allclose(
        network.apply(net_variables, images, train=False),
        supernet.apply(variables, images, weights, train=False),
        **TOL,
    )


@pytest.mark.parametrize("arch", NB201_ARCHS)
def test_nb201_one_hot_equivalence(nb201_supernet, images, arch):
    space, supernet, variables = nb201_supernet
    genotype = space.parse(arch)
    weights = {key: jnp.asarray(value) for key, value in space.one_hot(genotype).items()}
    network = NB201Network(genotype, C=4, N=1, num_classes=10, search_mode=True)
    _check_one_hot_equivalence(supernet, variables, weights, network, images)


@pytest.mark.parametrize("genotype_str", [DARTS_V2, MIXED_GENOTYPE])
def test_darts_one_hot_equivalence(darts_supernet, images, genotype_str):
    space, supernet, variables = darts_supernet
    genotype = space.parse(genotype_str)
    weights = {key: jnp.asarray(value) for key, value in space.one_hot(genotype).items()}
    network = DartsNetworkCIFAR(genotype, C=4, layers=3, num_classes=10, search_mode=True, pool_bn=True)
    _check_one_hot_equivalence(supernet, variables, weights, network, images)


def test_mixing_weights_are_inputs(nb201_supernet, images):
    space, supernet, variables = nb201_supernet
    # Nothing architecture-shaped hides in the variables: only weights and BN statistics.
    assert set(variables) == {"params", "batch_stats"}
    assert all(leaf.shape != (6, 5) for leaf in jax.tree.leaves(variables))
    uniform = supernet.apply(variables, images, uniform_weights(space), train=False)
    skewed = supernet.apply(variables, images, {"cell": jnp.eye(6, 5)}, train=False)
    assert np.abs(np.asarray(uniform - skewed)).max() > 1e-3
    # Any real weights, not only a softmax: scaling the weights changes the output.
    scaled = supernet.apply(variables, images, {"cell": 3.0 * jnp.eye(6, 5)}, train=False)
    assert np.abs(np.asarray(scaled - skewed)).max() > 1e-3


def test_supernet_rejects_bad_mixing_weights(nb201_supernet, images):
    space, supernet, variables = nb201_supernet
    with pytest.raises(ValueError, match="keys"):
        supernet.apply(variables, images, {"normal": jnp.zeros((6, 5))}, train=False)
    with pytest.raises(ValueError, match="shape"):
        supernet.apply(variables, images, {"cell": jnp.zeros((6, 4))}, train=False)


def test_build_supernet_rejects_bad_config():
    space = jnas.spaces.get("nb201")
    with pytest.raises(ValueError, match="dtype"):
        build_supernet(space, model_config(dtype="float16"), num_classes=10)
    with pytest.raises(ValueError, match="init_channels"):
        build_supernet(space, ml_collections.ConfigDict(dict(num_cells=5)), num_classes=10)


def test_bfloat16_activations_keep_float32_params(images):
    space = jnas.spaces.get("nb201")
    model = build_supernet(
        space, model_config(init_channels=4, num_cells=1, dtype="bfloat16"), num_classes=10
    )
    shapes = variable_shapes(model, uniform_weights(space), train=False, image_size=8)
    assert {leaf.dtype for leaf in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.float32)}
    logits = jax.eval_shape(lambda v: model.apply(v, images, uniform_weights(space), train=False), shapes)
    assert logits.dtype == jnp.float32


# ------------------------------------------------------------------------------------------------------------
# nn.scan over identical cells


def test_nb201_scan_matches_unrolled(images):
    space = jnas.spaces.get("nb201")
    weights = {"cell": jax.nn.softmax(normal((6, 5), seed=2))}
    unrolled = build_supernet(space, model_config(init_channels=4, num_cells=2), num_classes=10)
    scanned = build_supernet(
        space, model_config(init_channels=4, num_cells=2, scan_cells=True, remat=True), 10
    )
    variables = random_variables(variable_shapes(unrolled, weights, train=False, image_size=8), seed=3)
    scanned_shapes = variable_shapes(scanned, weights, train=False, image_size=8)
    assert {"cells_0_1", "cells_3_4", "cells_6_7"} <= set(scanned_shapes["params"])
    scanned_variables = convert_cell_layout(variables, scanned_shapes)
    assert jax.tree.map(jnp.shape, scanned_variables) == jax.tree.map(jnp.shape, scanned_shapes)

    # Train mode, where scan must also stack the batch-statistics updates (each mode costs a compile).
    logits, updates = unrolled.apply(variables, images, weights, train=True, mutable=["batch_stats"])
    scan_logits, scan_updates = scanned.apply(
        scanned_variables, images, weights, train=True, mutable=["batch_stats"]
    )
    np.testing.assert_allclose(scan_logits, logits, **TOL)
    assert_trees_close(unstack_cells(scan_updates)["batch_stats"], updates["batch_stats"])


class _ToyCell(nn.Module):
    """A cheap stand-in for a DARTS cell: the scan plumbing (carry (s0, s1), broadcast args) is tested."""

    @nn.compact
    def __call__(self, s0: jax.Array, s1: jax.Array, scale: float, train: bool) -> jax.Array:
        return nn.Dense(s1.shape[-1], name="mix")(s0) + scale * jnp.tanh(s1)


class _ToyStack(nn.Module):
    scan_cells: bool

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        # Reductions at 3 and 6; with stem width 4C, cells 0-2 share one shape, and so do 8-9 (7 follows a
        # reduction).
        specs = darts_cell_specs(2, 10, (8, 8))
        return darts_cells_forward(
            x,
            x,
            False,
            specs=specs,
            make_cell=lambda spec, name: _ToyCell(name=name),
            cell_args=lambda spec: (0.5,),
            remat=False,
            scan_cells=self.scan_cells,
            tap_index=6,
        )


def test_darts_cell_stack_scan_matches_unrolled():
    x = normal((2, 8), seed=5)
    unrolled, scanned = _ToyStack(scan_cells=False), _ToyStack(scan_cells=True)
    variables = random_variables(jax.eval_shape(lambda: unrolled.init(jax.random.key(0), x)), seed=6)
    scanned_shapes = jax.eval_shape(lambda: scanned.init(jax.random.key(0), x))
    assert {"cells_0_2", "cell_5", "cell_6", "cell_7", "cells_8_9"} <= set(scanned_shapes["params"])
    out, tapped = unrolled.apply(variables, x)
    scan_out, scan_tapped = scanned.apply(convert_cell_layout(variables, scanned_shapes), x)
    np.testing.assert_allclose(scan_out, out, **TOL)
    np.testing.assert_allclose(scan_tapped, tapped, **TOL)


def test_darts_network_scan_keeps_parameters():
    genotype = jnas.spaces.get("darts").parse(DARTS_V2)
    # 6 cells, reductions at 2 and 4: with stem width 4C, cells 0 and 1 share one shape.
    unrolled = variable_shapes(DartsNetworkCIFAR(genotype, C=4, layers=6, stem_multiplier=4), train=False)
    scanned = variable_shapes(
        DartsNetworkCIFAR(genotype, C=4, layers=6, stem_multiplier=4, scan_cells=True), train=False
    )
    assert "cells_0_1" in scanned["params"]
    converted = jax.eval_shape(lambda v: convert_cell_layout(v, scanned), unrolled)
    assert jax.tree.map(jnp.shape, converted) == jax.tree.map(jnp.shape, scanned)


# ------------------------------------------------------------------------------------------------------------
# Fused edges: the same supernet function, with each op run once for all edges leaving a node


def _conv_count(model: nn.Module, variables: Any, weights: Any, images: jax.Array) -> int:
    jaxpr = jax.make_jaxpr(lambda v: model.apply(v, images, weights, train=True, mutable=["batch_stats"]))(variables)
    return str(jaxpr).count("conv_general_dilated")


# Partial channels are checked on the DARTS space, where they also meet stride-2 edges.
@pytest.mark.parametrize("space_name,space_options,options", [
    ("nb201", {}, dict(kept_ops={"cell": [[0, 2, 3], [0, 2, 3], [1, 2, 3, 4], [1, 3], [3], [1, 3]]})),
    # Three cells: stride-2 edges (FactorizedReduce), pooling with BN, separable and dilated convs.
    ("darts", {"num_nodes": 2}, dict(partial_channels=2)),
])
def test_fused_edges_compute_the_unfused_supernet(space_name, space_options, options, images):
    space = jnas.spaces.get(space_name, **space_options)
    config = model_config(init_channels=4, num_cells=1 if space_name == "nb201" else 3)
    options = {**options, "partial_channels": options.get("partial_channels", 1)}
    unfused = build_supernet(space, config, 10, **options)
    config.fuse_edges = True
    fused = build_supernet(space, config, 10, **options)
    weights = {key: jax.nn.softmax(normal(shape, seed=4)) for key, shape in space.arch_shape.items()}
    shapes = variable_shapes(unfused, weights, train=False, image_size=8)
    # Initialisation runs the unfused edges: the same tree, the same values.
    assert jax.tree.map(jnp.shape, variable_shapes(fused, weights, train=False, image_size=8)) == \
        jax.tree.map(jnp.shape, shapes)
    variables = random_variables(shapes, seed=5)

    logits, updates = unfused.apply(variables, images, weights, train=True, mutable=["batch_stats"])
    fused_logits, fused_updates = fused.apply(variables, images, weights, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(fused_logits, logits, **TOL)
    assert_trees_close(fused_updates, updates)
    np.testing.assert_allclose(fused.apply(variables, images, weights, train=False),
                               unfused.apply(variables, images, weights, train=False), **TOL)

    if "kept_ops" in options:  # gradients: the transposes of the vmapped ops, of a subset of the edges each
        def loss(model, params, mixing):
            out, _ = model.apply({**variables, "params": params}, images, mixing, train=True, mutable=["batch_stats"])
            return jnp.mean(out ** 2)

        grads = jax.jit(jax.grad(lambda p, w: loss(unfused, p, w), argnums=(0, 1)))(variables["params"], weights)
        fused_grads = jax.jit(jax.grad(lambda p, w: loss(fused, p, w), argnums=(0, 1)))(variables["params"], weights)
        for a, b in zip(jax.tree.leaves(fused_grads), jax.tree.leaves(grads)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())


def test_fused_nb201_cell_runs_six_convolutions(nb201_supernet, images):
    space, unfused, variables = nb201_supernet
    fused = build_supernet(space, model_config(init_channels=4, num_cells=1, fuse_edges=True), num_classes=10)
    weights = uniform_weights(space)
    # Outside the 3 cells: the stem and two ResNet blocks of 3 convolutions each.
    assert _conv_count(unfused, variables, weights, images) == 3 * 12 + 7
    assert _conv_count(fused, variables, weights, images) == 3 * 6 + 7


def test_bfloat16_mixing_weight_gradient_is_summed_in_float32():
    # d(sum(c * out)) / d w[skip] = sum(c * x) over the whole batch: 2048 products, exact in float32 for
    # bf16 inputs. Summed in bf16 it would be off by about 1e-2 relative (it was, before the fix).
    edge = MixedOp(("none", "skip_connect"), dtype=jnp.bfloat16)
    x = normal((8, 8, 8, 4), seed=7).astype(jnp.bfloat16)
    cotangent = normal((8, 8, 8, 4), seed=8).astype(jnp.bfloat16)
    variables = edge.init(jax.random.key(0), x, jnp.ones(2), train=False)

    def objective(weights):
        out = edge.apply(variables, x, weights, train=False)
        assert out.dtype == jnp.bfloat16
        return jnp.sum(out.astype(jnp.float32) * cotangent.astype(jnp.float32))

    grad = jax.grad(objective)(jnp.asarray([0.3, 0.7]))
    expected = np.sum(np.asarray(x, np.float64) * np.asarray(cotangent, np.float64))
    np.testing.assert_allclose(float(grad[1]), expected, rtol=1e-5)
    assert float(grad[0]) == 0.0
