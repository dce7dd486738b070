"""DARTS (Liu, Simonyan, Yang, ICLR 2019): softmax relaxation, methods.md §1.

First order (DARTS-V1) and second order (DARTS-V2) differ only in the hypergradient, which the
search step takes from `config.hypergradient` (see `jnas.hypergrad`).
"""

from __future__ import annotations

import jax

from jnas.methods.base import Clock, Method, PyTree, softmax_numpy


class DARTS(Method):
    name = "darts"

    def mixing_weights(self, arch: PyTree, rng: jax.Array, clock: Clock) -> dict[str, jax.Array]:
        return {k: jax.nn.softmax(v, axis=-1) for k, v in arch.items()}

    def derivation_weights(self, arch: PyTree):
        return softmax_numpy(arch)
