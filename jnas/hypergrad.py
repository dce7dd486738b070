r"""Hypergradients of the bi-level NAS problem, as pure functions of loss callables.

The problem is  min_α L_val(w*(α), α)  s.t.  w*(α) = argmin_w L_tr(w, α).
Every function here takes the losses as `loss(params, arch, batch) -> scalar` callables (close over
BatchNorm statistics, rngs and the model), works on any pytrees and is jit-compatible.

- `first_order`: ∇_α L_val(w, α), treating w as independent of α (DARTS-V1).
- `darts_second_order`: the DARTS-V2 hypergradient (methods.md §1.4). One virtual step of the real
  weight optimizer, w' = w − ξ(μ·buf + ∇_w L_tr(w, α) + λw), without clipping; then
      g = ∇_α L_val(w', α) − ξ · ∇²_{α,w} L_tr(w, α) · v,   v = ∇_{w'} L_val(w', α).
  The mixed second derivative times v is taken either by the reference's central finite difference at
  the original w on the training batch (ε = r/‖v‖) or exactly (forward-over-reverse). The exact variant
  equals autodiff through the virtual step, up to float rounding.
"""

from __future__ import annotations

from typing import Any, Callable, Literal

import jax
import jax.numpy as jnp

from jnas.optim import global_norm

PyTree = Any
LossFn = Callable[[PyTree, PyTree, Any], jax.Array]


def first_order(val_loss: LossFn, params: PyTree, arch: PyTree, val_batch: Any) -> PyTree:
    """∇_α L_val(w, α)."""
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
    """∇²_{α,w} L_tr(w, α) · v, the derivative along v of ∇_α L_tr at the original w."""
    grad_arch = jax.grad(train_loss, argnums=1)
    if method == "exact":
        # Forward-over-reverse: the directional derivative of ∇_α L_tr along w -> w + t v.
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
    """The DARTS-V2 hypergradient of methods.md §1.4 (see the module docstring)."""
    unrolled = virtual_step(train_loss, params, arch, train_batch, lr=lr,
                            momentum_buffer=momentum_buffer, momentum=momentum,
                            weight_decay=weight_decay)
    grad_arch, v = jax.grad(val_loss, argnums=(1, 0))(unrolled, arch, val_batch)
    h = mixed_hvp(train_loss, params, arch, train_batch, v, method=hvp, fd_radius=fd_radius)
    return jax.tree.map(lambda g, hv: g - lr * hv, grad_arch, h)
