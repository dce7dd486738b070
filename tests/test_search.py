"""The search step: hypergradients on a tiny supernet, device-count independence, optimizer semantics."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jnas import data as data_lib
from jnas import hypergrad, optim, parallel, search
from jnas.data import pipeline as data_pipeline
from tests.helpers import load_config, tiny


def test_second_order_matches_autodiff_through_one_momentum_step():
    """DARTS-V2's finite-difference hypergradient on the real supernet against an independent computation:
    autodiff through one real SGD-momentum step.

    Float64, because the finite difference is compared at a small radius: on a tiny network
    ∇_α L_tr is so rough (ReLU kinks, BatchNorm over 8 images) that the reference radius 0.01 measures
    the roughness, not the derivative (measured: off by O(1) at r = 1e-2 and 1e-4, within 1% at 1e-6).
    The exact Hessian-vector product and `hypergrad.unrolled` through the optax optimizer are checked
    against the same autodiff on a small problem in tests/test_hypergrad.py (each second-order program
    of this network takes about a minute to compile here).
    """
    with jax.enable_x64(True):
        config = tiny(load_config("darts_nb201_cifar10"))
        config.model.dtype = "float64"
        dataset = data_lib.load(config.data)
        s = search.build(config, dataset.num_classes, steps_per_epoch=4)
        state = search.init_state(s, jax.random.PRNGKey(0), dataset.train_images.shape[1:])
        params, arch = jax.tree.map(lambda a: a.astype(jnp.float64), (state["params"], state["arch"]))
        x = data_lib.normalize(jnp.asarray(dataset.train_images[:16]), s.mean, s.std).astype(jnp.float64)
        y = jnp.asarray(dataset.train_labels[:16])
        train, valid = (x[:8], y[:8]), (x[8:], y[8:])

        def loss(params, arch, batch):
            weights = s.method.mixing_weights(arch, None, None)
            logits, _ = s.model.apply({"params": params, "batch_stats": state["batch_stats"]}, batch[0],
                                      weights, train=True, mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()

        # A non-zero momentum buffer and a large lr make every term of the virtual step matter.
        buf = jax.tree.map(lambda p: 0.1 * jnp.ones_like(p), params)
        lr, mu, wd = 0.5, 0.9, 3e-4

        @jax.jit
        def all_hypergradients(params, arch):
            def unrolled_val(a):
                grads = jax.grad(loss)(params, a, train)
                w1 = jax.tree.map(lambda w, g, b: w - lr * (mu * b + g + wd * w), params, grads, buf)
                return loss(w1, a, valid)

            kwargs = dict(lr=lr, momentum_buffer=buf, momentum=mu, weight_decay=wd)
            return (jax.grad(unrolled_val)(arch),
                    hypergrad.darts_second_order(loss, loss, params, arch, train, valid,
                                                 hvp="finite_difference", fd_radius=1e-6, **kwargs),
                    hypergrad.first_order(loss, params, arch, valid))

        reference, fd, first = jax.device_get(all_hypergradients(params, arch))
    ref = reference["cell"]
    scale = np.abs(ref).max()
    np.testing.assert_allclose(fd["cell"], ref, atol=1e-2 * scale)
    # The test has teeth only if the second-order term is far larger than the tolerance.
    assert np.abs(first["cell"] - ref).max() > 0.1 * scale


def test_momentum_buffer_is_pytorch_sgd():
    """SGD(momentum, weight_decay) after clipping, lr per epoch: compare with a hand-written PyTorch step."""
    config = load_config("darts_cifar10", None)
    schedule = optim.epoch_cosine_schedule(0.025, 0.001, 50, 10, epoch_offset=1)
    tx = optim.weight_optimizer(config.optimizer, schedule)
    w = {"a": jnp.array([1.0, -2.0, 3.0])}
    g = {"a": jnp.array([30.0, 40.0, 0.0])}  # norm 50 > clip 5
    state = tx.init(w)
    buf = np.zeros(3)
    wn = np.array([1.0, -2.0, 3.0])
    for step in range(12):
        updates, state = tx.update(g, state, w)
        w = optax.apply_updates(w, updates)
        lr = 0.001 + 0.5 * (0.025 - 0.001) * (1 + np.cos(np.pi * (step // 10 + 1) / 50))
        d = np.array([30.0, 40.0, 0.0]) * (5.0 / 50.0) + 3e-4 * wn
        buf = 0.9 * buf + d
        wn = wn - lr * buf
    np.testing.assert_allclose(w["a"], wn, rtol=1e-5)
    np.testing.assert_allclose(optim.momentum_buffer(state)["a"], buf, rtol=1e-5)


def test_arch_optimizer_is_coupled_adam():
    config = load_config("darts_cifar10", None)
    tx = optim.arch_optimizer(config.arch_optimizer)
    a = jnp.array([0.5, -0.5])
    state = tx.init(a)
    g = jnp.array([1.0, 2.0])
    updates, state = tx.update(g, state, a)
    d = np.array([1.0, 2.0]) + 1e-3 * np.array([0.5, -0.5])
    m, v = 0.5 * d, 0.001 * d * d
    m_hat, v_hat = m / 0.5, v / 0.001
    expected = np.array([0.5, -0.5]) - 3e-4 * m_hat / (np.sqrt(v_hat) + 1e-8)
    np.testing.assert_allclose(a + updates, expected, rtol=1e-6)


@pytest.mark.slow
# Second order and the other hypergradients are checked across device counts on a toy model below, and
# every method's NB201 search in tests/test_method_runs.py; this is the real DARTS-space supernet.
@pytest.mark.parametrize("space_config,hypergradient", [("darts_cifar10", "first_order")])
def test_one_and_four_devices_agree(space_config, hypergradient):
    config = tiny(load_config(space_config))
    config.space_options.num_nodes = 1  # 2 edges per cell instead of 5: the same code, less to compile
    dataset = data_lib.load(config.data)
    config.hypergradient.kind = hypergradient
    # Adam's first steps move every element by about ±lr whatever the gradient's size, so a gradient
    # element that is zero up to rounding could move either way. A large eps makes the update
    # proportional to the gradient, so rounding differences stay rounding-sized.
    config.arch_optimizer.eps = 1.0
    config.arch_optimizer.lr = 1.0
    s = search.build(config, dataset.num_classes, steps_per_epoch=4)
    results = []
    for devices in (jax.devices()[:1], jax.devices()[:4]):
        mesh = parallel.make_mesh(devices)
        state = jax.device_put(search.init_state(s, jax.random.PRNGKey(3), dataset.train_images.shape[1:]),
                               parallel.replicated(mesh))
        initial = jax.device_get((state["arch"], state["params"]))
        train = data_pipeline.DeviceSplit(dataset.train_images, dataset.train_labels, mesh)
        valid = data_pipeline.DeviceSplit(dataset.test_images, dataset.test_labels, mesh)
        step = search.make_step(s, mesh)
        for i in range(2):
            index = np.arange(i * 8, (i + 1) * 8)
            state, metrics = step(state, train.batch(index), valid.batch(index))
        final = jax.device_get((state["arch"], state["params"]))
        results.append((jax.tree.map(np.subtract, final, initial), jax.device_get(metrics)))
    ((arch1, params1), m1), ((arch4, params4), m4) = results
    for d1, d4 in zip(jax.tree.leaves(arch1) + jax.tree.leaves(params1),
                      jax.tree.leaves(arch4) + jax.tree.leaves(params4)):
        np.testing.assert_allclose(d1, d4, atol=1e-3 * np.abs(d1).max() + 1e-9)
    # Both the architecture and the weights must really have moved, or agreement would prove nothing.
    assert min(np.abs(a).max() for a in arch1.values()) > 1e-5
    np.testing.assert_allclose(m1["train_loss"], m4["train_loss"], rtol=1e-5)


class ToySupernet(nn.Module):
    """A stand-in for the supernet with its interface (mixing weights as input, BatchNorm statistics),
    small enough that XLA compiles nested second-order steps in seconds on a CPU."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x, mixing_weights, train, edge_weights=None):
        h = nn.Conv(4, (3, 3), strides=(2, 2))(x)
        h = nn.BatchNorm(use_running_average=not train, momentum=0.9, use_fast_variance=False)(h)
        h = jnp.mean(h, axis=(1, 2))
        for e, row in enumerate(mixing_weights["cell"]):  # edge e: ops o are slices of one Dense
            ops = nn.Dense(4 * row.shape[0], name=f"edge_{e}")(h).reshape(h.shape[0], row.shape[0], 4)
            h = nn.tanh(jnp.einsum("o,bof->bf", row, ops))
        return nn.Dense(self.num_classes)(h)


