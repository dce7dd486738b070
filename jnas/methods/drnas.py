"""DrNAS (Chen et al., ICLR 2021): Dirichlet architecture distributions, methods.md §4.

Each edge's op weights are one sample θ ~ Dir(β) per forward pass and cell type, β = ELU(α) + 1, with
pathwise (implicit reparameterisation) gradients: `jax.random.dirichlet` is built from `jax.random.gamma`,
whose derivative in its shape parameter is the implicit one, as PyTorch's `Dirichlet.rsample`.
The anchor towards β = 1 is either L2 on α through Adam's coupled weight decay (`reg_type="l2"`, the
reference default) or reg_scale·Σ KL(Dir(β) ‖ Dir(1)) added to the architecture loss (`"kl"`).

Progressive learning (`progressive=True`, methods.md §4.5): stages with a shrinking partial-channel K; at
each stage boundary every edge keeps its `num_keep` largest raw α (the others' α set to 0 and their ops
removed from the supernet), and the ops' channels are widened by duplication (`jnas.nn.widen`). The
architecture warm-up (`config.arch_warmup_epochs`) counts from the start of each stage.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import digamma, gammaln

from jnas.methods.base import Clock, Method, PyTree, Stage, softmax_numpy

REG_TYPES = ("l2", "kl")


def concentration(alpha: jax.Array) -> jax.Array:
    """β = ELU(α) + 1: exp(α) below 0, α + 1 above; β = 1 (uniform) at α = 0."""
    return jax.nn.elu(alpha) + 1.0


def dirichlet_kl_to_uniform(beta: jax.Array) -> jax.Array:
    """KL(Dir(β) ‖ Dir(1)) per row, in closed form."""
    b0 = jnp.sum(beta, axis=-1)
    k = beta.shape[-1]
    ones_term = -gammaln(jnp.float32(k))  # −lnΓ(Σ1) + Σ lnΓ(1)
    return (gammaln(b0) - jnp.sum(gammaln(beta), axis=-1) + ones_term
            + jnp.sum((beta - 1.0) * (digamma(beta) - digamma(b0)[..., None]), axis=-1))


def masked_dirichlet(rng: jax.Array, beta: jax.Array, mask: np.ndarray | None) -> jax.Array:
    """One sample per row; pruned entries zeroed and the rest renormalised (DrNAS utils.py:176-183)."""
    theta = jax.random.dirichlet(rng, beta)
    if mask is None:
        return theta
    theta = theta * jnp.asarray(mask, theta.dtype)
    return theta / jnp.sum(theta, axis=-1, keepdims=True)


class DrNAS(Method):
    name = "drnas"
    default_options = {
        "reg_type": "l2",
        "reg_scale": 1e-3,
        "progressive": False,
        # Per stage, when progressive: epochs, partial-channel K, and ops kept per edge (0: all).
        "stage_epochs": (25, 25),
        "stage_partial_channels": (6, 4),
        "stage_num_keep": (0, 4),
    }

    def check_config(self, config) -> None:
        super().check_config(config)
        o = self.options
        if o.reg_type not in REG_TYPES:
            raise ValueError(f"config.method_options.reg_type={o.reg_type!r} is not one of: {', '.join(REG_TYPES)}")
        if o.reg_scale < 0:
            raise ValueError(f"config.method_options.reg_scale={o.reg_scale} must be >= 0")
        if config.arch_optimizer.weight_decay:
            raise ValueError(
                f"config.arch_optimizer.weight_decay={config.arch_optimizer.weight_decay}: DrNAS's anchor is "
                "config.method_options.reg_scale (Adam's L2 for reg_type='l2', the KL weight for 'kl'); set "
                "config.arch_optimizer.weight_decay=0 (the reference scripts ignore that flag too)")
        if config.space == "darts" and "none" in self.space.op_names:
            raise ValueError("DrNAS's DARTS space has no 'none' op: set config.space_options.op_names to the "
                             "seven other primitives (configs/drnas_cifar10.py does)")
        if o.progressive:
            lengths = {len(o.stage_epochs), len(o.stage_partial_channels), len(o.stage_num_keep)}
            if len(lengths) != 1:
                raise ValueError("config.method_options.stage_epochs, stage_partial_channels and stage_num_keep "
                                 "must have one entry per stage")
            if sum(o.stage_epochs) != config.num_epochs:
                raise ValueError(f"config.method_options.stage_epochs={tuple(o.stage_epochs)} must add up to "
                                 f"config.num_epochs={config.num_epochs}")
            if any(e <= config.arch_warmup_epochs for e in o.stage_epochs):
                raise ValueError(f"every stage must be longer than config.arch_warmup_epochs="
                                 f"{config.arch_warmup_epochs} (it counts per stage)")
            num_ops = len(self.space.op_names)
            keeps = [k or num_ops for k in o.stage_num_keep]
            if any(not 1 <= k <= num_ops for k in keeps) or any(b > a for a, b in zip(keeps, keeps[1:])):
                raise ValueError(f"config.method_options.stage_num_keep={tuple(o.stage_num_keep)} must be "
                                 f"non-increasing counts in [1, {num_ops}] (0 = all ops)")
            ks = list(o.stage_partial_channels)
            if int(config.model.partial_channels) != ks[0]:
                raise ValueError(f"config.model.partial_channels={config.model.partial_channels} must equal the "
                                 f"first stage's K, method_options.stage_partial_channels[0]={ks[0]}")
            if any(k < 1 for k in ks) or any(b > a for a, b in zip(ks, ks[1:])):
                raise ValueError(f"config.method_options.stage_partial_channels={tuple(ks)} must be "
                                 "non-increasing and >= 1 (widening only grows the ops)")

    def arch_optimizer_config(self):
        config = self.config.arch_optimizer.copy_and_resolve_references()
        config.weight_decay = self.options.reg_scale if self.options.reg_type == "l2" else 0.0
        return config

    def stages(self) -> tuple[Stage, ...]:
        o = self.options
        if not o.progressive:
            return super().stages()
        return tuple(Stage(int(e), int(k), int(n) or None)
                     for e, k, n in zip(o.stage_epochs, o.stage_partial_channels, o.stage_num_keep))

    def _mask(self, key: str) -> np.ndarray | None:
        return None if self.op_mask is None else self.op_mask[key]

    def mixing_weights(self, arch: PyTree, rng: jax.Array, clock: Clock) -> dict[str, jax.Array]:
        keys = jax.random.split(rng, len(arch))
        return {k: masked_dirichlet(key, concentration(arch[k]), self._mask(k))
                for key, k in zip(keys, sorted(arch))}

    def regularizer(self, arch: PyTree) -> jax.Array:
        if self.options.reg_type != "kl":
            return jnp.zeros((), jnp.float32)
        return self.options.reg_scale * sum(jnp.sum(dirichlet_kl_to_uniform(concentration(v)))
                                            for v in arch.values())

    def derivation_weights(self, arch: PyTree) -> dict[str, np.ndarray]:
        """softmax of the (masked) α, not the Dirichlet mean (DARTS-space/model_search.py:227-261)."""
        return softmax_numpy(arch, self.op_mask)
