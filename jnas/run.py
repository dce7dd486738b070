"""`main(config, workdir)`: check the config, write it down, and start the task it names."""

from __future__ import annotations

import json
import logging
import math
import os

import ml_collections

from jnas import data as data_lib
from jnas import methods, optim, parallel, spaces
from jnas.data import imagenet
from jnas.data import pipeline as data_pipeline
from jnas.errors import UserError

TASKS = ("search", "train")
HYPERGRADIENTS = ("first_order", "second_order", "unrolled", "implicit")
UPDATE_ORDERS = ("arch_first", "weights_first")
OPTIMIZATIONS = ("bilevel", "single_level")
RESUME_MODES = ("auto", "force", "never")
NAN_POLICIES = ("stop", "skip_step")
# Keys that steer a run without changing what it computes: a resumed run may change them freely.
# data.pipeline and data.workers only change where the same batches are assembled.
RUN_CONTROL_KEYS = ("resume", "nan_policy", "log_every_steps", "checkpoint_every_steps", "checkpoint_every_epochs",
                    "keep_checkpoints",
                    "data.dir", "data.pipeline", "data.workers", "benchmark.nb201_table")


def _get(config, key: str):
    value = config
    for part in key.split("."):
        value = value[part]
    return value


def _positive(config, key: str) -> None:
    value = _get(config, key)
    if not value > 0 or not math.isfinite(value):
        raise ValueError(f"config.{key}={value!r} must be positive and finite")


def _in_range(config, key: str, low: float, high: float = math.inf, high_open: bool = False) -> None:
    value = _get(config, key)
    if not (low <= value < high if high_open else low <= value <= high):
        allowed = f">= {low}" if high == math.inf else f"in [{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"config.{key}={value!r} must be {allowed}")


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
    methods.get(config.method)  # "unknown method ... (config.method); known methods: ..."
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
    _one_of(config.data.name, (*data_lib.names(), imagenet.NAME), "data.name")
    _one_of(config.data.source, data_lib.SOURCES, "data.source")
    data_pipeline.check_config(config.data)
    on_imagenet = config.data.name == imagenet.NAME
    if on_imagenet:
        _check_imagenet_search(config)
    else:
        data_lib.check_split_config(config.data)
        _one_of(config.data.normalization, ("darts", "nb201"), "data.normalization")
    _one_of(config.model.get("stem", "cifar"), ("cifar", "imagenet"), "model.stem")
    _one_of(config.hypergradient.kind, HYPERGRADIENTS, "hypergradient.kind")
    _one_of(config.hypergradient.hvp, ("finite_difference", "exact"), "hypergradient.hvp")
    _one_of(config.hypergradient.solver, ("cg", "neumann"), "hypergradient.solver")
    for key in ("hypergradient.unrolled_steps", "hypergradient.num_iters", "hypergradient.neumann_lr"):
        _positive(config, key)
    if config.hypergradient.damping < 0:
        raise ValueError(f"config.hypergradient.damping={config.hypergradient.damping} must be >= 0")
    _one_of(config.update_order, UPDATE_ORDERS, "update_order")
    _one_of(config.model.dtype, ("float32", "bfloat16"), "model.dtype")
    for key in ("num_epochs", "batch_size", "optimizer.lr", "arch_optimizer.lr", "arch_optimizer.eps",
                "model.init_channels", "model.num_cells", "log_every_steps", "keep_checkpoints",
                "hypergradient.fd_radius"):
        _positive(config, key)
    for key in ("seed", "max_steps_per_epoch", "eval_batches", "checkpoint_every_steps",
                "optimizer.weight_decay", "optimizer.grad_clip", "arch_optimizer.weight_decay",
                "arch_optimizer.grad_clip"):
        # The seed seeds numpy's data order, which takes no negative seed.
        _in_range(config, key, 0)
    for key in ("arch_optimizer.b1", "arch_optimizer.b2"):
        _in_range(config, key, 0.0, 1.0, high_open=True)
    _one_of(config.resume, RESUME_MODES, "resume")
    _one_of(config.nan_policy, NAN_POLICIES, "nan_policy")
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
    if config.data.source == "synthetic" and not on_imagenet and (config.data.image_size < 4
                                                                  or config.data.image_size % 4):
        raise ValueError(
            f"config.data.image_size={config.data.image_size}: the supernets halve the resolution twice, "
            "so it must be a positive multiple of 4 (e.g. 8 or 32)")
    if config.data.source == "synthetic":
        _positive(config, "data.synthetic_size")
    if config.space == "darts" and config.model.init_channels % 2:
        raise ValueError(
            f"config.model.init_channels={config.model.init_channels} must be even in the DARTS space "
            "(FactorizedReduce splits the channels in two halves)")


