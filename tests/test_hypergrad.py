"""Hypergradients against closed forms on a quadratic bi-level problem, and against hand-written autodiff.

The problem (float64, weights and architecture as dict pytrees, flattened inside the losses):
    L_tr(w, α; s) = ½ wᵀAw − wᵀ(Bα + s) + κ Σ sin(w)ᵀGα      (κ = 0: quadratic, closed forms)
    L_val(w, α; d) = ½‖Cw − d‖² + ½ αᵀEα
With κ = 0, w*(α) = A⁻¹(Bα + s) and the hypergradient is  Eα + BᵀA⁻¹Cᵀ(Cw* − d). k SGD steps of size η
from w_0 give w_k = Mᵏw_0 + (I − Mᵏ)w*, M = I − ηA, so dw_k/dα = (I − Mᵏ)A⁻¹B exactly.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from jnas import hypergrad, optim

NUM_WEIGHTS, NUM_ARCH, NUM_TARGETS = 6, 3, 4
WEIGHT_TEMPLATE = {"conv": np.zeros((2, 2)), "bias": np.zeros(2)}
ARCH_TEMPLATE = {"normal": np.zeros((1, 2)), "reduce": np.zeros(1)}


@pytest.fixture(scope="module", autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


class Quadratic:
    """The bi-level problem above with its closed forms (numpy float64)."""

    def __init__(self, nonlinearity: float = 0.0, seed: int = 0):
        rng = np.random.default_rng(seed)
        q, _ = np.linalg.qr(rng.normal(size=(NUM_WEIGHTS, NUM_WEIGHTS)))
        # Eigenvalues in [0.5, 2]: SGD with η = 0.3 contracts by at most 0.85 a step.
        self.A = q @ np.diag(np.linspace(0.5, 2.0, NUM_WEIGHTS)) @ q.T
        self.B = rng.normal(size=(NUM_WEIGHTS, NUM_ARCH))
        self.C = rng.normal(size=(NUM_TARGETS, NUM_WEIGHTS))
        self.E = np.diag(rng.uniform(0.5, 1.5, size=NUM_ARCH))
        self.G = rng.normal(size=(NUM_WEIGHTS, NUM_ARCH))
        self.kappa = nonlinearity
        self.alpha = rng.normal(size=NUM_ARCH)
        self.w0 = rng.normal(size=NUM_WEIGHTS)
        self.shift = np.zeros(NUM_WEIGHTS)
        self.target = rng.normal(size=NUM_TARGETS)
        _, self._unravel_w = ravel_pytree(WEIGHT_TEMPLATE)
        _, self._unravel_a = ravel_pytree(ARCH_TEMPLATE)

    def params(self, flat):
        return self._unravel_w(jnp.asarray(flat))

    def arch(self, flat):
        return self._unravel_a(jnp.asarray(flat))

    def train_loss(self, params, arch, batch):
        w, a = ravel_pytree(params)[0], ravel_pytree(arch)[0]
        quadratic = 0.5 * w @ self.A @ w - w @ (self.B @ a + batch["shift"])
        return quadratic + self.kappa * jnp.sin(w) @ (self.G @ a)

    def val_loss(self, params, arch, batch):
        w, a = ravel_pytree(params)[0], ravel_pytree(arch)[0]
        return 0.5 * jnp.sum((self.C @ w - batch["target"]) ** 2) + 0.5 * a @ self.E @ a

    @property
    def train_batch(self):
        return {"shift": self.shift}

    @property
    def val_batch(self):
        return {"target": self.target}

    def w_star(self):
        return np.linalg.solve(self.A, self.B @ self.alpha + self.shift)

    def implicit_closed_form(self, w, damping=0.0):
        """Eα + Bᵀ(A + δI)⁻¹Cᵀ(Cw − d), valid for κ = 0 at any w."""
        inner = np.linalg.solve(self.A + damping * np.eye(NUM_WEIGHTS), self.C.T @ (self.C @ w - self.target))
        return self.E @ self.alpha + self.B.T @ inner

    def unrolled_closed_form(self, lr, num_steps):
        """Eα + J_kᵀCᵀ(Cw_k − d), J_k = (I − Mᵏ)A⁻¹B, for k plain SGD steps from w0 (κ = 0)."""
        m_k = np.linalg.matrix_power(np.eye(NUM_WEIGHTS) - lr * self.A, num_steps)
        w_k = m_k @ self.w0 + (np.eye(NUM_WEIGHTS) - m_k) @ self.w_star()
        jacobian = (np.eye(NUM_WEIGHTS) - m_k) @ np.linalg.solve(self.A, self.B)
        return self.E @ self.alpha + jacobian.T @ self.C.T @ (self.C @ w_k - self.target)


def flat(tree) -> np.ndarray:
    return np.asarray(ravel_pytree(tree)[0])


@pytest.fixture(scope="module")
def quadratic(x64):
    return Quadratic()


@pytest.fixture(scope="module")
def perturbed(x64):
    """κ ≠ 0: ∇_α L_tr is not linear in w, so finite differences have an O(ε²) error to measure."""
    return Quadratic(nonlinearity=0.3, seed=1)


def _unrolled_sgd(problem, lr, num_steps, **kwargs):
    tx = optax.sgd(lr)
    params = problem.params(problem.w0)
    fn = jax.jit(functools.partial(hypergrad.unrolled, problem.train_loss, problem.val_loss,
                                   inner_tx=tx, num_steps=num_steps, **kwargs))
    return fn(params, problem.arch(problem.alpha), problem.train_batch, problem.val_batch,
              inner_state=tx.init(params))


# ----------------------------------------------------------------------------------------------------
# Implicit differentiation.


@pytest.mark.parametrize("solver,num_iters,neumann_lr", [("cg", 10, 0.0), ("neumann", 200, 0.5)])
def test_implicit_matches_closed_form_at_the_inner_optimum(quadratic, solver, num_iters, neumann_lr):
    w_star = quadratic.w_star()
    fn = jax.jit(functools.partial(hypergrad.implicit, quadratic.train_loss, quadratic.val_loss,
                                   solver=solver, num_iters=num_iters, neumann_lr=neumann_lr or 0.01))
    grads, info = fn(quadratic.params(w_star), quadratic.arch(quadratic.alpha),
                     quadratic.train_batch, quadratic.val_batch)
    assert set(grads) == set(ARCH_TEMPLATE)
    expected = quadratic.implicit_closed_form(w_star)
    np.testing.assert_allclose(flat(grads), expected, rtol=1e-10, atol=1e-10)
    # The reported residual is the true ‖Hx − b‖, small relative to ‖b‖ = ‖Cᵀ(Cw* − d)‖.
    rhs_norm = np.linalg.norm(quadratic.C.T @ (quadratic.C @ w_star - quadratic.target))
    np.testing.assert_allclose(info["rhs_norm"], rhs_norm, rtol=1e-12)
    assert float(info["residual"]) < 1e-10 * rhs_norm
    assert float(info["train_grad_norm"]) < 1e-10
    # The implicit term matters: the first-order hypergradient is far off.
    first = flat(hypergrad.first_order(quadratic.val_loss, quadratic.params(w_star),
                                       quadratic.arch(quadratic.alpha), quadratic.val_batch))
    assert np.abs(first - expected).max() > 0.1 * np.abs(expected).max()


def test_implicit_with_damping_away_from_the_optimum(quadratic):
    grads, info = hypergrad.implicit(
        quadratic.train_loss, quadratic.val_loss, quadratic.params(quadratic.w0),
        quadratic.arch(quadratic.alpha), quadratic.train_batch, quadratic.val_batch,
        solver="cg", num_iters=NUM_WEIGHTS + 2, damping=0.5)
    np.testing.assert_allclose(flat(grads), quadratic.implicit_closed_form(quadratic.w0, damping=0.5),
                               rtol=1e-10, atol=1e-10)
    stationarity = quadratic.A @ quadratic.w0 - quadratic.B @ quadratic.alpha
    np.testing.assert_allclose(info["train_grad_norm"], np.linalg.norm(stationarity), rtol=1e-12)


def test_truncated_neumann_is_the_partial_sum_and_cg_reports_its_residual(quadratic):
    """num_iters terms exactly, η Σ_{i<n} (I − ηH)^i b; an unconverged CG reports a non-zero residual."""
    w_star = quadratic.w_star()
    args = (quadratic.train_loss, quadratic.val_loss, quadratic.params(w_star),
            quadratic.arch(quadratic.alpha), quadratic.train_batch, quadratic.val_batch)
    lr, terms = 0.3, 3
    grads, info = hypergrad.implicit(*args, solver="neumann", num_iters=terms, neumann_lr=lr)
    m = np.eye(NUM_WEIGHTS) - lr * quadratic.A
    rhs = quadratic.C.T @ (quadratic.C @ w_star - quadratic.target)
    x = lr * sum(np.linalg.matrix_power(m, i) for i in range(terms)) @ rhs
    np.testing.assert_allclose(flat(grads), quadratic.E @ quadratic.alpha + quadratic.B.T @ x, rtol=1e-12)
    np.testing.assert_allclose(info["residual"], np.linalg.norm(quadratic.A @ x - rhs), rtol=1e-10)

    _, info_cg = hypergrad.implicit(*args, solver="cg", num_iters=2)
    assert 1e-6 * float(info_cg["rhs_norm"]) < float(info_cg["residual"]) < float(info_cg["rhs_norm"])


def test_conjugate_gradient_on_pytrees_and_a_zero_rhs(quadratic):
    a = quadratic.A
    rhs = quadratic.params(np.arange(1.0, NUM_WEIGHTS + 1))
    matvec = lambda v: quadratic.params(a @ ravel_pytree(v)[0])  # noqa: E731
    solve = jax.jit(functools.partial(hypergrad.conjugate_gradient, matvec, num_iters=NUM_WEIGHTS))
    solution = solve(rhs=rhs)
    np.testing.assert_allclose(flat(solution), np.linalg.solve(a, flat(rhs)), rtol=1e-10)
    # A converged iteration (here: converged from the start) must give zeros, not 0/0.
    zero = hypergrad.conjugate_gradient(matvec, quadratic.params(np.zeros(NUM_WEIGHTS)), 4)
    np.testing.assert_array_equal(flat(zero), 0.0)


def test_hvp_is_the_weight_hessian(perturbed):
    vector = np.linspace(-1.0, 1.0, NUM_WEIGHTS)
    product = hypergrad.hvp(perturbed.train_loss, perturbed.params(perturbed.w0),
                            perturbed.arch(perturbed.alpha), perturbed.train_batch, perturbed.params(vector))
    hessian = perturbed.A - perturbed.kappa * np.diag(np.sin(perturbed.w0) * (perturbed.G @ perturbed.alpha))
    np.testing.assert_allclose(flat(product), hessian @ vector, rtol=1e-12)


# ----------------------------------------------------------------------------------------------------
# Unrolled differentiation.


def test_one_unrolled_step_is_the_hand_derived_formula(quadratic):
    lr = 0.3
    q = quadratic
    w1 = q.w0 - lr * (q.A @ q.w0 - q.B @ q.alpha - q.shift)
    expected = q.E @ q.alpha + lr * q.B.T @ q.C.T @ (q.C @ w1 - q.target)
    np.testing.assert_allclose(flat(_unrolled_sgd(q, lr, 1)), expected, rtol=1e-12)


def test_unrolled_converges_to_the_implicit_hypergradient(quadratic):
    lr = 0.3
    limit = quadratic.implicit_closed_form(quadratic.w_star())
    errors = []
    for num_steps in (1, 4, 16, 64, 256):
        grads = flat(_unrolled_sgd(quadratic, lr, num_steps))
        # Exact for every k, not only in the limit.
        np.testing.assert_allclose(grads, quadratic.unrolled_closed_form(lr, num_steps),
                                   rtol=1e-10, atol=1e-12)
        errors.append(np.abs(grads - limit).max())
    assert all(later < earlier for earlier, later in zip(errors, errors[1:])), errors
    assert errors[0] > 1e-2 * np.abs(limit).max()
    assert errors[-1] < 1e-10 * np.abs(limit).max()


def _weight_optimizer(grad_clip: float):
    cfg = ml_collections.ConfigDict(dict(lr=0.1, min_lr=0.0, momentum=0.9, nesterov=False,
                                         weight_decay=3e-4, grad_clip=grad_clip, epoch_offset=0))
    # Two steps per epoch over four epochs: the learning rate changes inside the unrolled window.
    schedule = optim.epoch_cosine_schedule(cfg.lr, cfg.min_lr, num_epochs=4, steps_per_epoch=2,
                                           epoch_offset=cfg.epoch_offset)
    return cfg, schedule, optim.weight_optimizer(cfg, schedule)


def _per_step_batches(problem, num_steps):
    rng = np.random.default_rng(7)
    return {"shift": rng.normal(size=(num_steps, NUM_WEIGHTS))}


def _started_state(problem, tx):
    """The optimizer after one real step: a non-zero momentum buffer and step count 1."""
    params = problem.params(problem.w0)
    state = tx.init(params)
    grads = jax.grad(problem.train_loss)(params, problem.arch(problem.alpha), problem.train_batch)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state


@pytest.mark.parametrize("grad_clip", [0.0, 0.5])
def test_unrolled_through_the_weight_optimizer_is_autodiff_through_the_update_rule(perturbed, grad_clip):
    """SGD with clipping, coupled weight decay, momentum and a per-epoch cosine lr, written out by hand."""
    num_steps = 5
    cfg, schedule, tx = _weight_optimizer(grad_clip)
    params, state = _started_state(perturbed, tx)
    batches = _per_step_batches(perturbed, num_steps)

    def hand_written(arch):
        w, buf = params, optim.momentum_buffer(state)
        for i in range(num_steps):
            g = jax.grad(perturbed.train_loss)(w, arch, {"shift": batches["shift"][i]})
            if grad_clip:
                norm = optim.global_norm(g)
                g = jax.tree.map(lambda t: jnp.where(norm < grad_clip, t, t * grad_clip / norm), g)
            buf = jax.tree.map(lambda b, gi, wi: cfg.momentum * b + gi + cfg.weight_decay * wi, buf, g, w)
            w = jax.tree.map(lambda wi, b: wi - schedule(1 + i) * b, w, buf)
        return perturbed.val_loss(w, arch, perturbed.val_batch)

    arch = perturbed.arch(perturbed.alpha)
    if grad_clip:  # the clipped branch must actually be exercised
        start_grads = jax.grad(perturbed.train_loss)(params, arch, perturbed.train_batch)
        assert float(optim.global_norm(start_grads)) > grad_clip
    expected = jax.grad(hand_written)(arch)
    fn = jax.jit(functools.partial(hypergrad.unrolled, perturbed.train_loss, perturbed.val_loss,
                                   inner_tx=tx, num_steps=num_steps, train_batch_per_step=True))
    got = fn(params, arch, batches, perturbed.val_batch, inner_state=state)
    np.testing.assert_allclose(flat(got), flat(expected), rtol=1e-10, atol=1e-12)


def test_remat_and_batch_reuse_do_not_change_the_result(perturbed):
    num_steps = 4
    _, _, tx = _weight_optimizer(0.0)
    params, state = _started_state(perturbed, tx)
    arch = perturbed.arch(perturbed.alpha)
    batches = _per_step_batches(perturbed, num_steps)

    def run(train_batch, **kwargs):
        return flat(hypergrad.unrolled(perturbed.train_loss, perturbed.val_loss, params, arch, train_batch,
                                       perturbed.val_batch, inner_tx=tx, inner_state=state,
                                       num_steps=num_steps, **kwargs))

    plain = run(batches, train_batch_per_step=True)
    np.testing.assert_allclose(run(batches, train_batch_per_step=True, remat=True), plain, rtol=1e-13)
    # The remat flag really inserts a checkpoint around the step (the equality above holds either way).
    for remat in (False, True):
        jaxpr = jax.make_jaxpr(lambda a: hypergrad.unrolled(
            perturbed.train_loss, perturbed.val_loss, params, a, batches, perturbed.val_batch, inner_tx=tx,
            inner_state=state, num_steps=num_steps, train_batch_per_step=True, remat=remat))(arch)
        assert ("checkpoint" in str(jaxpr) or "remat" in str(jaxpr)) == remat
    one = {"shift": batches["shift"][0]}
    tiled = {"shift": np.repeat(batches["shift"][:1], num_steps, axis=0)}
    np.testing.assert_allclose(run(one, remat=True), run(tiled, train_batch_per_step=True), rtol=1e-13)


# ----------------------------------------------------------------------------------------------------
# DARTS second order against the one-step unrolled hypergradient.


def test_darts_second_order_is_one_unrolled_sgd_step(perturbed):
    lr = 0.3
    p = perturbed
    params, arch = p.params(p.w0), p.arch(p.alpha)
    reference = flat(_unrolled_sgd(p, lr, 1))
    darts = functools.partial(hypergrad.darts_second_order, p.train_loss, p.val_loss, params, arch,
                              p.train_batch, p.val_batch, lr=lr, momentum_buffer=None, momentum=0.0,
                              weight_decay=0.0)
    np.testing.assert_allclose(flat(darts(hvp="exact")), reference, rtol=1e-12)
    # Central differences: error O(ε²) with ε = r/‖v‖, so 10x smaller r is ~100x more accurate.
    coarse = np.abs(flat(darts(hvp="finite_difference", fd_radius=1e-2)) - reference).max()
    fine = np.abs(flat(darts(hvp="finite_difference", fd_radius=1e-3)) - reference).max()
    first = flat(hypergrad.first_order(p.val_loss, params, arch, p.val_batch))
    second_order_term = np.abs(reference - first).max()
    assert 0 < fine < coarse / 50
    assert coarse < 1e-3 * second_order_term


def test_darts_second_order_with_momentum_is_one_step_of_the_weight_optimizer(perturbed):
    cfg, schedule, tx = _weight_optimizer(0.0)
    params, state = _started_state(perturbed, tx)
    arch = perturbed.arch(perturbed.alpha)
    reference = hypergrad.unrolled(perturbed.train_loss, perturbed.val_loss, params, arch,
                                   perturbed.train_batch, perturbed.val_batch, inner_tx=tx,
                                   inner_state=state, num_steps=1)
    darts = hypergrad.darts_second_order(
        perturbed.train_loss, perturbed.val_loss, params, arch, perturbed.train_batch, perturbed.val_batch,
        lr=schedule(1), momentum_buffer=optim.momentum_buffer(state), momentum=cfg.momentum,
        weight_decay=cfg.weight_decay, hvp="exact")
    np.testing.assert_allclose(flat(darts), flat(reference), rtol=1e-12)


# ----------------------------------------------------------------------------------------------------
# Bad input.


def test_bad_options_raise(quadratic):
    q = quadratic
    args = (q.train_loss, q.val_loss, q.params(q.w0), q.arch(q.alpha), q.train_batch, q.val_batch)
    with pytest.raises(ValueError, match="solver"):
        hypergrad.implicit(*args, solver="lu")
    with pytest.raises(ValueError, match="num_iters"):
        hypergrad.implicit(*args, num_iters=0)
    with pytest.raises(ValueError, match="damping"):
        hypergrad.implicit(*args, damping=-1.0)
    with pytest.raises(ValueError, match="neumann_lr"):
        hypergrad.implicit(*args, solver="neumann", neumann_lr=0.0)
    tx = optax.sgd(0.1)
    state = tx.init(q.params(q.w0))
    with pytest.raises(ValueError, match="num_steps"):
        hypergrad.unrolled(*args, inner_tx=tx, inner_state=state, num_steps=0)
    with pytest.raises(ValueError, match="leading axis"):
        hypergrad.unrolled(*args, inner_tx=tx, inner_state=state, num_steps=3, train_batch_per_step=True)
