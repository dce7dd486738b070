"""Training a derived architecture from scratch: the evaluation networks, their recipes and the epoch loop.

`run(config, workdir)` trains the genotype named by `config.genotype` (a search workdir, a genotype string or
a published name, `jnas.genotypes.resolve`) and writes `metrics.jsonl` (one line per epoch: train and test
loss and accuracy) and `result.json` (final test accuracy, parameter count without the auxiliary head, and
multiply-adds of one image). The step is the search's data-parallel pattern: the state is replicated and
donated, the batch sharded over the mesh's data axis, augmentation runs on the device, and every random
number is drawn for the global batch from `fold_in(state["rng"], step)`, so the result does not depend on
the number of devices. Checkpoints, exact resume, preemption (SIGTERM/SIGINT: checkpoint, then
`jnas.loop.Preempted`, exit status 75 from launch.py) and the numerical guard (`config.nan_policy`) work as
in a search, with the search's code (`run`).

Multiply-adds are counted exactly: the multiply-accumulates of every convolution and dense layer in the
jaxpr of the inference forward of one image (what the DARTS-family papers report as FLOPs or mult-adds;
pools, BatchNorm, ReLU and additions are not counted). XLA's cost analysis of the same forward is recorded
beside it (`xla_flops`: all floating-point operations of the unoptimised HLO, so a bit more than twice the
multiply-adds).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.extend import core as jax_core

from jnas import checkpoint as checkpoint_lib
from jnas import data as data_lib
from jnas import genotypes as genotypes_lib
from jnas import loop as loop_lib
from jnas import optim, parallel, report
# The search's data splits, checkpoint packing, NaN guard and exceptions: training runs share them.
from jnas.data import imagenet
from jnas.data import pipeline as data_pipeline
from jnas.data.augment import cutout
from jnas.data.pipeline import evaluate_split
from jnas.errors import UserError
from jnas.nn import networks

State = dict[str, Any]
Batch = dict[str, jax.Array]

NETWORKS = {"darts_cifar": "darts", "darts_imagenet": "darts", "nb201": "nb201"}
SCHEDULES = ("cosine", "exponential")
NAN_POLICIES = ("stop", "skip_step")  # as jnas.run's, for searches
IMAGENET = "imagenet2012"
MULT_ADDS_METHOD = ("exact: multiply-accumulates of every convolution and dense layer in the jaxpr of the "
                    "inference forward of one image (pools, BatchNorm, ReLU and additions not counted)")
XLA_FLOPS_METHOD = ("XLA cost analysis of the unoptimised HLO of the same forward: every floating-point "
                    "operation, a multiply-add counting 2")

# Per-step flags of the new state (True: every value of that part finite): flag -> (state key, message name).
STATE_FLAGS = {"params_finite": ("params", "parameters"),
               "batch_stats_finite": ("batch_stats", "BatchNorm statistics"),
               "opt_finite": ("opt", "optimizer state")}

_SYNTHETIC_SEED = 0


# ------------------------------------------------------------------------------------------------------------
# Validation


def _get(config: ml_collections.ConfigDict, key: str) -> Any:
    value = config
    for part in key.split("."):
        value = value[part]
    return value


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def _check_number(config: ml_collections.ConfigDict, key: str, low: float, high: float = math.inf, *,
                  low_open: bool = False, high_open: bool = False, integer: bool = False,
                  hint: str = "") -> None:
    value = _get(config, key)
    kind = "an int" if integer else "a number"
    wrong_type = isinstance(value, bool) or not isinstance(value, int if integer else (int, float))
    if wrong_type:
        raise UserError(f"config.{key}={value!r} must be {kind}{hint}")
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    if not (math.isfinite(value) and above and below):
        lower = f"{'>' if low_open else '>='} {low}"
        upper = "" if high == math.inf else f" and {'<' if high_open else '<='} {high}"
        raise UserError(f"config.{key}={value!r} must be {lower}{upper}{hint}")


def _one_of(config: ml_collections.ConfigDict, key: str, allowed: tuple[str, ...], hint: str = "") -> None:
    value = _get(config, key)
    if value not in allowed:
        raise UserError(f"config.{key}={value!r} is not one of: {', '.join(allowed)}{hint}")


def _tapped_size(config: ml_collections.ConfigDict, image_size: int) -> int:
    """Side of the feature map the auxiliary head reads (the output of cell 2 * num_cells // 3)."""
    size = image_size
    if config.model.network == "darts_imagenet":
        for _ in range(3):  # the three stride-2 stem convs (kernel 3, padding 1)
            size = (size - 1) // 2 + 1
    for _ in range(2):  # both reduction cells come at or before the tapped cell
        size = (size - 1) // 2 + 1
    return size


def validate(config: ml_collections.ConfigDict) -> None:
    """Raise UserError (a ValueError) naming the key and the fix for any value that cannot train.

    Runs before anything is loaded or compiled. Resolves `config.genotype`, so an unknown name or a workdir
    without genotype.json fails here.
    """
    try:
        _validate(config)
    except UserError:
        raise
    except (KeyError, AttributeError) as e:
        raise UserError(f"the config lacks the key {e}; start from configs/train_common.py train_config()"
                        ) from None


def _validate(config: ml_collections.ConfigDict) -> None:
    _require(config.task == "train", f"config.task={config.task!r}: jnas.train runs task 'train'")
    _one_of(config, "model.network", tuple(NETWORKS))
    space = NETWORKS[config.model.network]
    _require(config.space == space, f"config.model.network={config.model.network!r} builds {space} genotypes, "
             f"but config.space={config.space!r}; set config.space={space!r} or another model.network")
    genotypes_lib.resolve(config.genotype, config.space)

    for key in ("num_epochs", "batch_size", "log_every_steps", "model.init_channels", "model.num_cells"):
        _check_number(config, key, 1, integer=True)
    for key in ("seed", "max_steps_per_epoch", "eval_batches", "checkpoint_every_epochs",
                "augment.crop_padding", "augment.cutout_length"):
        _check_number(config, key, 0, integer=True)
    _check_number(config, "keep_checkpoints", 1, integer=True)
    _check_number(config, "checkpoint_every_steps", 0, integer=True, hint=" (0: no checkpoints inside epochs)")
    _one_of(config, "resume", ("auto", "force", "never"))
    _one_of(config, "nan_policy", NAN_POLICIES)
    _one_of(config, "model.dtype", ("float32", "bfloat16"))
    _check_number(config, "optimizer.lr", 0, low_open=True)
    _check_number(config, "optimizer.min_lr", 0, config.optimizer.lr, hint=" (between 0 and optimizer.lr)")
    _check_number(config, "optimizer.momentum", 0, 1, high_open=True)
    _check_number(config, "optimizer.weight_decay", 0)
    _check_number(config, "optimizer.grad_clip", 0, hint=" (0 disables clipping)")
    _check_number(config, "optimizer.epoch_offset", 0, integer=True)
    _one_of(config, "optimizer.schedule", SCHEDULES)
    _check_number(config, "optimizer.decay_rate", 0, 1, low_open=True)
    _check_number(config, "label_smoothing", 0, 1, high_open=True)
    _check_number(config, "model.drop_path_rate", 0, 1, high_open=True)
    _check_number(config, "model.auxiliary_weight", 0)

    if config.space == "nb201":
        _require(not config.model.auxiliary, "config.model.auxiliary=True: the NAS-Bench-201 network has no "
                 "auxiliary head; set it to False")
        _require(config.model.drop_path_rate == 0, f"config.model.drop_path_rate="
                 f"{config.model.drop_path_rate}: the NAS-Bench-201 network has no drop path; set it to 0")
    if config.space == "darts":
        _require(config.model.init_channels % 2 == 0,
                 f"config.model.init_channels={config.model.init_channels} must be even in the DARTS space "
                 "(FactorizedReduce splits the channels in two halves)")
        _check_number(config, "model.stem_multiplier", 1, integer=True)
        if config.model.auxiliary:
            _require(config.model.num_cells >= 3, f"config.model.num_cells={config.model.num_cells}: the "
                     "auxiliary head reads the second reduction cell, so there must be at least 3 cells (or "
                     "set config.model.auxiliary=False)")

    _validate_data(config)
    parallel.check_batch_size(config.batch_size, parallel.make_mesh())
    table = config.benchmark.nb201_table
    _require(not table or os.path.isfile(table), f"config.benchmark.nb201_table={table!r} is not a file; give "
             "the path of nb201_200ep.csv.gz (or \"\" for no lookup)")


def _validate_data(config: ml_collections.ConfigDict) -> None:
    data = config.data
    _one_of(config, "data.source", data_lib.SOURCES)
    if data.name == IMAGENET:
        _require(config.model.network == "darts_imagenet", f"config.data.name={IMAGENET!r} needs "
                 "config.model.network='darts_imagenet' (configs/train_imagenet.py)")
        _require(config.data.get("pipeline", "host") == "host", "ImageNet is decoded and cropped on the host: "
                 "set config.data.pipeline=host (and config.data.workers to about the host's cores)")
        _one_of(config, "data.normalization", ("imagenet",), " (the torchvision ImageNet statistics)")
    else:
        _one_of(config, "data.name", data_lib.names() + (IMAGENET,))
        _require(config.model.network != "darts_imagenet", f"config.model.network='darts_imagenet' is the "
                 f"ImageNet network; with config.data.name={data.name!r} use 'darts_cifar'")
        _one_of(config, "data.normalization", tuple(data_lib.get_spec(data.name).normalization))
    if data.source == "synthetic":
        _check_number(config, "data.synthetic_size", 1, integer=True)
        _check_number(config, "data.image_size", 4, integer=True)
        image_size = data.image_size
    else:
        image_size = 224 if data.name == IMAGENET else data_lib.get_spec(data.name).image_shape[0]
    if config.space == "darts" and config.model.auxiliary:
        tapped = _tapped_size(config, image_size)
        # AvgPool(5, stride s) and then a 2x2 conv, both without padding: the pooled map must be 2x2.
        pool_stride = 2 if config.model.network == "darts_imagenet" else 3
        needed = 5 + pool_stride
        _require(tapped >= needed,
                 f"{image_size}x{image_size} images leave a {tapped}x{tapped} map at the auxiliary head, which "
                 f"needs at least {needed}x{needed} (AvgPool 5 stride {pool_stride}, then a 2x2 conv); raise "
                 "config.data.image_size (synthetic data) or set config.model.auxiliary=False")
    if data.source == "synthetic":
        # Two reductions (FactorizedReduce concatenates two stride-2 paths offset by a pixel, so each needs
        # an even side), after the ImageNet stem's three stride-2 convs.
        multiple = 32 if config.model.network == "darts_imagenet" else 4
        _require(image_size % multiple == 0, f"config.data.image_size={image_size}: the {config.model.network} "
                 f"network needs a multiple of {multiple}")


# ------------------------------------------------------------------------------------------------------------
# Data


def load_data(config: ml_collections.ConfigDict) -> data_lib.Dataset | None:
    """The train and test splits of `config.data` in memory; None for ImageNet, which `run` reads on the
    host example by example (`jnas.data.imagenet.train_readers`)."""
    if config.data.name == IMAGENET:
        return None
    return data_lib.load(config.data)


def _splits(config: ml_collections.ConfigDict, dataset: data_lib.Dataset | None, mesh: jax.sharding.Mesh):
    """(train split, test split, number of classes, data source) as config.data places them."""
    if config.data.name == IMAGENET and dataset is None:
        train_reader, test_reader = imagenet.train_readers(config.data)
        workers = config.data.get("workers", 0)
        # The salts set the splits apart in the examples' host-augmentation seeds.
        return (data_pipeline.HostSplit(train_reader, mesh, workers=workers, seed_salt=0),
                data_pipeline.HostSplit(test_reader, mesh, workers=workers, seed_salt=2),
                train_reader.num_classes, train_reader.source)
    return (data_pipeline.make_split(config.data, dataset.train_images, dataset.train_labels, mesh, seed_salt=0),
            data_pipeline.make_split(config.data, dataset.test_images, dataset.test_labels, mesh, seed_salt=2),
            dataset.num_classes, dataset.source)


def normalization(config: ml_collections.ConfigDict) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (mean, std) in [0, 1] units."""
    if config.data.name == IMAGENET:
        mean, std = imagenet.NORMALIZATION
        return np.asarray(mean, np.float32), np.asarray(std, np.float32)
    return data_lib.normalization(config.data.name, config.data.normalization)


# ------------------------------------------------------------------------------------------------------------
# Network, schedules, counts


def build_model(config: ml_collections.ConfigDict, genotype: Any, num_classes: int, *,
                for_counting: bool = False) -> nn.Module:
    """The evaluation network `config.model.network` of `genotype`.

    `for_counting` builds the same network plainly (float32, no scan, no remat) for the counts, which do not
    depend on those settings.
    """
    m = config.model
    dtype = jnp.float32 if for_counting else jnp.dtype(m.dtype)
    scan_cells, remat = (False, False) if for_counting else (bool(m.scan_cells), bool(m.remat))
    if m.network == "nb201":
        return networks.NB201Network(genotype, C=m.init_channels, N=m.num_cells, num_classes=num_classes,
                                     dtype=dtype, remat=remat, scan_cells=scan_cells)
    if m.network == "darts_cifar":
        return networks.DartsNetworkCIFAR(genotype, C=m.init_channels, layers=m.num_cells,
                                          num_classes=num_classes, auxiliary=bool(m.auxiliary),
                                          drop_path_rate=0.0, stem_multiplier=m.stem_multiplier, dtype=dtype,
                                          remat=remat, scan_cells=scan_cells)
    if m.network == "darts_imagenet":
        return networks.DartsNetworkImageNet(genotype, C=m.init_channels, layers=m.num_cells,
                                             num_classes=num_classes, auxiliary=bool(m.auxiliary),
                                             drop_path_rate=0.0, dtype=dtype, remat=remat,
                                             scan_cells=scan_cells)
    raise UserError(f"config.model.network={m.network!r} is not one of: {', '.join(NETWORKS)}")


def lr_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optim.Schedule:
    """The learning rate of a global step, constant within an epoch (the references step per epoch)."""
    o = config.optimizer
    if o.schedule == "cosine":
        return optim.epoch_cosine_schedule(o.lr, o.min_lr, config.num_epochs, steps_per_epoch, o.epoch_offset)
    if o.schedule == "exponential":
        def schedule(step: jax.Array) -> jax.Array:
            t = jnp.asarray(step) // steps_per_epoch + o.epoch_offset
            return o.lr * jnp.power(jnp.float32(o.decay_rate), t.astype(jnp.float32))

        return schedule
    raise UserError(f"config.optimizer.schedule={o.schedule!r} is not one of: {', '.join(SCHEDULES)}")


def drop_path_rate(config: ml_collections.ConfigDict, epoch: jax.Array | int) -> jax.Array:
    """quark0/darts train.py: epoch e (0-based) drops paths with probability drop_path_rate * e / num_epochs."""
    return jnp.float32(config.model.drop_path_rate) * jnp.asarray(epoch, jnp.float32) / config.num_epochs


def count_mult_adds(jaxpr: jax_core.Jaxpr) -> int:
    """Multiply-accumulates of the convolutions and dense layers of `jaxpr`, nested jaxprs included.

    A convolution costs (output elements) x (kernel window) x (input channels per group); a `dot_general`
    costs (output elements) x (contracted size). Scanned bodies count once per iteration and a `cond`
    counts its most expensive branch; a `while` loop, whose trip count is unknown, is an error.
    """
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            out_shape = eqn.outvars[0].aval.shape
            kernel_shape = eqn.invars[1].aval.shape
            rhs_spec = eqn.params["dimension_numbers"].rhs_spec  # (out feature, in feature, *spatial)
            window = math.prod(kernel_shape[d] for d in rhs_spec[2:])
            total += math.prod(out_shape) * window * kernel_shape[rhs_spec[1]]
            continue
        if name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            lhs_shape = eqn.invars[0].aval.shape
            total += math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs_shape[d] for d in lhs_contract)
            continue
        if name == "while":
            raise ValueError("count_mult_adds cannot count a while loop (unknown trip count)")
        inner = []
        for value in eqn.params.values():
            for item in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(item, jax_core.ClosedJaxpr):
                    inner.append(count_mult_adds(item.jaxpr))
                elif isinstance(item, jax_core.Jaxpr):
                    inner.append(count_mult_adds(item))
        if not inner:
            continue
        if name == "cond":
            total += max(inner)
        else:
            total += sum(inner) * (eqn.params["length"] if name == "scan" else 1)
    return total


def model_complexity(config: ml_collections.ConfigDict, genotype: Any, num_classes: int,
                     image_shape: tuple[int, int, int]) -> dict[str, Any]:
    """Parameter counts and the cost of one image's inference forward, from shapes only (no weights).

    `params` excludes the auxiliary head, as the published figures do (methods.md §0.4); `params_with_aux`
    includes it. BatchNorm running statistics are not parameters.
    """
    model = build_model(config, genotype, num_classes, for_counting=True)
    image = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init({"params": jax.random.key(0)}, x, train=False), image)
    params = variables["params"]
    with_aux = networks.count_params(params)
    aux = networks.count_params(params["auxiliary_head"]) if "auxiliary_head" in params else 0
    traced = jax.jit(lambda v, x: model.apply(v, x, train=False)).trace(variables, image)
    mult_adds = count_mult_adds(traced.jaxpr.jaxpr)
    try:
        cost = traced.lower().cost_analysis()
        xla_flops = float(cost["flops"]) if cost and "flops" in cost else None
    except Exception as e:  # noqa: BLE001 - a backend without cost analysis must not stop a training run
        logging.warning("XLA cost analysis unavailable (%s); result.json records only the exact count", e)
        xla_flops = None
    return {
        "params": with_aux - aux,
        "params_M": round((with_aux - aux) / 1e6, 3),
        "params_with_aux": with_aux,
        "mult_adds": mult_adds,
        "mult_adds_M": round(mult_adds / 1e6, 2),
        "mult_adds_method": MULT_ADDS_METHOD,
        "xla_flops": xla_flops,
        "xla_flops_method": XLA_FLOPS_METHOD,
        "image_shape": list(image_shape),
    }


# ------------------------------------------------------------------------------------------------------------
# State and steps


@dataclasses.dataclass(frozen=True)
class Trainer:
    """Everything the step closes over: static structure, never arrays that change."""

    config: ml_collections.ConfigDict
    genotype: Any
    model: nn.Module
    num_classes: int
    steps_per_epoch: int
    schedule: optim.Schedule
    tx: optax.GradientTransformation
    mean: np.ndarray
    std: np.ndarray

    @property
    def auxiliary(self) -> bool:
        return self.config.space == "darts" and bool(self.config.model.auxiliary)

    @property
    def uses_drop_path(self) -> bool:
        return self.config.space == "darts" and self.config.model.drop_path_rate > 0


def build(config: ml_collections.ConfigDict, genotype: Any, num_classes: int, steps_per_epoch: int) -> Trainer:
    schedule = lr_schedule(config, steps_per_epoch)
    mean, std = normalization(config)
    return Trainer(config=config, genotype=genotype, model=build_model(config, genotype, num_classes),
                   num_classes=num_classes, steps_per_epoch=steps_per_epoch, schedule=schedule,
                   tx=optim.weight_optimizer(config.optimizer, schedule), mean=mean, std=std)


def init_state(trainer: Trainer, rng: jax.Array, image_shape: tuple[int, int, int]) -> State:
    """A fresh state `{params, batch_stats, opt, step, rng}`; jitted, weights drawn with "rbg" keys as in
    `jnas.search.init_state` (threefry made compiling the init of hundreds of tensors slow on a CPU)."""

    @jax.jit
    def init(rng):
        k_params, k_run = jax.random.split(rng)
        k_params = jax.random.wrap_key_data(jax.random.bits(k_params, (4,), jnp.uint32), impl="rbg")
        dummy = jnp.zeros((1, *image_shape), jnp.float32)
        variables = trainer.model.init({"params": k_params}, dummy, train=False)
        params = variables["params"]
        return {
            "params": params,
            "batch_stats": variables.get("batch_stats", {}),
            "opt": trainer.tx.init(params),
            "step": jnp.zeros((), jnp.int32),
            "rng": k_run,
        }

    return init(rng)


def _cross_entropy(logits: jax.Array, labels: jax.Array, smoothing: float) -> jax.Array:
    logits = logits.astype(jnp.float32)
    if smoothing > 0:
        targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), smoothing)
        return optax.softmax_cross_entropy(logits, targets).mean()
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def step_fn(trainer: Trainer) -> Callable[[State, Batch], tuple[State, dict[str, jax.Array]]]:
    """The pure training step (not yet jitted).

    Metrics: `train_loss` is the optimised objective (with the auxiliary term and label smoothing, as the
    references log it), `train_acc` the accuracy of the main head on the augmented batch.
    """
    config, model = trainer.config, trainer.model
    smoothing = float(config.label_smoothing)
    aux_weight = float(config.model.auxiliary_weight)
    crop_padding, flip = int(config.augment.crop_padding), bool(config.augment.flip)
    cutout_length = int(config.augment.cutout_length)

    def step(state: State, batch: Batch):
        step_index = state["step"]
        lr = trainer.schedule(step_index)
        epoch = step_index // trainer.steps_per_epoch
        k_augment, k_cutout, k_drop = jax.random.split(jax.random.fold_in(state["rng"], step_index), 3)
        images = data_lib.augment(k_augment, batch["image"], trainer.mean, trainer.std, pad=crop_padding,
                                  flip=flip)
        images = cutout(k_cutout, images, cutout_length)
        labels = batch["label"]
        kwargs = {"drop_path_rate": drop_path_rate(config, epoch)} if trainer.uses_drop_path else {}

        def loss_fn(params):
            out, updates = model.apply({"params": params, "batch_stats": state["batch_stats"]}, images,
                                       train=True, rngs={"dropout": k_drop}, mutable=["batch_stats"], **kwargs)
            logits, aux_logits = out if trainer.auxiliary else (out, None)
            main_loss = _cross_entropy(logits, labels, smoothing)
            loss = main_loss
            if aux_logits is not None:
                loss = loss + aux_weight * _cross_entropy(aux_logits, labels, smoothing)
            return loss, (updates["batch_stats"], logits, main_loss)

        (loss, (batch_stats, logits, main_loss)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"])
        updates, opt = trainer.tx.update(grads, state["opt"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = {"train_loss": loss, "train_acc": jnp.mean(jnp.argmax(logits, -1) == labels),
                   "grad_norm": optim.global_norm(grads), "lr": lr}
        if trainer.auxiliary:
            metrics["train_main_loss"] = main_loss
        if kwargs:
            metrics["drop_path_rate"] = kwargs["drop_path_rate"]
        new_state = {**state, "params": params, "batch_stats": batch_stats, "opt": opt, "step": step_index + 1}
        return new_state, metrics

    return step


def make_step(trainer: Trainer, mesh: jax.sharding.Mesh):
    """The jitted, donated, data-parallel step (state replicated, batch sharded over the data axis), guarded
    against numerical faults (`jnas.loop.guard_step`, with one flag per part of the state: `STATE_FLAGS`)."""
    step = loop_lib.guard_step(step_fn(trainer), STATE_FLAGS, trainer.config.nan_policy)
    replicated, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    return jax.jit(step, in_shardings=(replicated, sharded), out_shardings=(replicated, replicated),
                   donate_argnums=0)


def make_eval_step(trainer: Trainer, mesh: jax.sharding.Mesh):
    """Sums of plain cross-entropy and correct predictions over a (masked) batch; BatchNorm in inference
    mode."""
    model = trainer.model

    def evaluate(state: State, batch: Batch):
        images = data_lib.normalize(batch["image"], trainer.mean, trainer.std)
        logits = model.apply({"params": state["params"], "batch_stats": state["batch_stats"]}, images,
                             train=False)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), batch["label"])
        mask = batch["mask"]
        correct = (jnp.argmax(logits, -1) == batch["label"]) * mask
        return {"loss_sum": jnp.sum(losses * mask), "correct": jnp.sum(correct), "count": jnp.sum(mask)}

    replicated, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    return jax.jit(evaluate, in_shardings=(replicated, sharded), out_shardings=replicated)


# ------------------------------------------------------------------------------------------------------------
# The loop


def _restore(ckpt: checkpoint_lib.Checkpointer, trainer: Trainer, image_shape: tuple[int, int, int],
             steps_per_epoch: int, mesh: jax.sharding.Mesh) -> tuple[State, dict] | None:
    """(state, extra) of the newest readable checkpoint in `ckpt`, or None when there is none."""
    shapes = jax.eval_shape(lambda: init_state(trainer, jax.random.PRNGKey(0), image_shape))
    return loop_lib.restore_state(ckpt, lambda extra: shapes, steps_per_epoch, mesh, "training state")


def _benchmark(config: ml_collections.ConfigDict, genotype: Any) -> dict | None:
    if config.space != "nb201" or not config.benchmark.nb201_table:
        return None
    from jnas.benchmarks import nb201

    return nb201.summary(nb201.load_table(config.benchmark.nb201_table).lookup(genotype.to_string()))


def run(config: ml_collections.ConfigDict, workdir: str, dataset: data_lib.Dataset | None = None) -> dict:
    """Trains `config.genotype` from scratch; writes metrics.jsonl, result.json and checkpoints/ in `workdir`.

    Checkpoints, resume, preemption and the numerical guard work as in `jnas.search.run`: the state is saved
    every `checkpoint_every_steps` steps and every `checkpoint_every_epochs` epochs (and after the last), a
    workdir holding checkpoints is continued from the newest readable one, and the continued run computes
    exactly what an uninterrupted one would (the data order, augmentation and drop path are functions of
    (seed, step), and a checkpoint taken inside an epoch holds that epoch's step metrics so far). SIGTERM and
    SIGINT stop the run after the current step with a checkpoint (raising `jnas.loop.Preempted`; a signal
    during the last epoch's last step lets the run finish instead); a non-finite loss, gradient norm or state
    stops it with `jnas.loop.NumericalFault` under nan_policy="stop". Returns the result dict (also in
    result.json) plus "history" (the metrics lines) and "state".
    """
    validate(config)
    started = time.perf_counter()
    mesh = parallel.make_mesh()
    if dataset is None:
        dataset = load_data(config)
    genotype = genotypes_lib.resolve(config.genotype, config.space)
    batch = config.batch_size
    train_split, test_split, num_classes, data_source = _splits(config, dataset, mesh)
    steps_per_epoch = train_split.size // batch
    if steps_per_epoch == 0 or test_split.size == 0:
        raise UserError(f"config.batch_size={batch} is larger than the training set "
                        f"({train_split.size} images); lower it or give more data "
                        "(config.data.synthetic_size for synthetic data)")
    if config.max_steps_per_epoch > 0:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
    image_shape = train_split.image_shape
    trainer = build(config, genotype, num_classes, steps_per_epoch)
    complexity = model_complexity(config, genotype, num_classes, image_shape)
    logging.info("train: %s on %s (%s), %s network, %.3fM parameters, %.1fM mult-adds, %d x %d steps, "
                 "%d devices", genotype.to_string(), config.data.name, data_source, config.model.network,
                 complexity["params_M"], complexity["mult_adds_M"], config.num_epochs, steps_per_epoch,
                 mesh.size)
    os.makedirs(workdir, exist_ok=True)
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    progress = report.ProgressLine(config.num_epochs * steps_per_epoch, batch_size=batch, desc="train")

    with checkpoint_lib.StopSignals() as signals, checkpoint_lib.Checkpointer(
            workdir, keep=config.keep_checkpoints) as ckpt:
        if config.resume == "never" and ckpt.latest_step() is not None:
            raise UserError(f"{workdir} holds checkpoints of an earlier run and config.resume=never; give a "
                            "fresh workdir, or config.resume=auto to continue that run")
        loop = loop_lib.EpochLoop(config=config, ckpt=ckpt, signals=signals, progress=progress,
                                  steps_per_epoch=steps_per_epoch, mesh=mesh, state_flags=STATE_FLAGS,
                                  lr_advice="config.optimizer.lr")
        step, eval_step = make_step(trainer, mesh), make_eval_step(trainer, mesh)
        resumed = _restore(ckpt, trainer, image_shape, steps_per_epoch, mesh)
        start_epoch, progress_in_epoch = 0, loop_lib.EpochProgress()
        if resumed is not None:
            state, extra = resumed
            start_epoch, loop.history = int(extra["epoch"]), list(extra["history"])
            progress_in_epoch = loop_lib.EpochProgress.from_extra(extra)
            logging.info("resuming %s at step %d (epoch %d, %d of its %d steps done)", workdir,
                         start_epoch * steps_per_epoch + progress_in_epoch.position, start_epoch + 1,
                         progress_in_epoch.position, steps_per_epoch)
        else:
            state = init_state(trainer, jax.random.PRNGKey(config.seed), image_shape)
            state = jax.device_put(state, parallel.replicated(mesh))
        # Epochs after the checkpoint are computed again: drop their lines, so each epoch has one.
        loop_lib.rewrite_metrics(metrics_path, loop.history)

        with loop_lib.metrics_writer(metrics_path) as writer, progress:
            for epoch in range(start_epoch, config.num_epochs):
                batches = train_split.epoch_batches(seed=config.seed, epoch=epoch, batch_size=batch,
                                                    start=progress_in_epoch.position, stop=steps_per_epoch)
                done = loop.run_steps(state, step, [batches], epoch, progress_in_epoch)
                state, entry = done.state, _epoch_line(config, done, eval_step, test_split, epoch, steps_per_epoch)
                progress_in_epoch = loop_lib.EpochProgress()
                loop.history.append(writer.write(entry))
                logging.info("epoch %d/%d train %.4f/%.4f test %.4f/%.4f", epoch + 1, config.num_epochs,
                             entry["train_loss"], entry["train_acc"], entry["test_loss"], entry["test_acc"])
                every, final = config.checkpoint_every_epochs, epoch + 1 == config.num_epochs
                loop.end_epoch(state, epoch, save=every > 0 and ((epoch + 1) % every == 0 or final), final=final)

    history = loop.history
    last = history[-1]
    result = {
        "task": "train",
        "space": config.space,
        "genotype": genotype.to_string(),
        "genotype_source": genotypes_lib.describe(config.genotype),
        "network": config.model.network,
        "dataset": config.data.name,
        "data_source": data_source,
        "epochs": last["epoch"],
        "steps": last["step"],
        "test_acc": last["test_acc"],
        "test_loss": last["test_loss"],
        "train_acc": last["train_acc"],
        "train_loss": last["train_loss"],
        **({"skipped_steps": sum(line.get("skipped_steps", 0) for line in history)}
           if config.nan_policy == "skip_step" else {}),
        **complexity,
        "devices": mesh.size,
        "seconds": time.perf_counter() - started,
    }
    benchmark = _benchmark(config, genotype)
    if benchmark is not None:
        result["benchmark"] = benchmark
    if jax.process_index() == 0:
        report.write_json(os.path.join(workdir, "result.json"), result)
    return {**result, "history": history, "state": state}


def _epoch_line(config: ml_collections.ConfigDict, done: loop_lib.EpochSteps, eval_step: Callable,
                test_split: Any, epoch: int, steps_per_epoch: int) -> dict:
    """Epoch `epoch`'s metrics line: the means of its steps, and the scores on the test set."""
    means = done.means()
    skipped = done.skipped_per_step()
    scores = evaluate_split(eval_step, done.state, test_split, config.batch_size, config.eval_batches)
    entry = {
        "epoch": epoch + 1,
        "step": (epoch + 1) * steps_per_epoch,
        "lr": means.pop("lr"),
        "train_loss": means.pop("train_loss"),
        "train_acc": means.pop("train_acc"),
        "test_loss": scores["loss"],
        "test_acc": scores["acc"],
        **means,
        **({"skipped_steps": int(skipped.sum())} if config.nan_policy == "skip_step" or skipped.any() else {}),
        "seconds": done.seconds,
        "images_per_second": done.images_per_second,
    }
    if done.compile_seconds is not None:
        entry["compile_seconds"] = done.compile_seconds
    return entry