def _check_imagenet_search(config: ml_collections.ConfigDict) -> None:
    """What an ImageNet search needs beyond the common checks (configs/pcdarts_imagenet.py sets it all)."""
    if config.space != "darts":
        raise ValueError(f"data.name={imagenet.NAME!r} searches the DARTS space with the ImageNet stem; "
                         f"config.space={config.space!r} is not supported (set config.space=darts)")
    if config.data.get("pipeline", "device") != "host":
        raise ValueError("ImageNet is decoded and cropped on the host: set config.data.pipeline=host (and "
                         "config.data.workers to about the host's cores)")
    _one_of(config.data.normalization, ("imagenet",), "data.normalization")
    _one_of(config.optimizer.get("warmup_mode", "scale_schedule"), optim.WARMUP_MODES, "optimizer.warmup_mode")
    _in_range(config, "optimizer.warmup_epochs", 0)
    for key in ("data.weight_fraction", "data.arch_fraction"):
        _in_range(config, key, 0.0, 1.0, high_open=True)
    if config.data.weight_fraction + config.data.arch_fraction > 1.0:
        raise ValueError(f"config.data.weight_fraction + config.data.arch_fraction = "
                         f"{config.data.weight_fraction + config.data.arch_fraction} must be at most 1 (the two "
                         "subsets of each class are disjoint)")
    size = config.data.image_size
    if config.model.get("stem", "cifar") == "imagenet" and (size < 32 or size % 32):
        raise ValueError(f"config.data.image_size={size}: the ImageNet stem divides the side by 8 and the two "
                         "reduction cells by 4 more, so it must be a positive multiple of 32 (224 for ImageNet)")


def _flatten(tree: dict, prefix: str = "") -> dict:
    """{"a.b": value} for nested dicts (an empty dict stays a value)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_differences(recorded: dict, config: ml_collections.ConfigDict) -> list[tuple[str, object, object]]:
    """(key, recorded value, value in `config`) for each key that changes the search, sorted by key."""
    current = json.loads(config.to_json_best_effort())
    old, new = _flatten(recorded), _flatten(current)
    missing = object()
    keys = sorted(k for k in set(old) | set(new) if k not in RUN_CONTROL_KEYS)
    return [(k, old.get(k, "(absent)"), new.get(k, "(absent)")) for k in keys
            if old.get(k, missing) != new.get(k, missing)]


def _has_checkpoints(workdir: str) -> bool:
    folder = os.path.join(workdir, "checkpoints")
    return os.path.isdir(folder) and any(name.isdigit() for name in os.listdir(folder))


def check_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Refuse a workdir whose run this config must not continue (see config.resume in configs/common.py)."""
    if config.resume == "never":
        if _has_checkpoints(workdir):
            raise UserError(f"{workdir} holds checkpoints of an earlier run and config.resume=never; give a "
                            "fresh --workdir, or --config.resume=auto to continue that run")
        return
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return
    try:
        with open(path, encoding="utf-8") as f:
            recorded = json.load(f)
        if not isinstance(recorded, dict):
            raise ValueError(f"it holds a {type(recorded).__name__}, not a config")
    except (OSError, ValueError) as e:
        if config.resume == "force":
            logging.warning("%s is unreadable (%s); config.resume=force: replacing it", path, e)
            return
        raise UserError(f"{path} is unreadable ({e}), so this run cannot be checked against the one in "
                        "the workdir; give a fresh --workdir, or --config.resume=force to continue it "
                        "with this config") from None
    differences = config_differences(recorded, config)
    if not differences:
        return
    shown = "; ".join(f"{k}: {old!r} there, {new!r} now" for k, old, new in differences[:12])
    more = f" (and {len(differences) - 12} more)" if len(differences) > 12 else ""
    if config.resume == "force":
        logging.warning("config.resume=force: continuing the run in %s with a different config: %s%s",
                        workdir, shown, more)
        return
    raise UserError(
        f"{workdir} holds a run with a different config ({path}): {shown}{more}. Give a fresh --workdir, "
        "use that config, or add --config.resume=force to continue the run with these values")


def main(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Validate, check the workdir, load the data, record the config in `workdir`, then run the task.

    Raises UserError for bad input, `jnas.loop.Preempted` when a signal stopped the run after saving
    a checkpoint (launch.py exits with `jnas.loop.EXIT_PREEMPTED`).
    """
    from jnas import train

    if config.get("task", "search") == "train":
        try:
            train.validate(config)
        except UserError:
            raise
        except ValueError as e:
            raise UserError(str(e)) from None
    else:
        validate(config)
    check_workdir(config, workdir)
    try:
        if config.task == "train":
            dataset = train.load_data(config)
        elif config.data.name == imagenet.NAME:
            dataset = None  # read on the host, example by example, by the search (jnas.data.imagenet)
        else:
            dataset = data_lib.load(config.data)
    except ValueError as e:  # missing or malformed data: the loaders' messages name the file and the fix
        raise UserError(str(e)) from None
    os.makedirs(workdir, exist_ok=True)
    # Written whole, then renamed: every process of a multi-process run writes it while another may be
    # reading it in check_workdir.
    path = os.path.join(workdir, "config.json")
    with open(f"{path}.{os.getpid()}.tmp", "w") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    os.replace(f"{path}.{os.getpid()}.tmp", path)
    logging.info("config:\n%s", config)
    if config.task == "train":
        return train.run(config, workdir, dataset)
    from jnas import search

    return search.run(config, workdir, dataset)
