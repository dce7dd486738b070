"""EDAS-like search (Hong, Ahn, Kim, arXiv 1912.01237), methods.md §5 and its addendum §1.

Only the abstract of EDAS is available, so this is the configurable design methods.md recommends; every
default below is our choice, not the paper's, and results must be reported as "EDAS-like". What the abstract
fixes: each step relaxes a single sampled edge and clamps every other edge to 0/1, so the network stays
nearly discrete and derivation loses nothing; the search can afford a deeper network.

Per step and cell type one edge e* is chosen (`edge_sampling`: "uniform" or "round_robin", from the
step's shared key, so the weight and architecture passes agree). e* gets softmax(α_e*) (`relax`:
"softmax", or "gumbel_softmax" with temperature `tau`), optionally with `random_op_drop` random ops
removed (the DID regulariser of the first author's thesis). Every other edge is the one-hot of the op the
derivation would pick (`clamp`: "argmax"; or "sample", a Gumbel-max draw), with no gradient. In the DARTS
space `topology_clamp` also gates each node to its two strongest inputs (e* always among them), so the
clamped network is the derived genotype plus one relaxed edge. With `mask_unsampled_rows` the
architecture optimizer leaves the rows of α that got no gradient exactly as they were (no Adam momentum,
no weight decay on them).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jnas.methods.base import Clock, Method, PyTree, softmax_numpy

EDGE_SAMPLING = ("uniform", "round_robin")
RELAX = ("softmax", "gumbel_softmax")
CLAMP = ("argmax", "sample")


class EDAS(Method):
    name = "edas"
    default_options = {
        "edge_sampling": "uniform",
        "relax": "softmax",
        "tau": 1.0,
        "clamp": "argmax",
        "topology_clamp": True,
        "random_op_drop": 0,
        "mask_unsampled_rows": True,
    }

    def check_config(self, config) -> None:
        super().check_config(config)
        o = self.options
        for key, allowed in (("edge_sampling", EDGE_SAMPLING), ("relax", RELAX), ("clamp", CLAMP)):
            if o[key] not in allowed:
                raise ValueError(f"config.method_options.{key}={o[key]!r} is not one of: {', '.join(allowed)}")
        if not o.tau > 0:
            raise ValueError(f"config.method_options.tau={o.tau} must be positive")
        if not 0 <= o.random_op_drop < len(self.space.op_names):
            raise ValueError(f"config.method_options.random_op_drop={o.random_op_drop} must be in "
                             f"[0, {len(self.space.op_names) - 1}] (at least one op must stay)")

    # ---- the per-step choices (from the step's shared key) -------------------------------------------

    def relaxed_edges(self, clock: Clock) -> dict[str, jax.Array]:
        """The index of the relaxed edge of each cell type this step."""
        keys = sorted(self.space.arch_shape)
        num_edges = self.space.num_edges
        if self.options.edge_sampling == "round_robin":
            return {k: clock.step % num_edges for k in keys}
        rngs = jax.random.split(jax.random.fold_in(clock.step_rng, 0), len(keys))
        return {k: jax.random.randint(r, (), 0, num_edges) for r, k in zip(rngs, keys)}

    def _kept_ops(self, clock: Clock, key_index: int) -> jax.Array:
        """bool [ops]: the ops of the relaxed edge that are not randomly dropped this step."""
        num_ops = len(self.space.op_names)
        drop = self.options.random_op_drop
        if drop == 0:
            return jnp.ones((num_ops,), bool)
        rng = jax.random.fold_in(jax.random.fold_in(clock.step_rng, 1), key_index)
        order = jax.random.permutation(rng, num_ops)
        return jnp.zeros((num_ops,), bool).at[order[drop:]].set(True)

    def update_mask(self, arch: PyTree, clock: Clock) -> dict[str, jax.Array] | None:
        if not self.options.mask_unsampled_rows:
            return None
        edges = self.relaxed_edges(clock)
        masks = {k: jnp.arange(self.space.num_edges) == e for k, e in edges.items()}
        return {k: masks[k] for k in arch}

    # ---- mixing weights ----------------------------------------------------------------------------

    def _clamp_columns(self) -> np.ndarray:
        """Ops a clamped edge may select: what the space's derivation may select (no `none` in DARTS)."""
        allowed = np.ones(len(self.space.op_names), bool)
        if self.space.name == "darts":
            allowed &= np.array([op != "none" for op in self.space.op_names])
        return allowed

    def mixing_weights(self, arch: PyTree, rng: jax.Array, clock: Clock) -> dict[str, jax.Array]:
        edges = self.relaxed_edges(clock)
        allowed = jnp.asarray(self._clamp_columns())
        out = {}
        for i, key in enumerate(sorted(arch)):
            alpha = arch[key]
            k_relax, k_clamp = jax.random.split(jax.random.fold_in(rng, i))
            kept = self._kept_ops(clock, i)
            logits = jnp.where(kept, alpha, -jnp.inf)
            if self.options.relax == "gumbel_softmax":
                logits = logits - jnp.log(jax.random.exponential(k_relax, alpha.shape))
            relaxed = jax.nn.softmax(logits / (self.options.tau if self.options.relax == "gumbel_softmax" else 1.0),
                                     axis=-1)
            frozen = jax.lax.stop_gradient(alpha)
            choice_logits = jnp.where(allowed, frozen, -jnp.inf)
            if self.options.clamp == "sample":
                choice_logits = choice_logits - jnp.log(jax.random.exponential(k_clamp, alpha.shape))
            clamped = jax.nn.one_hot(jnp.argmax(choice_logits, axis=-1), alpha.shape[-1], dtype=alpha.dtype)
            is_relaxed = (jnp.arange(alpha.shape[0]) == edges[key])[:, None]
            weights = jnp.where(is_relaxed, relaxed, clamped)
            if self.options.topology_clamp and self.space.name == "darts":
                weights = weights * self._node_gates(frozen, edges[key])[:, None]
            out[key] = weights
        return out

    def _node_gates(self, alpha: jax.Array, relaxed_edge: jax.Array) -> jax.Array:
        """0/1 per edge: each node's two strongest inputs by DARTS strength; the relaxed edge always stays."""
        probs = jax.nn.softmax(alpha, axis=-1)
        strength = jnp.max(jnp.where(jnp.asarray(self._clamp_columns()), probs, -jnp.inf), axis=-1)
        strength = jnp.where(jnp.arange(alpha.shape[0]) == relaxed_edge, jnp.inf, strength)
        gates, start = [], 0
        for node in range(self.space.num_nodes):
            n = node + 2
            _, top = jax.lax.top_k(strength[start:start + n], 2)
            gates.append(jnp.zeros((n,), alpha.dtype).at[top].set(1.0))
            start += n
        return jnp.concatenate(gates)

    def derivation_weights(self, arch: PyTree) -> dict[str, np.ndarray]:
        return softmax_numpy(arch)
