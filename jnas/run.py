"""`main(config, workdir)`: check the config, write it down, and start the task it names."""

from __future__ import annotations

import logging
import os

import ml_collections

from jnas import data as data_lib
from jnas import methods, parallel, spaces
from jnas.errors import UserError

TASKS = ("search",)
HYPERGRADIENTS = ("first_order", "second_order", "unrolled", "implicit")
UPDATE_ORDERS = ("arch_first", "weights_first")
OPTIMIZATIONS = ("bilevel", "single_level")


def _positive(config, key: str) -> None:
    value = config
    for part in key.split("."):
        value = value[part]
    if not value > 0:
        raise ValueError(f"config.{key}={value!r} must be positive")


def _one_of(value, allowed, key: str) -> None:
    if value not in allowed:
        raise ValueError(f"config.{key}={value!r} is not one of: {', '.join(map(str, allowed))}")


def validate(config: ml_collections.ConfigDict) -> None:
    """Raise UserError naming the key and the fix for any value that cannot run.

    Runs before anything is loaded or compiled, so a typo costs seconds, not a compile.
    """
    try:
        _validate(config)
    except UserError:
        raise
    except (ValueError, KeyError, AttributeError) as e:
        raise UserError(str(e).strip("'\"")) from None


def _validate(config: ml_collections.ConfigDict) -> None:
    _one_of(config.task, TASKS, "task")
    _one_of(config.method, methods.names(), "method")
    space = spaces.get(config.space, **config.space_options.to_dict())
    method = methods.build(config, space)  # checks config.method_options and the method's constraints
    _one_of(config.optimization, OPTIMIZATIONS, "optimization")
    if config.optimization == "single_level" and config.hypergradient.kind != "first_order":
        raise ValueError(f"config.hypergradient.kind={config.hypergradient.kind!r} needs the bi-level problem; "
                         "single-level search takes α's gradient from the training loss (set "
                         "config.optimization=bilevel or config.hypergradient.kind=first_order)")
    for stage in method.stages():
        k = stage.partial_channels
        if k < 1 or config.model.init_channels % k:
            raise ValueError(
                f"partial channels K={k} (config.model.partial_channels, or a progressive stage's) must divide "
                f"config.model.init_channels={config.model.init_channels}: the ops of each edge run on C/K "
                "channels")
    _one_of(config.data.name, data_lib.names(), "data.name")
    _one_of(config.data.source, data_lib.SOURCES, "data.source")
    _one_of(config.data.normalization, ("darts", "nb201"), "data.normalization")
    _one_of(config.hypergradient.kind, HYPERGRADIENTS, "hypergradient.kind")
    _one_of(config.hypergradient.hvp, ("finite_difference", "exact"), "hypergradient.hvp")
    _one_of(config.hypergradient.solver, ("cg", "neumann"), "hypergradient.solver")
    for key in ("hypergradient.unrolled_steps", "hypergradient.num_iters", "hypergradient.neumann_lr"):
        _positive(config, key)
    if config.hypergradient.damping < 0:
        raise ValueError(f"config.hypergradient.damping={config.hypergradient.damping} must be >= 0")
    _one_of(config.update_order, UPDATE_ORDERS, "update_order")
    _one_of(config.model.dtype, ("float32", "bfloat16"), "model.dtype")
    for key in ("num_epochs", "batch_size", "optimizer.lr", "arch_optimizer.lr", "model.init_channels",
                "model.num_cells", "log_every_steps"):
        _positive(config, key)
    table = config.benchmark.nb201_table
    if table and not os.path.isfile(table):
        raise UserError(f"config.benchmark.nb201_table={table!r} is not a file; give the path of "
                        "nb201_200ep.csv.gz (or \"\" to skip the NAS-Bench-201 lookup)")
    parallel.check_batch_size(config.batch_size, parallel.make_mesh())
    if config.optimization == "bilevel" and not 0.0 < config.data.train_portion < 1.0:
        raise ValueError(f"config.data.train_portion={config.data.train_portion} must be in (0, 1)")
    if not 0.0 <= config.optimizer.min_lr <= config.optimizer.lr:
        raise ValueError(f"config.optimizer.min_lr={config.optimizer.min_lr} must be in [0, optimizer.lr]")
    if not 0.0 <= config.optimizer.momentum < 1.0:
        raise ValueError(f"config.optimizer.momentum={config.optimizer.momentum} must be in [0, 1)")
    if config.arch_warmup_epochs < 0 or config.arch_warmup_epochs >= config.num_epochs:
        raise ValueError(
            f"config.arch_warmup_epochs={config.arch_warmup_epochs} must be in [0, num_epochs)")
    if config.data.source == "synthetic" and config.data.image_size % 4:
        raise ValueError(
            f"config.data.image_size={config.data.image_size}: the supernets halve the resolution twice, "
            "so it must be a multiple of 4 (e.g. 8 or 32)")
    if config.space == "darts" and config.model.init_channels % 2:
        raise ValueError(
            f"config.model.init_channels={config.model.init_channels} must be even in the DARTS space "
            "(FactorizedReduce splits the channels in two halves)")


def main(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Validate, load the data, record the config in `workdir`, then run the task."""
    validate(config)
    try:
        dataset = data_lib.load(config.data)
    except ValueError as e:  # missing or malformed data: the loaders' messages name the file and the fix
        raise UserError(str(e)) from None
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    logging.info("config:\n%s", config)
    from jnas import search

    return search.run(config, workdir, dataset)
