"""Optimizers with the exact semantics of the PyTorch reference code (methods.md §0.1).

PyTorch's SGD and Adam add weight decay to the gradient (coupled L2), clip before that, and the
reference scripts step a cosine schedule once per epoch, so the learning rate is constant within an
epoch. The learning rate is a function of the global step here, so the optimizer state alone says
where in the schedule a run is (a resumed run needs nothing else).
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

Schedule = Callable[[jax.Array], jax.Array]


def epoch_cosine_schedule(
    base_lr: float,
    min_lr: float,
    num_epochs: int,
    steps_per_epoch: int,
    epoch_offset: int = 0,
) -> Schedule:
    """`CosineAnnealingLR(T_max=num_epochs, eta_min=min_lr)` stepped once per epoch.

    `epoch_offset=1` reproduces quark0/darts and PC-DARTS, which call `scheduler.step()` at the
    start of each epoch (PyTorch 0.3), so epoch e trains with lr(e + 1); 0 is DrNAS and AutoDL.
    """
    if num_epochs <= 0 or steps_per_epoch <= 0:
        raise ValueError(
            f"num_epochs ({num_epochs}) and steps_per_epoch ({steps_per_epoch}) must be positive")

    def schedule(step: jax.Array) -> jax.Array:
        epoch = jnp.asarray(step) // steps_per_epoch + epoch_offset
        epoch = jnp.minimum(epoch, num_epochs)
        return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + jnp.cos(math.pi * epoch / num_epochs))

    return schedule


WARMUP_MODES = ("scale_schedule", "scale_base")


def with_linear_warmup(schedule: Schedule, base_lr: float, warmup_epochs: int, steps_per_epoch: int,
                       mode: str) -> Schedule:
    """The large-batch ImageNet searches' linear warm-up: epoch e < warmup_epochs trains with
    `schedule * (e + 1) / warmup_epochs` ("scale_schedule", PC-DARTS, which overwrites the scheduled lr)
    or `base_lr * (e + 1) / warmup_epochs` ("scale_base", DrNAS); later epochs follow `schedule`."""
    if mode not in WARMUP_MODES:
        raise ValueError(f"warm-up mode {mode!r} is not one of {WARMUP_MODES}")
    if warmup_epochs <= 0:
        return schedule

    def warmed(step: jax.Array) -> jax.Array:
        epoch = jnp.asarray(step) // steps_per_epoch
        ramp = (epoch + 1) / warmup_epochs
        start = schedule(step) if mode == "scale_schedule" else jnp.asarray(base_lr, jnp.float32)
        return jnp.where(epoch < warmup_epochs, start * ramp, schedule(step))

    return warmed


def search_weight_schedule(cfg: ml_collections.ConfigDict, num_epochs: int, steps_per_epoch: int) -> Schedule:
    """The supernet weights' learning rate from `config.optimizer`: the per-epoch cosine, with the
    optional linear warm-up (`warmup_epochs`, `warmup_mode`) of the ImageNet searches."""
    schedule = epoch_cosine_schedule(cfg.lr, cfg.min_lr, num_epochs, steps_per_epoch, cfg.get("epoch_offset", 0))
    return with_linear_warmup(schedule, cfg.lr, cfg.get("warmup_epochs", 0), steps_per_epoch,
                              cfg.get("warmup_mode", "scale_schedule"))


def weight_optimizer(cfg: ml_collections.ConfigDict, schedule: Schedule) -> optax.GradientTransformation:
    """SGD(momentum, weight_decay, nesterov) after `clip_grad_norm_(grad_clip)`, as in PyTorch.

    Clipping sees the raw gradient, without the weight-decay term, because the references clip before
    `optimizer.step()` adds it.
    """
    parts = []
    if cfg.grad_clip and cfg.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip))
    if cfg.weight_decay:
        parts.append(optax.add_decayed_weights(cfg.weight_decay))
    parts.append(optax.trace(decay=cfg.momentum, nesterov=cfg.nesterov))
    parts.append(optax.scale_by_schedule(lambda count: -schedule(count)))
    return optax.chain(*parts)


def arch_optimizer(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """torch.optim.Adam(lr, betas=(b1, b2), eps, weight_decay): coupled L2, not AdamW."""
    parts = []
    if cfg.get("grad_clip", 0.0):
        parts.append(optax.clip_by_global_norm(cfg.grad_clip))
    if cfg.weight_decay:
        parts.append(optax.add_decayed_weights(cfg.weight_decay))
    parts.append(optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps))
    parts.append(optax.scale(-cfg.lr))
    return optax.chain(*parts)


def global_norm(tree) -> jax.Array:
    """The 2-norm over every leaf of a pytree (what `clip_grad_norm_` measures)."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree_util.tree_leaves(tree)))


def momentum_buffer(opt_state: optax.OptState):
    """The SGD momentum buffer (PyTorch's `momentum_buffer`; zeros before the first step)."""
    traces = [s for s in jax.tree_util.tree_leaves(
        opt_state, is_leaf=lambda x: isinstance(x, optax.TraceState))
        if isinstance(s, optax.TraceState)]
    if len(traces) != 1:
        raise ValueError(f"expected one optax.trace state in the weight optimizer, found {len(traces)}")
    return traces[0].trace


def keep_rows(row_mask, new, old):
    """`new` where a row may move, `old` elsewhere: in α and in every optimizer-state leaf shaped like it.

    `row_mask` maps an α key to bool [rows]; a leaf is matched by the last dict key of its path (Adam's
    moments mirror α's dict), so rows that got no gradient keep their values, moments and decay untouched.
    Adam's step count still advances for all rows.
    """
    def pick(path, n, o):
        key = path[-1].key if path and isinstance(path[-1], jax.tree_util.DictKey) else None
        if key in row_mask and getattr(n, "ndim", 0) >= 1 and n.shape[0] == row_mask[key].shape[0]:
            rows = row_mask[key].reshape((-1,) + (1,) * (n.ndim - 1))
            return jnp.where(rows, n, o)
        return n

    return jax.tree_util.tree_map_with_path(pick, new, old)
