"""The interface every search method implements.

A method is built from the config and the search space (`jnas.methods.build`). It owns the mathematics
of the architecture: its parameters, how they become the mixing weights of one forward pass, the
regularizer, the derivation of a genotype, and the few ways it changes the shared step (the supernet's edge
mode, rows of α the optimizer must leave alone, stages). The search step (`jnas.search`) does the rest.

`config.method_options` holds the method's own hyperparameters; each method declares their defaults in
`default_options`, and an unknown key is an error that lists the known ones.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

PyTree = Any


class Clock(NamedTuple):
    """Where a forward pass is in the search: global step and epoch (int arrays), and a key shared by every
    forward pass of this step (a method's per-step choices, e.g. EDAS's relaxed edge, come from it; per-pass
    noise comes from the pass's own key)."""

    step: jax.Array
    epoch: jax.Array
    step_rng: jax.Array


OpMask = Mapping[str, np.ndarray]  # per cell type, bool [edges, ops]: the ops an edge still has


@dataclasses.dataclass(frozen=True)
class Stage:
    """A stretch of the search with one supernet (DrNAS progressive learning, methods.md §4.5).

    `num_keep` ops per edge survive the pruning at the start of the stage (None: no pruning); the candidate
    ops run on C/`partial_channels` channels.
    """

    num_epochs: int
    partial_channels: int
    num_keep: int | None = None


class Method:
    """Base class. Subclasses set `name`, `spaces`, `default_options` and override the hooks they change."""

    name: ClassVar[str] = ""
    spaces: ClassVar[tuple[str, ...]] = ("nb201", "darts")
    default_options: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, config: ml_collections.ConfigDict, space: Any, op_mask: OpMask | None = None):
        self.config = config
        self.space = space
        self.op_mask = None if op_mask is None else {k: np.asarray(v, bool) for k, v in op_mask.items()}
        self.options = self._parse_options(config.get("method_options", None))
        self.check_config(config)

    # ---- configuration ------------------------------------------------------------------------------

    def _parse_options(self, given: ml_collections.ConfigDict | None) -> ml_collections.ConfigDict:
        given = {} if given is None else dict(given.to_dict() if hasattr(given, "to_dict") else given)
        unknown = sorted(set(given) - set(self.default_options))
        if unknown:
            known = ", ".join(sorted(self.default_options)) or "none"
            raise ValueError(f"config.method_options has {unknown}, unknown to method {self.name!r}; "
                             f"its options are: {known}")
        return ml_collections.ConfigDict({**self.default_options, **given})

    def check_config(self, config: ml_collections.ConfigDict) -> None:
        """Raise ValueError naming the key for configuration this method cannot run."""
        if config.space not in self.spaces:
            raise ValueError(
                f"method {self.name!r} does not support space {config.space!r} (config.space); "
                f"it supports: {', '.join(self.spaces)}")

    # ---- the architecture ---------------------------------------------------------------------------

    def init_arch(self, rng: jax.Array) -> PyTree:
        """1e-3·N(0, 1) logits per cell type (quark0/darts `_initialize_alphas`)."""
        return normal_logits(rng, self.space.arch_shape)

    def mixing_weights(self, arch: PyTree, rng: jax.Array, clock: Clock) -> dict[str, jax.Array]:
        """Per-edge op weights of one forward pass; `rng` is this pass's own key."""
        raise NotImplementedError

    def edge_weights(self, arch: PyTree) -> dict[str, jax.Array] | None:
        """Per-edge scales of each node's inputs (PC-DARTS edge normalisation), or None."""
        return None

    def regularizer(self, arch: PyTree) -> jax.Array:
        """A term added to the architecture loss (0 unless the method has one)."""
        return jnp.zeros((), jnp.float32)

    def update_mask(self, arch: PyTree, clock: Clock) -> dict[str, jax.Array] | None:
        """Per cell type, bool [edges]: the rows of α the optimizer may move this step (None: all)."""
        return None

    def step_metrics(self, clock: Clock) -> dict[str, jax.Array]:
        """Scalars worth logging every step (e.g. GDAS's temperature)."""
        return {}

    def derivation_weights(self, arch: PyTree) -> dict[str, np.ndarray]:
        """The weights the genotype is derived from (host numpy), keyed like `space.arch_shape`."""
        raise NotImplementedError

    def derive(self, arch: PyTree):
        """The discrete genotype of `arch` under the method's derivation rule."""
        return self.space.derive(self.derivation_weights(arch))

    # ---- how the method changes the shared machinery -------------------------------------------------

    def arch_optimizer_config(self) -> ml_collections.ConfigDict:
        """The Adam settings of α (DrNAS puts its L2 anchor in the weight decay)."""
        return self.config.arch_optimizer

    @property
    def supernet_options(self) -> dict[str, Any]:
        """Keywords for `build_supernet`: edge mode and the ops each edge still has."""
        return {"kept_ops": self.op_mask}

    @property
    def optimization(self) -> str:
        """"bilevel" (weights on the training split, α on the validation split) or "single_level"."""
        return self.config.get("optimization", "bilevel")

    def stages(self) -> tuple[Stage, ...]:
        """The stages of the search; one unless the method is progressive."""
        return (Stage(self.config.num_epochs, int(self.config.model.get("partial_channels", 1))),)


def normal_logits(rng: jax.Array, arch_shape: Mapping[str, tuple[int, ...]]) -> dict[str, jax.Array]:
    keys = jax.random.split(rng, len(arch_shape))
    return {name: 1e-3 * jax.random.normal(key, shape, jnp.float32)
            for key, (name, shape) in zip(keys, sorted(arch_shape.items()))}


def masked_softmax(logits: jax.Array, mask: np.ndarray | None) -> jax.Array:
    """softmax over the ops an edge still has; pruned ops get exactly 0."""
    if mask is None:
        return jax.nn.softmax(logits, axis=-1)
    mask = jnp.asarray(mask)
    return jax.nn.softmax(jnp.where(mask, logits, -jnp.inf), axis=-1) * mask


def softmax_numpy(arch: Mapping[str, Any], op_mask: OpMask | None = None) -> dict[str, np.ndarray]:
    return {k: np.asarray(masked_softmax(jnp.asarray(v, jnp.float32), None if op_mask is None else op_mask[k]))
            for k, v in arch.items()}


def prune_mask(arch: PyTree, previous: OpMask | None, num_keep: int,
               arch_shape: Mapping[str, tuple[int, int]]) -> dict[str, np.ndarray]:
    """The top-`num_keep` ops of each edge by raw α, previously pruned ops ranked last (DrNAS
    utils.py:197-207); ties go to the lower op index."""
    out = {}
    for key in arch_shape:
        alpha = np.array(arch[key], np.float64)
        if previous is not None:
            alpha = np.where(previous[key], alpha, -1e6)
        order = np.argsort(-alpha, axis=-1, kind="stable")[:, :num_keep]
        mask = np.zeros(alpha.shape, bool)
        np.put_along_axis(mask, order, True, axis=-1)
        out[key] = mask
    return out
