"""GDAS (Dong & Yang, CVPR 2019): the Gumbel differentiable architecture sampler, methods.md §3.

Each forward pass draws, per cell type, one Gumbel sample per edge (shared by all cells of that type and
every example): logits = (log_softmax(α) + g) / τ, p = softmax(logits), h = one_hot(argmax p) − sg(p) + p.
The forward value of h is exactly one-hot, its gradient that of p (straight-through). The supernet runs only
the selected op of each edge (`MixedOp(sampled=True)`, an `nn.switch` on an unbatched index), so a step
costs about one op per edge. τ falls linearly per epoch from `tau_max` to `tau_min`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jnas.methods.base import Clock, Method, PyTree, softmax_numpy
from jnas.spaces.darts import DartsGenotype

VARIANTS = ("auto", "nb201", "nasnet")


def temperature(epoch: jax.Array, num_epochs: int, tau_max: float, tau_min: float) -> jax.Array:
    """τ_e = τ_max − (τ_max − τ_min)·e/(E − 1) (AutoDL GDAS.py:237-239)."""
    fraction = jnp.asarray(epoch, jnp.float32) / max(num_epochs - 1, 1)
    return tau_max - (tau_max - tau_min) * fraction


def gumbel_straight_through(rng: jax.Array, logits: jax.Array, tau: jax.Array) -> jax.Array:
    """Hard one-hot rows with the gradient of the soft sample; resampled while any value is not finite."""
    log_probs = jax.nn.log_softmax(logits, axis=-1)

    def draw(key):
        gumbel = -jnp.log(jax.random.exponential(key, logits.shape, logits.dtype))
        return gumbel, jax.nn.softmax((log_probs + gumbel) / tau, axis=-1)

    def bad(gumbel, probs):
        return ~(jnp.all(jnp.isfinite(gumbel)) & jnp.all(jnp.isfinite(probs)))

    # AutoDL's `while True` guard; the loop carries only keys, so the sample stays differentiable in α.
    def cond(carry):
        key, _ = carry
        return bad(*draw(key))

    key, _ = jax.lax.while_loop(cond, lambda c: (jax.random.split(c[0])[0], c[1] + 1), (rng, 0))
    _, probs = draw(key)
    hard = jax.nn.one_hot(jnp.argmax(probs, axis=-1), logits.shape[-1], dtype=probs.dtype)
    # hard + (p − sg(p)) rather than AutoDL's hard − sg(p) + p: the same gradient, and a forward value
    # that is exactly one-hot (1 − p + p can round away from 1).
    return hard + (probs - jax.lax.stop_gradient(probs))


class GDAS(Method):
    name = "gdas"
    default_options = {
        "tau_max": 10.0,
        "tau_min": 0.1,
        # "nb201": AutoDL's NB201 cell adds the unselected ops' weights (forward value 0) to the edge;
        # "nasnet": only h_k·op_k(x); "auto" picks by the space.
        "variant": "auto",
    }

    def check_config(self, config) -> None:
        super().check_config(config)
        if self.options.variant not in VARIANTS:
            raise ValueError(f"config.method_options.variant={self.options.variant!r} is not one of: "
                             f"{', '.join(VARIANTS)}")
        if not 0 < self.options.tau_min <= self.options.tau_max:
            raise ValueError(f"config.method_options: need 0 < tau_min <= tau_max, got tau_min="
                             f"{self.options.tau_min}, tau_max={self.options.tau_max}")

    @property
    def zero_terms(self) -> bool:
        variant = self.options.variant
        if variant == "auto":
            variant = "nb201" if self.space.name == "nb201" else "nasnet"
        return variant == "nb201"

    @property
    def supernet_options(self):
        return {**super().supernet_options, "sampled": True, "zero_terms": self.zero_terms}

    def tau(self, clock: Clock) -> jax.Array:
        return temperature(clock.epoch, self.config.num_epochs, self.options.tau_max, self.options.tau_min)

    def mixing_weights(self, arch: PyTree, rng: jax.Array, clock: Clock) -> dict[str, jax.Array]:
        tau = self.tau(clock)
        keys = jax.random.split(rng, len(arch))
        return {k: gumbel_straight_through(key, arch[k], tau) for key, k in zip(keys, sorted(arch))}

    def step_metrics(self, clock: Clock) -> dict[str, jax.Array]:
        return {"tau": self.tau(clock)}

    def derivation_weights(self, arch: PyTree) -> dict[str, np.ndarray]:
        return softmax_numpy(arch)

    def derive(self, arch: PyTree):
        """NB201: argmax of α per edge, `none` allowed. DARTS space: AutoDL's NASNet rule (below)."""
        weights = self.derivation_weights(arch)
        if self.space.name != "darts":
            return self.space.derive(weights)
        cells = {c: nasnet_cell(weights[c], self.space.op_names, self.space.num_nodes)
                 for c in ("normal", "reduce")}
        return DartsGenotype(cells["normal"], self.space.concat, cells["reduce"], self.space.concat)


def nasnet_cell(cell_weights: np.ndarray, op_names, num_nodes: int):
    """AutoDL search_model_gdas_nasnet.py:128-142: per node, every (op ≠ none, input) pair ranked by its
    softmax weight and the best two kept, so both may come from the same input (unlike DARTS's rule)."""
    pairs, start = [], 0
    for node in range(num_nodes):
        candidates = [(op, j, float(cell_weights[start + j][k]))
                      for j in range(node + 2) for k, op in enumerate(op_names) if op != "none"]
        pairs.extend((op, j) for op, j, _ in sorted(candidates, key=lambda c: -c[2])[:2])
        start += node + 2
    return tuple(pairs)
