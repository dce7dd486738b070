"""PC-DARTS (Xu et al., ICLR 2020): partial channel connections and edge normalisation, methods.md §2.

The partial channels (a fixed first C/K slice through the ops, the rest bypassing them, max-pooled on
stride-2 edges, then a channel shuffle with K groups) live in the supernet's `MixedOp`
(`config.model.partial_channels`). This method adds the edge-normalisation parameters β: per cell type one
logit per edge, normalised by a softmax over each node's incoming edges, scaling the whole edge output
(bypassed channels included), and the derivation from softmax(α)·softmax_node(β).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jnas.methods.base import Clock, Method, PyTree, normal_logits

EDGE_SUFFIX = "_edges"


def node_groups(space: Any) -> list[list[int]]:
    """Edge indices grouped by the node they enter, in edge order."""
    groups: dict[int, list[int]] = {}
    for k, (to, _) in enumerate(space.edges):
        groups.setdefault(int(to), []).append(k)
    return [groups[node] for node in sorted(groups)]


def node_softmax(beta: jax.Array, groups: list[list[int]]) -> jax.Array:
    """softmax of β separately over each node's incoming edges ([0:2], [2:5], [5:9], [9:14] for DARTS)."""
    parts = [jax.nn.softmax(beta[jnp.asarray(g)]) for g in groups]
    return jnp.concatenate(parts)


class PCDARTS(Method):
    name = "pcdarts"

    def check_config(self, config) -> None:
        super().check_config(config)
        k = int(config.model.get("partial_channels", 1))
        if k < 1:
            raise ValueError(f"config.model.partial_channels={k} must be >= 1 (PC-DARTS uses 4 on CIFAR)")

    def init_arch(self, rng: jax.Array) -> PyTree:
        """α [edges, ops] and β [edges] per cell type, all 1e-3·N(0, 1) (model_search.py:168-181)."""
        shapes = dict(self.space.arch_shape)
        shapes.update({key + EDGE_SUFFIX: (shape[0],) for key, shape in self.space.arch_shape.items()})
        return normal_logits(rng, shapes)

    def mixing_weights(self, arch: PyTree, rng: jax.Array, clock: Clock) -> dict[str, jax.Array]:
        return {k: jax.nn.softmax(arch[k], axis=-1) for k in self.space.arch_shape}

    def edge_weights(self, arch: PyTree) -> dict[str, jax.Array]:
        groups = node_groups(self.space)
        return {k: node_softmax(arch[k + EDGE_SUFFIX], groups) for k in self.space.arch_shape}

    def derivation_weights(self, arch: PyTree) -> dict[str, np.ndarray]:
        """softmax(α)[e, :] · softmax_node(β)[e] (model_search.py:186-231)."""
        arch = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), arch)
        edges = self.edge_weights(arch)
        return {k: np.asarray(jax.nn.softmax(arch[k], axis=-1) * edges[k][:, None]) for k in self.space.arch_shape}