@pytest.mark.parametrize("kind", ["first_order", "second_order", "unrolled", "implicit"])
def test_every_hypergradient_runs_in_the_sharded_step_on_one_and_four_devices(kind):
    config = tiny(load_config("darts_nb201_cifar10"))
    dataset = data_lib.load(config.data)
    config.hypergradient.kind = kind
    config.hypergradient.unrolled_steps = 2
    config.hypergradient.num_iters = 3
    config.hypergradient.damping = 0.1
    config.arch_optimizer.eps = 1.0  # see test_one_and_four_devices_agree
    config.arch_optimizer.lr = 1.0
    s = dataclasses.replace(search.build(config, dataset.num_classes, steps_per_epoch=4), model=ToySupernet())
    results = []
    for devices in (jax.devices()[:1], jax.devices()[:4]):
        mesh = parallel.make_mesh(devices)
        state = jax.device_put(search.init_state(s, jax.random.PRNGKey(3), dataset.train_images.shape[1:]),
                               parallel.replicated(mesh))
        initial = jax.device_get(state["arch"])
        split = data_pipeline.DeviceSplit(dataset.train_images, dataset.train_labels, mesh)
        state, metrics = search.make_step(s, mesh)(state, split.batch(np.arange(8)), split.batch(np.arange(8, 16)))
        results.append((jax.tree.map(np.subtract, jax.device_get(state["arch"]), initial), jax.device_get(metrics)))
    (arch1, m1), (arch4, m4) = results
    np.testing.assert_allclose(arch1["cell"], arch4["cell"], atol=1e-4 * np.abs(arch1["cell"]).max())
    assert np.abs(arch1["cell"]).max() > 1e-5
    np.testing.assert_allclose(m1["arch_grad_norm"], m4["arch_grad_norm"], rtol=1e-4)
    if kind == "implicit":
        assert 0 <= m4["solver_residual"] < 1.0
