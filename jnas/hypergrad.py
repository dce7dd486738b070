r"""Hypergradients of the bi-level NAS problem, as pure functions of loss callables.

The problem is

    min_α  F(α) = L_val(w*(α), α)    s.t.    w*(α) = argmin_w L_tr(w, α),

and every function here approximates the hypergradient dF/dα = ∇_α L_val + (dw*/dα)ᵀ ∇_w L_val.
The losses are `loss(params, arch, batch) -> scalar` callables (close over BatchNorm statistics, rngs
and the model); params, arch and batches may be any pytrees; every function is pure and
jit-compatible (the keyword options that select an algorithm or a loop length are static).

Notation: H = ∇²_w L_tr(w, α) (the weight Hessian) and ∇²_{α,w} L_tr, the mixed second derivative, as
the linear map u ↦ ∂/∂t ∇_α L_tr(w + t u, α)|_{t=0} from weight space to architecture space.

- `first_order`: ∇_α L_val(w, α), treating w as independent of α (DARTS-V1). 1 gradient.
- `darts_second_order`: the DARTS-V2 hypergradient (methods.md §1.4). One virtual step of the real
  weight optimizer, w' = w − ξ(μ·buf + ∇_w L_tr(w, α) + λw), without clipping; then
      g = ∇_α L_val(w', α) − ξ · ∇²_{α,w} L_tr(w, α) · v,   v = ∇_{w'} L_val(w', α).
  The mixed second derivative times v is taken either by the reference's central finite difference at
  the original w on the training batch (ε = r/‖v‖) or exactly (forward-over-reverse). The exact variant
  equals autodiff through the virtual step, up to float rounding.
- `unrolled`: the exact derivative of L_val(w_k(α), α) through k real steps of any optax optimizer
  (reverse-mode through a `lax.scan`, optionally rematerialised).
- `implicit`: the implicit-function-theorem hypergradient
      g = ∇_α L_val − ∇²_{α,w} L_tr · (H + δI)⁻¹ ∇_w L_val,
  with the linear solve done by fixed-iteration conjugate gradients or a truncated Neumann series.

All second derivatives are exact Hessian-vector products (forward-over-reverse: `jax.jvp` of
`jax.grad`, or `jax.linearize` of `jax.grad` when many products share one point); nothing here ever
forms a Hessian. docs/hypergradients.md compares the methods and their costs.
"""

from __future__ import annotations

from typing import Any, Callable, Literal

import jax
import jax.numpy as jnp
import optax

from jnas.optim import global_norm

PyTree = Any
LossFn = Callable[[PyTree, PyTree, Any], jax.Array]
LinearOperator = Callable[[PyTree], PyTree]


# ----------------------------------------------------------------------------------------------------
# Pytree linear algebra.


def _tree_vdot(a: PyTree, b: PyTree) -> jax.Array:
    """⟨a, b⟩ summed over every leaf."""
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def _tree_axpy(alpha: jax.Array, x: PyTree, y: PyTree) -> PyTree:
    """alpha·x + y, leafwise (alpha cast to each leaf's dtype so the loop carries keep their types)."""
    return jax.tree.map(lambda a, b: (alpha.astype(a.dtype) * a + b), x, y)


def _safe_divide(num: jax.Array, den: jax.Array) -> jax.Array:
    """num / den, or 0 where den == 0 (a converged Krylov iteration: the residual vanished)."""
    nonzero = den != 0
    return jnp.where(nonzero, num / jnp.where(nonzero, den, 1), 0)


