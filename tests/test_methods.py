"""The mathematics of each method: PC-DARTS, GDAS, DrNAS, EDAS and single-level sigmoid search."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jnas import data as data_lib
from jnas import methods, optim, parallel, search, spaces
from jnas.data import pipeline as data_pipeline
from jnas.methods import drnas, gdas, pcdarts
from jnas.nn.supernet import MixedOp
from tests.helpers import load_config, tiny


def _method(config_name: str, **overrides):
    config = load_config(config_name)
    for key, value in overrides.items():
        target = config
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = value
    space = spaces.get(config.space, **config.space_options.to_dict())
    return methods.build(config, space), config


def _clock(step=0, epoch=0, seed=0):
    return methods.Clock(jnp.int32(step), jnp.int32(epoch), jax.random.PRNGKey(seed))


def test_registry_lists_every_method_and_rejects_unknown_options():
    assert methods.names() == ["darts", "drnas", "edas", "gdas", "pcdarts", "sigmoid"]
    with pytest.raises(ValueError, match="unknown method 'dart'"):
        methods.get("dart")
    with pytest.raises(ValueError, match=r"\['tau_maxx'\], unknown to method 'gdas'.*tau_max"):
        config = load_config("gdas_nb201_cifar10")
        with config.unlocked():
            config.method_options.tau_maxx = 1.0
        methods.build(config, spaces.get("nb201"))


# ---- PC-DARTS ---------------------------------------------------------------------------------------


def test_partial_channel_shuffle_is_the_reference_permutation():
    """Channel c = g·(C/K) + j of [processed, bypassed] goes to c' = j·K + g (methods.md §2.1)."""
    C, K = 8, 4
    x = jnp.broadcast_to(jnp.arange(C, dtype=jnp.float32), (1, 4, 4, C))
    edge = MixedOp(("skip_connect",), partial_channels=K)
    out = edge.apply(edge.init(jax.random.PRNGKey(0), x, jnp.ones(1), False), x, jnp.ones(1), False)
    expected = np.empty(C)
    for c in range(C):
        g, j = divmod(c, C // K)
        expected[j * K + g] = c
    np.testing.assert_array_equal(np.asarray(out[0, 0, 0]), expected)


def test_reduction_edge_max_pools_the_bypassed_channels():
    C, K = 4, 2
    x = jax.random.normal(jax.random.PRNGKey(1), (1, 4, 4, C))
    edge = MixedOp(("max_pool_3x3",), stride=2, partial_channels=K)
    out = edge.apply(edge.init(jax.random.PRNGKey(0), x, jnp.ones(1), False), x, jnp.ones(1), False)
    xn = np.asarray(x[0])
    processed = np.full((2, 2, C // K), -np.inf)
    padded = np.pad(xn[..., : C // K], ((1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    for i in range(2):
        for j in range(2):
            processed[i, j] = padded[2 * i:2 * i + 3, 2 * j:2 * j + 3].max(axis=(0, 1))
    bypass = xn[..., C // K:].reshape(2, 2, 2, 2, C - C // K).max(axis=(1, 3))
    stacked = np.concatenate([processed, bypass], -1)  # channels [p0, b0] -> shuffled [p0, b0] for K=2
    shuffled = stacked.reshape(2, 2, K, C // K).swapaxes(-1, -2).reshape(2, 2, C)
    np.testing.assert_allclose(np.asarray(out[0]), shuffled, rtol=1e-6)


def test_edge_normalisation_is_a_softmax_per_node():
    method, _ = _method("pcdarts_cifar10", **{"space_options.num_nodes": 4})
    arch = method.init_arch(jax.random.PRNGKey(0))
    arch["normal_edges"] = jnp.arange(14, dtype=jnp.float32)
    beta = np.asarray(method.edge_weights(arch)["normal"])
    for start, stop in ((0, 2), (2, 5), (5, 9), (9, 14)):
        np.testing.assert_allclose(beta[start:stop], jax.nn.softmax(jnp.arange(start, stop, dtype=jnp.float32)),
                                   rtol=1e-6)
    assert pcdarts.node_groups(spaces.get("nb201")) == [[0], [1, 2], [3, 4, 5]]


def test_edge_weights_scale_the_bypassed_channels_too():
    """β multiplies the whole edge output, processed and bypassed channels alike (model_search.py:160)."""
    method, config = _method("pcdarts_nb201_cifar10")
    s = search.build(tiny(config), 10, steps_per_epoch=1)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 3))
    weights = {"cell": jnp.full((6, 5), 0.2)}
    variables = jax.jit(lambda: s.model.init(jax.random.PRNGKey(1), x, weights, False,
                                             edge_weights={"cell": jnp.ones(6)}))()
    run = jax.jit(lambda e: s.model.apply(variables, x, weights, False, edge_weights={"cell": e}))
    base = run(jnp.ones(6))
    assert not np.allclose(run(jnp.ones(6).at[0].set(0.5)), base)  # edge 0 feeds node 1 only via β


def test_derivation_scales_ops_by_normalised_beta():
    method, _ = _method("pcdarts_cifar10", **{"space_options.num_nodes": 4})
    arch = jax.tree.map(np.zeros_like, jax.device_get(method.init_arch(jax.random.PRNGKey(0))))
    for key in ("normal", "reduce"):
        arch[key][:, 4] = 1.0  # sep_conv_3x3 wins every edge, all edges tie on α
    # Node 0 ties on α; β prefers input 1 over input 0. Node 1: β prefers inputs 2 and 0.
    arch["normal_edges"][:5] = [0.0, 2.0, 1.0, -1.0, 3.0]
    genotype = method.derive(arch)
    assert genotype.normal[:4] == (("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 2),
                                   ("sep_conv_3x3", 0))
    weights = method.derivation_weights(arch)["normal"]
    np.testing.assert_allclose(weights[:2, 4] / weights[:2, 4].sum(), jax.nn.softmax(jnp.array([0.0, 2.0])),
                               rtol=1e-6)


# ---- GDAS -------------------------------------------------------------------------------------------


def test_gumbel_sample_is_exactly_one_hot_with_the_soft_gradient():
    logits = jnp.array([[0.3, -0.2, 1.0, 0.0], [2.0, 0.1, -1.0, 0.5]])
    key = jax.random.PRNGKey(3)
    tau = jnp.float32(0.7)
    hard = gdas.gumbel_straight_through(key, logits, tau)
    assert set(np.unique(np.asarray(hard))) <= {0.0, 1.0}
    np.testing.assert_array_equal(np.asarray(hard).sum(-1), [1.0, 1.0])
    c = jnp.arange(8.0).reshape(2, 4)
    grad_hard = jax.grad(lambda a: jnp.sum(gdas.gumbel_straight_through(key, a, tau) * c))(logits)

    def soft(a):  # the same noise, without the straight-through trick
        gumbel = -jnp.log(jax.random.exponential(key, a.shape))
        return jnp.sum(jax.nn.softmax((jax.nn.log_softmax(a) + gumbel) / tau) * c)

    np.testing.assert_allclose(grad_hard, jax.grad(soft)(logits), rtol=1e-5)
    assert np.abs(np.asarray(grad_hard)).min() > 0  # every α entry gets a gradient


def test_temperature_falls_linearly_from_tau_max_to_tau_min():
    taus = [float(gdas.temperature(jnp.int32(e), 250, 10.0, 0.1)) for e in (0, 1, 124, 249)]
    np.testing.assert_allclose(taus, [10.0, 10.0 - 9.9 / 249, 10.0 - 9.9 * 124 / 249, 0.1], rtol=1e-5)


@pytest.mark.parametrize("zero_terms", [False, True])
def test_sampled_edge_equals_the_selected_op(zero_terms):
    names = spaces.get("nb201").op_names
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 6, 4))
    edge = MixedOp(names, sampled=True, zero_terms=zero_terms)
    variables = edge.init(jax.random.PRNGKey(1), x, jnp.eye(5)[3], False)
    assert set(variables["params"]) == {"nor_conv_1x1", "nor_conv_3x3"}  # every op built at init
    h = gdas.gumbel_straight_through(jax.random.PRNGKey(2), jnp.zeros((1, 5)).at[0, 3].set(50.0), 1.0)[0]
    out, updates = edge.apply(variables, x, h, True, mutable=["batch_stats"])
    alone = MixedOp(("nor_conv_3x3",))
    expected, alone_updates = alone.apply({"params": {"nor_conv_3x3": variables["params"]["nor_conv_3x3"]},
                                           "batch_stats": {"nor_conv_3x3": variables["batch_stats"]["nor_conv_3x3"]}},
                                          x, jnp.ones(1), True, mutable=["batch_stats"])
    np.testing.assert_array_equal(np.asarray(out), np.asarray(expected))
    # The unselected conv's BatchNorm statistics stay as they were (it did not run).
    np.testing.assert_array_equal(updates["batch_stats"]["nor_conv_1x1"]["bn"]["mean"],
                                  variables["batch_stats"]["nor_conv_1x1"]["bn"]["mean"])


def test_sampled_edge_compiles_to_one_op_not_all():
    """XLA's cost analysis prices a conditional at its dearest branch: a sampled DARTS edge costs about
    one op (the largest), a DARTS mixture the sum of all eight."""
    names = spaces.get("darts").op_names
    x = jnp.ones((8, 8, 8, 16))

    def flops(edge, weights):
        variables = edge.init(jax.random.PRNGKey(0), x, weights, False)
        f = jax.jit(lambda v, w: edge.apply(v, x, w, True, mutable=["batch_stats"])[0])
        return f.lower(variables, weights).compile().cost_analysis()["flops"]

    one_hot = jnp.eye(len(names))[names.index("sep_conv_5x5")]
    mixture = flops(MixedOp(names, pool_bn=True), jnp.full(len(names), 1 / len(names)))
    sampled = flops(MixedOp(names, pool_bn=True, sampled=True), one_hot)
    largest = flops(MixedOp(("sep_conv_5x5",), pool_bn=True), jnp.ones(1))
    assert sampled < 1.1 * largest
    assert mixture > 2.5 * sampled


def test_nasnet_derivation_may_take_two_ops_from_one_input():
    method, _ = _method("gdas_cifar10", **{"space_options.num_nodes": 4})
    arch = {k: np.zeros((14, 8), np.float32) for k in ("normal", "reduce")}
    arch["normal"][0, 4] = 3.0  # sep_conv_3x3 from input 0
    arch["normal"][0, 5] = 2.5  # sep_conv_5x5 from input 0 as well
    arch["normal"][1, 2] = 1.0  # input 1 is weaker than both ops of input 0 (softmax 0.28 < 0.32)
    genotype = method.derive(arch)
    assert genotype.normal[:2] == (("sep_conv_3x3", 0), ("sep_conv_5x5", 0))
    nb201, _ = _method("gdas_nb201_cifar10")
    cell = np.zeros((6, 5), np.float32)
    cell[:, 0] = 1.0  # `none` wins on NB201 and is kept
    assert nb201.derive({"cell": cell}).to_string().count("none") == 6


# ---- DrNAS ------------------------------------------------------------------------------------------


def test_dirichlet_pathwise_gradient_matches_the_closed_form():
    """d/dβ E[θ_0² + 3 θ_1] by Monte Carlo through jax.random.dirichlet vs the closed form."""
    beta = jnp.array([1.5, 0.7, 2.2])

    def closed_form(b):
        b0 = jnp.sum(b)
        return b[0] * (b[0] + 1) / (b0 * (b0 + 1)) + 3 * b[1] / b0

    def monte_carlo(b):
        theta = jax.random.dirichlet(jax.random.PRNGKey(0), b, shape=(200_000,))
        return jnp.mean(theta[:, 0] ** 2 + 3 * theta[:, 1])

    exact = jax.grad(closed_form)(beta)
    eps = 1e-3
    finite_difference = np.array([(closed_form(beta.at[i].add(eps)) - closed_form(beta.at[i].add(-eps))) / (2 * eps)
                                  for i in range(3)])
    np.testing.assert_allclose(finite_difference, exact, rtol=1e-3)
    np.testing.assert_allclose(jax.grad(monte_carlo)(beta), exact, atol=0.01)


def test_concentration_is_elu_plus_one():
    alpha = jnp.array([-2.0, 0.0, 1.5])
    np.testing.assert_allclose(drnas.concentration(alpha), [np.exp(-2.0), 1.0, 2.5], rtol=1e-6)


def test_kl_to_uniform_dirichlet_matches_a_monte_carlo_estimate():
    beta = jnp.array([[0.6, 2.0, 1.3, 0.9], [1.0, 1.0, 1.0, 1.0]])
    kl = drnas.dirichlet_kl_to_uniform(beta)
    theta = jax.random.dirichlet(jax.random.PRNGKey(1), beta[0], shape=(200_000,))
    log_ratio = (jax.scipy.stats.dirichlet.logpdf(theta.T, beta[0])
                 - jax.scipy.stats.dirichlet.logpdf(theta.T, jnp.ones(4)))
    np.testing.assert_allclose(kl[0], jnp.mean(log_ratio), rtol=0.02)
    assert abs(float(kl[1])) < 1e-5


def test_masked_sample_renormalises_over_kept_ops():
    mask = np.array([[True, False, True, True], [False, True, False, True]])
    theta = drnas.masked_dirichlet(jax.random.PRNGKey(0), jnp.ones((2, 4)), mask)
    np.testing.assert_allclose(np.asarray(theta).sum(-1), 1.0, rtol=1e-6)
    assert np.all(np.asarray(theta)[~mask] == 0) and np.all(np.asarray(theta)[mask] > 0)


def test_prune_keeps_the_largest_raw_alpha():
    arch = {"cell": np.array([[0.1, 0.5, -0.2, 0.3, 0.0]] * 6)}
    first = methods.prune_mask(arch, None, 3, {"cell": (6, 5)})
    assert first["cell"][0].tolist() == [True, True, False, True, False]
    # A previously pruned op never comes back, even with the largest α.
    arch["cell"][:, 2] = 9.0
    second = methods.prune_mask(arch, first, 2, {"cell": (6, 5)})
    assert second["cell"][0].tolist() == [False, True, False, True, False]


@pytest.fixture(scope="module")
def drnas_stage():
    """A tiny NB201 DrNAS search at K=2, and the next stage (K=1, 3 ops per edge)."""
    config = tiny(load_config("drnas_nb201_cifar10", "progressive,quick"))
    config.method_options.stage_partial_channels = (2, 1)
    config.model.partial_channels = 2
    dataset = data_lib.load(config.data)
    first = search.build(config, dataset.num_classes, steps_per_epoch=2)
    state = search.init_state(first, jax.random.PRNGKey(0), dataset.train_images.shape[1:])
    state["arch"] = {"cell": jax.random.normal(jax.random.PRNGKey(5), (6, 5))}
    mask = methods.prune_mask(jax.device_get(state["arch"]), None, 3, first.space.arch_shape)
    return config, dataset, first, state, mask


def test_pruning_alone_keeps_the_function_of_the_kept_paths(drnas_stage):
    config, dataset, first, state, mask = drnas_stage
    same_width = search.build(config, dataset.num_classes, steps_per_epoch=2, op_mask=mask, stage_index=0)
    pruned = search.advance_stage(same_width, state, dataset.train_images.shape[1:], seed=0)
    x = jnp.asarray(dataset.train_images[:4], jnp.float32) / 255.0
    weights = {"cell": jnp.asarray(mask["cell"], jnp.float32) / 3.0}

    def logits(s, st):
        return jax.jit(lambda: s.model.apply({"params": st["params"], "batch_stats": st["batch_stats"]},
                                             x, weights, False))()

    np.testing.assert_allclose(logits(same_width, pruned), logits(first, state), rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(pruned["arch"]["cell"])[~mask["cell"]] == 0)
    kept = np.asarray(pruned["arch"]["cell"])[mask["cell"]]
    np.testing.assert_array_equal(kept, np.asarray(state["arch"]["cell"])[mask["cell"]])


def test_stage_transition_widens_params_statistics_and_momentum(drnas_stage):
    config, dataset, first, state, mask = drnas_stage
    state["step"] = jnp.int32(7)
    state["w_opt"] = jax.tree.map(lambda a: a + 1 if a.dtype == jnp.float32 else a, state["w_opt"])
    second = search.build(config, dataset.num_classes, steps_per_epoch=2, op_mask=mask, stage_index=1)
    assert second.stage.partial_channels == 1 and second.stage_start_epoch == 2
    widened = search.advance_stage(second, state, dataset.train_images.shape[1:], seed=0)
    template = jax.eval_shape(lambda: search.init_state(second, jax.random.PRNGKey(0),
                                                        dataset.train_images.shape[1:]))
    shapes = lambda t: jax.tree.map(lambda a: (tuple(a.shape), str(a.dtype)), t)  # noqa: E731
    for key in ("params", "batch_stats", "w_opt", "arch", "a_opt"):
        assert shapes(widened[key]) == shapes(template[key]), key
    ops = set(widened["params"]["cell_0"]["edge_0"])
    assert len(ops) <= 3  # pruned ops lost their weights (parameter-free ops have none)
    # The momentum of a widened conv holds the old values in its first channels.
    old = optim.momentum_buffer(state["w_opt"])["cell_0"]["edge_0"]
    new = optim.momentum_buffer(widened["w_opt"])["cell_0"]["edge_0"]
    for op in set(old) & set(new):
        old_kernel, new_kernel = old[op]["conv"]["kernel"], new[op]["conv"]["kernel"]
        c_in, c_out = old_kernel.shape[2:]
        np.testing.assert_array_equal(np.asarray(new_kernel)[:, :, :c_in, :c_out], np.asarray(old_kernel))
    assert int(widened["step"]) == 7
    count = lambda opt: [a for a in jax.tree.leaves(opt) if a.dtype == jnp.int32]  # noqa: E731
    assert [int(a) for a in count(widened["w_opt"])] == [int(a) for a in count(state["w_opt"])]


# ---- EDAS -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config_name", ["edas_nb201_cifar10", "edas_cifar10"])
def test_edas_relaxes_exactly_one_edge_per_cell_type(config_name):
    method, _ = _method(config_name, **({"space_options.num_nodes": 4} if config_name == "edas_cifar10" else {}))
    arch = method.init_arch(jax.random.PRNGKey(0))
    for step in range(5):
        clock = _clock(step, 0, seed=step)
        weights = method.mixing_weights(arch, jax.random.PRNGKey(100 + step), clock)
        relaxed = method.relaxed_edges(clock)
        for key, w in weights.items():
            w = np.asarray(w)
            one_hot = np.all((w == 0) | (w == 1), axis=-1)
            assert one_hot.sum() == w.shape[0] - 1 and not one_hot[int(relaxed[key])]
            np.testing.assert_allclose(w[int(relaxed[key])], jax.nn.softmax(arch[key][int(relaxed[key])]),
                                       rtol=1e-6)
            if method.space.name == "darts":  # gated to two inputs per node, the relaxed edge among them
                active = np.any(w != 0, axis=-1)
                assert [int(active[s:s + n].sum()) for s, n in ((0, 2), (2, 3), (5, 4), (9, 5))] == [2, 2, 2, 2]
                assert active[int(relaxed[key])]
        # Only the relaxed row gets a gradient.
        grads = jax.grad(lambda a: sum(jnp.sum(w * jnp.arange(w.size).reshape(w.shape))
                                       for w in method.mixing_weights(a, jax.random.PRNGKey(100 + step),
                                                                      clock).values()))(arch)
        for key, g in grads.items():
            rows = np.flatnonzero(np.abs(np.asarray(g)).sum(-1))
            assert rows.tolist() == [int(relaxed[key])]


def test_edas_clamps_to_what_derivation_picks():
    method, _ = _method("edas_cifar10", **{"space_options.num_nodes": 4})
    arch = {k: np.zeros((14, 8), np.float32) for k in ("normal", "reduce")}
    arch["normal"][:, 0] = 5.0  # `none` has the largest α everywhere ...
    arch["normal"][:, 3] = 1.0  # ... but derivation excludes it, so the clamp takes skip_connect
    weights = method.mixing_weights(arch, jax.random.PRNGKey(0), _clock())
    relaxed = int(method.relaxed_edges(_clock())["normal"])
    active = [e for e in range(14) if e != relaxed and np.asarray(weights["normal"][e]).any()]
    for e in active:
        assert np.asarray(weights["normal"][e]).argmax() == 3


# ---- single level / sigmoid --------------------------------------------------------------------------


def test_sigmoid_weights_are_not_normalised():
    method, _ = _method("sigmoid_nb201_cifar10")
    arch = {"cell": jnp.full((6, 5), 1.0)}
    weights = np.asarray(method.mixing_weights(arch, None, None)["cell"])
    np.testing.assert_allclose(weights, 1 / (1 + np.exp(-1.0)), rtol=1e-6)
    assert not np.allclose(weights.sum(-1), 1.0)
    softmax, _ = _method("sigmoid_nb201_cifar10", **{"method_options.activation": "softmax"})
    np.testing.assert_allclose(np.asarray(softmax.mixing_weights(arch, None, None)["cell"]).sum(-1), 1.0, rtol=1e-6)


def _one_step(config, poison_valid: bool = False):
    """One jitted search step on 4 devices; with `poison_valid` the validation labels are invalid."""
    dataset = data_lib.load(config.data)
    mesh = parallel.make_mesh()
    s = search.build(config, dataset.num_classes, steps_per_epoch=4)
    state = jax.device_put(search.init_state(s, jax.random.PRNGKey(0), dataset.train_images.shape[1:]),
                           parallel.replicated(mesh))
    before = jax.device_get(state)
    split = data_pipeline.DeviceSplit(dataset.train_images[:16], dataset.train_labels[:16], mesh)
    train, valid = split.batch(np.arange(8)), split.batch(np.arange(8, 16))
    if poison_valid:
        valid = {"image": valid["image"], "label": jnp.full_like(valid["label"], -1)}
    after, metrics = search.make_step(s, mesh)(state, train, valid)
    return before, jax.device_get(after), jax.device_get(metrics)


def test_single_level_updates_both_from_the_training_batch():
    """One step with a validation batch of invalid labels: single level never reads it."""
    before, after, metrics = _one_step(tiny(load_config("sigmoid_nb201_cifar10")), poison_valid=True)
    assert np.isfinite(metrics["train_loss"]) and metrics["arch_grad_norm"] > 0
    assert not np.array_equal(before["arch"]["cell"], after["arch"]["cell"])
    changed = jax.tree.leaves(jax.tree.map(lambda a, b: not np.array_equal(a, b), before["params"], after["params"]))
    assert all(changed)


def test_edas_step_leaves_unsampled_rows_untouched():
    """Adam with coupled weight decay would move every row; only the relaxed edge's row may change."""
    config = tiny(load_config("edas_nb201_cifar10"))
    config.update_order = "arch_first"
    before, after, _ = _one_step(config)
    changed = np.flatnonzero(np.any(before["arch"]["cell"] != after["arch"]["cell"], axis=-1))
    assert len(changed) == 1
    mu_changed = [np.flatnonzero(np.any(np.asarray(leaf) != 0, axis=-1)).tolist()
                  for leaf in jax.tree.leaves(after["a_opt"]) if getattr(leaf, "shape", ()) == (6, 5)]
    assert mu_changed and all(rows == changed.tolist() for rows in mu_changed)
