"""Single-level search with sigmoid gates (Hou & Jin, arXiv 2012.11337; Single-DARTS), methods.md §6.

The papers' method sections were not available (methods.md addendum §2), so this follows methods.md's
configurable recommendation; the defaults are our choice, not the paper's:
* `method_options.activation`: "sigmoid" (σ(α_o) per op, not normalised, no competition between ops) or
  "softmax";
* `config.optimization = "single_level"` (the configs' default): weights and α from one backward pass on
  the same training batch, the whole training set, no validation split; "bilevel" gives the DARTS
  alternation; `config.single_level.joint_sgd` puts α into the weights' SGD instead of its own Adam.
* Derivation ranks raw σ(α) (σ is monotone): NB201 argmax per edge with `none`; DARTS top-2 edges by their
  best non-none σ and the best non-none op.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jnas.methods.base import Clock, Method, PyTree

ACTIVATIONS = ("sigmoid", "softmax")


class Sigmoid(Method):
    name = "sigmoid"
    default_options = {"activation": "sigmoid"}

    def check_config(self, config) -> None:
        super().check_config(config)
        if self.options.activation not in ACTIVATIONS:
            raise ValueError(f"config.method_options.activation={self.options.activation!r} is not one of: "
                             f"{', '.join(ACTIVATIONS)}")

    def _activate(self, logits: jax.Array) -> jax.Array:
        if self.options.activation == "sigmoid":
            return jax.nn.sigmoid(logits)
        return jax.nn.softmax(logits, axis=-1)

    def mixing_weights(self, arch: PyTree, rng: jax.Array, clock: Clock) -> dict[str, jax.Array]:
        return {k: self._activate(v) for k, v in arch.items()}

    def derivation_weights(self, arch: PyTree) -> dict[str, np.ndarray]:
        return {k: np.asarray(self._activate(jnp.asarray(v, jnp.float32))) for k, v in arch.items()}