def _check_positive_int(name: str, value: int, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be a Python int >= {minimum} (it fixes a loop length), got {value!r}")


def _is_concrete_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


# ----------------------------------------------------------------------------------------------------
# Second-derivative products.


def hvp(loss: LossFn, params: PyTree, arch: PyTree, batch: Any, vector: PyTree) -> PyTree:
    r"""The exact weight Hessian-vector product ∇²_w L(w, α) · v.

    Forward-over-reverse: the directional derivative of w ↦ ∇_w L(w, α) along v,
        H v = ∂/∂t ∇_w L(w + t v, α)|_{t=0},
    one `jax.jvp` of `jax.grad`, about the cost of 2-3 gradient evaluations. `vector` has the structure
    of `params`; so has the result.
    """
    _, tangent = jax.jvp(lambda w: jax.grad(loss)(w, arch, batch), (params,), (vector,))
    return tangent


def mixed_hvp(
    train_loss: LossFn,
    params: PyTree,
    arch: PyTree,
    train_batch: Any,
    vector: PyTree,
    *,
    method: Literal["finite_difference", "exact"] = "finite_difference",
    fd_radius: float = 0.01,
) -> PyTree:
    r"""∇²_{α,w} L_tr(w, α) · v, the derivative along v of ∇_α L_tr at the original w.

    `method="exact"`: ∂/∂t ∇_α L_tr(w + t v, α)|_{t=0} by forward-over-reverse (`jax.jvp` of
    `jax.grad` w.r.t. α). `method="finite_difference"`: the DARTS reference's central difference
        (∇_α L_tr(w + εv, α) − ∇_α L_tr(w − εv, α)) / 2ε,   ε = fd_radius / ‖v‖,
    whose error is O(ε²·‖∂³L_tr‖) (exact, up to rounding, when L_tr is quadratic in w). The result has
    the structure of `arch`.
    """
    grad_arch = jax.grad(train_loss, argnums=1)
    if method == "exact":
        _, tangent = jax.jvp(lambda w: grad_arch(w, arch, train_batch), (params,), (vector,))
        return tangent
    if method != "finite_difference":
        raise ValueError(f"unknown Hessian-vector product {method!r}; use 'finite_difference' or 'exact'")
    eps = fd_radius / global_norm(vector)
    w_plus = jax.tree.map(lambda w, v: w + eps * v, params, vector)
    w_minus = jax.tree.map(lambda w, v: w - eps * v, params, vector)
    g_plus = grad_arch(w_plus, arch, train_batch)
    g_minus = grad_arch(w_minus, arch, train_batch)
    return jax.tree.map(lambda p, m: (p - m) / (2.0 * eps), g_plus, g_minus)


# ----------------------------------------------------------------------------------------------------
# First order and DARTS second order.


def first_order(val_loss: LossFn, params: PyTree, arch: PyTree, val_batch: Any) -> PyTree:
    """∇_α L_val(w, α): the hypergradient with dw*/dα taken as 0 (DARTS-V1). One gradient."""
    return jax.grad(val_loss, argnums=1)(params, arch, val_batch)


def virtual_step(
    train_loss: LossFn,
    params: PyTree,
    arch: PyTree,
    train_batch: Any,
    *,
    lr: jax.Array,
    momentum_buffer: PyTree | None,
    momentum: float,
    weight_decay: float,
) -> PyTree:
    """w' = w − ξ(μ·buf + ∇_w L_tr + λw): quark0/darts `_compute_unrolled_model` (no clipping)."""
    grads = jax.grad(train_loss)(params, arch, train_batch)
    if momentum_buffer is None:
        momentum_buffer = jax.tree.map(jnp.zeros_like, params)
    return jax.tree.map(
        lambda w, g, b: w - lr * (momentum * b + g + weight_decay * w),
        params, grads, momentum_buffer)


def darts_second_order(
    train_loss: LossFn,
    val_loss: LossFn,
    params: PyTree,
    arch: PyTree,
    train_batch: Any,
    val_batch: Any,
    *,
    lr: jax.Array,
    momentum_buffer: PyTree | None,
    momentum: float,
    weight_decay: float,
    hvp: Literal["finite_difference", "exact"] = "finite_difference",
    fd_radius: float = 0.01,
) -> PyTree:
    r"""The DARTS-V2 hypergradient of methods.md §1.4.

    With w' = w − ξ(μ·buf + ∇_w L_tr(w, α) + λw) (`virtual_step`, no clipping) and
    v = ∇_{w'} L_val(w', α),
        g = ∇_α L_val(w', α) − ξ · ∇²_{α,w} L_tr(w, α) · v.
    This is the exact derivative of L_val(w'(α), α) (dw'/dα = −ξ∇²_{w,α} L_tr, the momentum buffer and
    the decay term do not depend on α), i.e. `unrolled` with one step of SGD(ξ, μ, λ) and the same
    buffer, when `hvp="exact"`; `hvp="finite_difference"` reproduces the reference (see `mixed_hvp`).
    Cost: 2 gradients + 1 mixed product (2 more gradients by finite difference).
    """
    w_virtual = virtual_step(train_loss, params, arch, train_batch, lr=lr,
                             momentum_buffer=momentum_buffer, momentum=momentum,
                             weight_decay=weight_decay)
    grad_arch, v = jax.grad(val_loss, argnums=(1, 0))(w_virtual, arch, val_batch)
    h = mixed_hvp(train_loss, params, arch, train_batch, v, method=hvp, fd_radius=fd_radius)
    return jax.tree.map(lambda g, hv: g - lr * hv, grad_arch, h)


# ----------------------------------------------------------------------------------------------------
# Unrolled differentiation through k real optimizer steps.


def unrolled(
    train_loss: LossFn,
    val_loss: LossFn,
    params: PyTree,
    arch: PyTree,
    train_batch: Any,
    val_batch: Any,
    *,
    inner_tx: optax.GradientTransformation,
    inner_state: optax.OptState,
    num_steps: int,
    train_batch_per_step: bool = False,
    remat: bool = False,
) -> PyTree:
    r"""The exact hypergradient d/dα L_val(w_k(α), α) through `num_steps` real optimizer steps.

    From (w_0, s_0) = (params, inner_state), for i = 0 … k−1:
        (u_i, s_{i+1}) = inner_tx.update(∇_w L_tr(w_i, α; b_i), s_i, w_i),
        w_{i+1} = optax.apply_updates(w_i, u_i),
    so everything `inner_tx` does (momentum, weight decay, clipping, the learning-rate schedule read from
    its step count) is differentiated through. Reverse mode gives
        dF/dα = ∇_α L_val(w_k, α) + Σ_i (∂w_{i+1}/∂α)ᵀ λ_{i+1},
    the adjoints λ_i flowing back through every step (each step's backward pass contains one
    Hessian-vector product of L_tr, taken by reverse-over-reverse autodiff). Only α is differentiated:
    params and inner_state are the starting point, constants. The caller's optimizer state is not
    advanced (the function is pure).

    Training batches (b_i): with `train_batch_per_step=False` the one `train_batch` is reused at every
    step; with `True`, every leaf of `train_batch` carries a leading axis of size `num_steps` and step i
    uses slice i (scanned over, like the real training loop would see them).

    Cost: k gradients forward, k Hessian-vector products backward; memory: the scan saves the carry
    (weights and optimizer state) of every step, O(k·|w|), plus each step's activations. With
    `remat=True` each step is wrapped in `jax.checkpoint`, so its activations are recomputed in the
    backward pass instead of stored (≈ one more gradient per step) and memory no longer grows with k
    times the activation size.
    """
    _check_positive_int("num_steps", num_steps)
    if train_batch_per_step:
        leading = {jnp.shape(leaf)[0] if jnp.ndim(leaf) else None
                   for leaf in jax.tree_util.tree_leaves(train_batch)}
        if leading != {num_steps}:
            raise ValueError(
                f"train_batch_per_step=True needs every train_batch leaf to have a leading axis of size "
                f"num_steps={num_steps}; got leading sizes {sorted(leading, key=str)}. Stack one batch "
                "per step, or pass a single batch with train_batch_per_step=False to reuse it.")

    def validation_after_steps(arch):
        def step(carry, batch):
            w, s = carry
            if batch is None:
                batch = train_batch
            grads = jax.grad(train_loss)(w, arch, batch)
            updates, s = inner_tx.update(grads, s, w)
            return (optax.apply_updates(w, updates), s), None

        if remat:
            step = jax.checkpoint(step)
        xs = train_batch if train_batch_per_step else None
        (w_k, _), _ = jax.lax.scan(step, (params, inner_state), xs, length=num_steps)
        return val_loss(w_k, arch, val_batch)

    return jax.grad(validation_after_steps)(arch)


# ----------------------------------------------------------------------------------------------------
# Implicit differentiation.


def conjugate_gradient(matvec: LinearOperator, rhs: PyTree, num_iters: int) -> PyTree:
    r"""x ≈ A⁻¹ b by `num_iters` conjugate-gradient iterations from x_0 = 0, on pytrees.

    A (`matvec`) must be symmetric positive definite for the iteration to be meaningful. Standard CG:
        α_i = ‖r_i‖² / ⟨p_i, A p_i⟩,  x_{i+1} = x_i + α_i p_i,  r_{i+1} = r_i − α_i A p_i,
        p_{i+1} = r_{i+1} + (‖r_{i+1}‖² / ‖r_i‖²) p_i.
    Exact in n iterations for an n-dimensional A in exact arithmetic; the fixed count keeps the loop a
    `lax.fori_loop` (jit- and vmap-friendly). Once the residual vanishes the steps become 0 instead of
    0/0. One `matvec` per iteration.
    """
    _check_positive_int("num_iters", num_iters)
    x0 = jax.tree.map(jnp.zeros_like, rhs)
    rs0 = _tree_vdot(rhs, rhs)

    def body(_, carry):
        x, r, p, rs = carry
        ap = matvec(p)
        step = _safe_divide(rs, _tree_vdot(p, ap))
        x = _tree_axpy(step, p, x)
        r = _tree_axpy(-step, ap, r)
        rs_new = _tree_vdot(r, r)
        p = _tree_axpy(_safe_divide(rs_new, rs), p, r)
        return x, r, p, rs_new

    x, _, _, _ = jax.lax.fori_loop(0, num_iters, body, (x0, rhs, rhs, rs0))
    return x


def neumann_series(matvec: LinearOperator, rhs: PyTree, num_terms: int, lr: float | jax.Array) -> PyTree:
    r"""x = η Σ_{i=0}^{n−1} (I − ηA)^i b, the truncated Neumann series for A⁻¹ b.

    Converges to A⁻¹ b iff the spectral radius of I − ηA is below 1 (for symmetric A: 0 < η < 2/λ_max
    and A positive definite); the error is (I − ηA)^n A⁻¹ b. Equivalently, n steps of gradient descent
    with step η on ½xᵀAx − bᵀx from x = 0. n − 1 `matvec`s.
    """
    _check_positive_int("num_terms", num_terms)

    def body(_, carry):
        term, total = carry
        term = _tree_axpy(-jnp.asarray(lr), matvec(term), term)
        return term, jax.tree.map(jnp.add, total, term)

    _, total = jax.lax.fori_loop(0, num_terms - 1, body, (rhs, rhs))
    return jax.tree.map(lambda t: jnp.asarray(lr, t.dtype) * t, total)


def implicit(
    train_loss: LossFn,
    val_loss: LossFn,
    params: PyTree,
    arch: PyTree,
    train_batch: Any,
    val_batch: Any,
    *,
    solver: Literal["cg", "neumann"] = "cg",
    num_iters: int = 10,
    damping: float | jax.Array = 0.0,
    neumann_lr: float | jax.Array = 0.01,
) -> tuple[PyTree, dict[str, jax.Array]]:
    r"""The implicit-function-theorem hypergradient at (w, α) = (params, arch).

    If ∇_w L_tr(w*(α), α) = 0 then dw*/dα = −H⁻¹ ∇²_{w,α} L_tr, H = ∇²_w L_tr, so
        dF/dα = ∇_α L_val − ∇²_{α,w} L_tr · x,    x = (H + δI)⁻¹ ∇_w L_val,
    everything evaluated at (params, arch), L_tr on `train_batch`, L_val on `val_batch`, δ = `damping`
    (δ = 0 is the exact formula; δ > 0 regularises an ill-conditioned or indefinite H, as for a network
    that is not at a strict minimum). The formula assumes params ≈ w*(α): `info["train_grad_norm"]`
    = ‖∇_w L_tr(params, arch)‖ reports how stationary they are.

    The solve (x):
    - `solver="cg"`: `num_iters` conjugate-gradient iterations (needs H + δI positive definite).
    - `solver="neumann"`: η Σ_{i=0}^{n−1} (I − η(H + δI))^i ∇_w L_val with n = `num_iters` terms and
      η = `neumann_lr` (converges for 0 < η < 2/λ_max(H + δI)).
    The Hessian products are exact (forward-over-reverse): `jax.linearize` of ∇_w L_tr at params, so the
    primal pass is run once and each product costs only its tangent pass. The mixed product
    ∇²_{α,w} L_tr · x is exact too (`mixed_hvp(..., method="exact")`).

    Returns (hypergradient with the structure of `arch`, info) with info = {"residual": ‖(H + δI)x − b‖,
    "rhs_norm": ‖b‖, "train_grad_norm": ‖∇_w L_tr‖}, b = ∇_w L_val; the residual is recomputed with one
    extra product, not taken from the solver's recurrence.
    Cost: 1 gradient of L_val, 1 linearised gradient of L_tr, `num_iters` (cg) or `num_iters` − 1
    (neumann) Hessian-vector products, 1 for the residual, 1 mixed product.
    """
    if solver not in ("cg", "neumann"):
        raise ValueError(f"unknown implicit solver {solver!r}; use 'cg' or 'neumann'")
    _check_positive_int("num_iters", num_iters)
    if _is_concrete_number(damping) and damping < 0:
        raise ValueError(f"damping must be >= 0 (it is added to the Hessian's diagonal), got {damping}")
    if solver == "neumann" and _is_concrete_number(neumann_lr) and neumann_lr <= 0:
        raise ValueError(f"neumann_lr must be > 0 (and below 2/λ_max of the Hessian), got {neumann_lr}")

    grad_arch_val, grad_w_val = jax.grad(val_loss, argnums=(1, 0))(params, arch, val_batch)
    train_grad, hessian_product = jax.linearize(
        lambda w: jax.grad(train_loss)(w, arch, train_batch), params)

    def damped_hessian_product(vector: PyTree) -> PyTree:
        return _tree_axpy(jnp.asarray(damping), vector, hessian_product(vector))

    if solver == "cg":
        solution = conjugate_gradient(damped_hessian_product, grad_w_val, num_iters)
    else:
        solution = neumann_series(damped_hessian_product, grad_w_val, num_iters, neumann_lr)

    residual = jax.tree.map(jnp.subtract, damped_hessian_product(solution), grad_w_val)
    mixed = mixed_hvp(train_loss, params, arch, train_batch, solution, method="exact")
    hypergradient = jax.tree.map(jnp.subtract, grad_arch_val, mixed)
    info = {
        "residual": global_norm(residual),
        "rhs_norm": global_norm(grad_w_val),
        "train_grad_norm": global_norm(train_grad),
    }
    return hypergradient, info
