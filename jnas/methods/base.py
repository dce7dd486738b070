"""The interface every search method implements."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Method:
    """Base class: pure functions of the architecture parameters.

    `arch` is a plain pytree (a dict keyed like `space.arch_shape`), never a Flax variable, so the weight
    optimizer, its weight decay and its clipping never see it.
    """

    name: str = ""
    spaces: tuple[str, ...] = ("nb201", "darts")
    bilevel: bool = True

    def init_arch(self, rng: jax.Array, space, config: ml_collections.ConfigDict) -> PyTree:
        """1e-3·N(0, 1) logits per arch key (quark0/darts `_initialize_alphas`)."""
        keys = jax.random.split(rng, len(space.arch_shape))
        return {name: 1e-3 * jax.random.normal(key, shape, jnp.float32)
                for key, (name, shape) in zip(keys, sorted(space.arch_shape.items()))}

    def mixing_weights(self, arch: PyTree, rng: jax.Array, progress: jax.Array) -> PyTree:
        """Per-edge weights of the ops for one forward pass. `progress` is the fraction of epochs done."""
        raise NotImplementedError

    def regularizer(self, arch: PyTree) -> jax.Array:
        """A term added to the architecture loss (0 unless the method has one)."""
        return jnp.zeros((), jnp.float32)

    def derivation_weights(self, arch: PyTree) -> dict[str, np.ndarray]:
        """The weights the genotype is derived from (host numpy)."""
        raise NotImplementedError

    def derive(self, arch: PyTree, space):
        """The discrete genotype of `arch` under the space's derivation rule."""
        return space.derive(self.derivation_weights(arch))

    def check_config(self, config: ml_collections.ConfigDict) -> None:
        """Raise ValueError naming the key for configuration this method cannot run."""
        if config.space not in self.spaces:
            raise ValueError(
                f"method {self.name!r} does not support space {config.space!r} (config.space); "
                f"it supports: {', '.join(self.spaces)}")


def softmax_numpy(arch: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {k: np.asarray(jax.nn.softmax(jnp.asarray(v, jnp.float32), axis=-1)) for k, v in arch.items()}
