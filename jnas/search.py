"""The search: its state, the jitted bi-level step and the epoch loop.

The state is one plain pytree, `{params, batch_stats, arch, w_opt, a_opt, step, rng}`. The step is a
pure function `(state, train_batch, valid_batch) -> (state, metrics)`, jitted with the state replicated
and donated and the batches sharded over the mesh's data axis. Every random number is drawn for the
global batch from `fold_in(state["rng"], step)`, so the result does not depend on the device count.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jnas import checkpoint as checkpoint_lib
from jnas import data as data_lib
from jnas import hypergrad, methods, optim, parallel, report, spaces
from jnas import loop as loop_lib
from jnas.data import imagenet
from jnas.data import pipeline as data_pipeline
from jnas.data.pipeline import ARCH_STREAM, WEIGHT_STREAM, evaluate_split
from jnas.errors import UserError
from jnas.nn import supernet as supernet_lib

PyTree = Any
State = dict[str, Any]
Batch = dict[str, jax.Array]

# The flags the guarded step adds for parts of the state (flag -> (state key, what it holds)).
STATE_FLAGS = {"arch_finite": ("arch", "architecture parameters"),
               "arch_opt_finite": ("a_opt", "architecture optimizer state")}

@dataclasses.dataclass(frozen=True)
class Search:
    """Everything the step closes over: static structure, never arrays that change.

    One per stage of the search (a progressive method rebuilds it with a narrower K and pruned ops).
    """

    config: ml_collections.ConfigDict
    space: Any
    method: methods.Method
    model: Any
    num_classes: int
    steps_per_epoch: int
    schedule: optim.Schedule
    weight_tx: optax.GradientTransformation
    arch_tx: optax.GradientTransformation
    mean: np.ndarray
    std: np.ndarray
    stage: methods.Stage
    stage_start_epoch: int = 0

    @property
    def joint_sgd(self) -> bool:
        """Single level with α inside the weights' SGD (one optimizer state over both)."""
        return self.method.optimization == "single_level" and bool(self.config.single_level.joint_sgd)


def build(config: ml_collections.ConfigDict, num_classes: int, steps_per_epoch: int, *,
          op_mask: methods.OpMask | None = None, stage_index: int = 0) -> Search:
    """The search of stage `stage_index`, with the ops in `op_mask` (all when None)."""
    space = spaces.get(config.space, **config.space_options.to_dict())
    method = methods.build(config, space, op_mask)
    stages = method.stages()
    stage = stages[stage_index]
    model = supernet_lib.build_supernet(space, config.model, num_classes,
                                        partial_channels=stage.partial_channels, **method.supernet_options)
    schedule = optim.search_weight_schedule(config.optimizer, config.num_epochs, steps_per_epoch)
    if config.data.name == imagenet.NAME:
        mean, std = (np.asarray(v, np.float32) for v in imagenet.NORMALIZATION)
    else:
        mean, std = data_lib.normalization(config.data.name, config.data.normalization)
    return Search(config=config, space=space, method=method, model=model, num_classes=num_classes,
                  steps_per_epoch=steps_per_epoch, schedule=schedule,
                  weight_tx=optim.weight_optimizer(config.optimizer, schedule),
                  arch_tx=optim.arch_optimizer(method.arch_optimizer_config()), mean=mean, std=std,
                  stage=stage, stage_start_epoch=sum(s.num_epochs for s in stages[:stage_index]))


def _clock(search: Search, step: jax.Array, rng: jax.Array) -> methods.Clock:
    step = jnp.asarray(step, jnp.int32)
    return methods.Clock(step=step, epoch=step // search.steps_per_epoch, step_rng=rng)


def init_state(search: Search, rng: jax.Array, image_shape: tuple[int, int, int]) -> State:
    """A fresh state; `image_shape` is (H, W, C) of one image.

    Jitted: run eagerly, Flax's init would compile each of its hundreds of small ops on its own. The
    weights are drawn with XLA's RngBitGenerator ("rbg") instead of threefry: one threefry hash per
    parameter tensor made compiling the init take 44 s for a tiny NB201 supernet on a laptop CPU, 7 s
    with rbg. The distributions are the same; the values depend only on the seed.
    """

    @jax.jit
    def init(rng):
        k_params, k_arch, k_run = jax.random.split(rng, 3)
        method = search.method
        arch = method.init_arch(k_arch)
        dummy = jnp.zeros((1, *image_shape), jnp.float32)
        weights = method.mixing_weights(arch, k_arch, _clock(search, 0, k_arch))
        k_params = jax.random.wrap_key_data(jax.random.bits(k_params, (4,), jnp.uint32), impl="rbg")
        variables = search.model.init({"params": k_params}, dummy, weights, train=False,
                                      edge_weights=method.edge_weights(arch))
        params = variables["params"]
        if search.joint_sgd:
            w_opt, a_opt = search.weight_tx.init({"params": params, "arch": arch}), ()
        else:
            w_opt, a_opt = search.weight_tx.init(params), search.arch_tx.init(arch)
        return {
            "params": params,
            "batch_stats": variables.get("batch_stats", {}),
            "arch": arch,
            "w_opt": w_opt,
            "a_opt": a_opt,
            "step": jnp.zeros((), jnp.int32),
            "rng": k_run,
        }

    return init(rng)


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels).mean()


def step_fn(search: Search) -> Callable[[State, Batch, Batch], tuple[State, dict[str, jax.Array]]]:
    """The pure search step (not yet jitted): bi-level, or single level when the method says so."""
    config, method, model = search.config, search.method, search.model
    hg = config.hypergradient
    # RandomCrop padding: 4 on CIFAR, 2 on ImageNet16; ImageNet is cropped on the host (flip only here).
    pad = 0 if config.data.name == imagenet.NAME else data_lib.get_spec(config.data.name).crop_padding

    def loss(params, batch_stats, arch, images, labels, key, clock):
        weights = method.mixing_weights(arch, key, clock)
        logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, images, weights,
                                      train=True, edge_weights=method.edge_weights(arch),
                                      mutable=["batch_stats"])
        return _cross_entropy(logits, labels), (updates["batch_stats"], logits)

    def apply_arch_grads(state, grads, clock):
        updates, a_opt = search.arch_tx.update(grads, state["a_opt"], state["arch"])
        arch = optax.apply_updates(state["arch"], updates)
        rows = method.update_mask(state["arch"], clock)
        if rows is not None:
            arch, a_opt = optim.keep_rows(rows, (arch, a_opt), (state["arch"], state["a_opt"]))
        return {**state, "arch": arch, "a_opt": a_opt}

    def arch_update(state, train, valid, key, clock, lr):
        # BatchNorm statistics of these extra passes are discarded: the references use running
        # statistics only in their evaluation pass, and the weight pass below updates them.
        def train_loss(p, a, batch):
            return loss(p, state["batch_stats"], a, *batch, key, clock)[0]

        def val_loss(p, a, batch):
            return loss(p, state["batch_stats"], a, *batch, key, clock)[0] + method.regularizer(a)

        params, arch, metrics = state["params"], state["arch"], {}
        if hg.kind == "first_order":
            grads = hypergrad.first_order(val_loss, params, arch, valid)
        elif hg.kind == "second_order":
            grads = hypergrad.darts_second_order(
                train_loss, val_loss, params, arch, train, valid, lr=lr,
                momentum_buffer=optim.momentum_buffer(state["w_opt"]),
                momentum=config.optimizer.momentum, weight_decay=config.optimizer.weight_decay,
                hvp=hg.hvp, fd_radius=hg.fd_radius)
        elif hg.kind == "unrolled":
            # The inner steps reuse this step's training batch and mixing-weight noise.
            grads = hypergrad.unrolled(train_loss, val_loss, params, arch, train, valid,
                                       inner_tx=search.weight_tx, inner_state=state["w_opt"],
                                       num_steps=hg.unrolled_steps, remat=hg.remat)
        elif hg.kind == "implicit":
            grads, info = hypergrad.implicit(train_loss, val_loss, params, arch, train, valid,
                                             solver=hg.solver, num_iters=hg.num_iters, damping=hg.damping,
                                             neumann_lr=hg.neumann_lr)
            metrics = {"solver_residual": info["residual"] / jnp.maximum(info["rhs_norm"], 1e-30)}
        else:
            raise ValueError(f"unknown config.hypergradient.kind {hg.kind!r}")
        return apply_arch_grads(state, grads, clock), {"arch_grad_norm": optim.global_norm(grads), **metrics}

    def train_metrics(value, logits, labels, grads):
        return {"train_loss": value, "train_acc": jnp.mean(jnp.argmax(logits, -1) == labels),
                "grad_norm": optim.global_norm(grads)}

    def weight_update(state, train, key, clock):
        (value, (batch_stats, logits)), grads = jax.value_and_grad(loss, has_aux=True)(
            state["params"], state["batch_stats"], state["arch"], *train, key, clock)
        updates, w_opt = search.weight_tx.update(grads, state["w_opt"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        return ({**state, "params": params, "batch_stats": batch_stats, "w_opt": w_opt},
                train_metrics(value, logits, train[1], grads))

    def single_level_update(state, train, key, clock):
        """Weights and α from one backward pass on the same batch (methods.md §6)."""
        def joint_loss(params, arch):
            value, aux = loss(params, state["batch_stats"], arch, *train, key, clock)
            return value + method.regularizer(arch), (value, aux)

        (_, (value, (batch_stats, logits))), (w_grads, a_grads) = jax.value_and_grad(
            joint_loss, argnums=(0, 1), has_aux=True)(state["params"], state["arch"])
        if search.joint_sgd:
            joint = {"params": state["params"], "arch": state["arch"]}
            updates, w_opt = search.weight_tx.update({"params": w_grads, "arch": a_grads}, state["w_opt"], joint)
            joint = optax.apply_updates(joint, updates)
            state = {**state, **joint, "w_opt": w_opt}
        else:
            updates, w_opt = search.weight_tx.update(w_grads, state["w_opt"], state["params"])
            state = {**state, "params": optax.apply_updates(state["params"], updates), "w_opt": w_opt}
            state = apply_arch_grads(state, a_grads, clock)
        state = {**state, "batch_stats": batch_stats}
        return state, {**train_metrics(value, logits, train[1], w_grads),
                       "arch_grad_norm": optim.global_norm(a_grads)}

    def step(state: State, train_batch: Batch, valid_batch: Batch):
        step_index = state["step"]
        lr = search.schedule(step_index)
        k_step, k_aug_train, k_aug_valid, k_arch, k_weights = jax.random.split(
            jax.random.fold_in(state["rng"], step_index), 5)
        clock = _clock(search, step_index, k_step)
        # Both splits get the training augmentation, as in every reference (methods.md §11.16).
        train = (data_lib.augment(k_aug_train, train_batch["image"], search.mean, search.std, pad=pad),
                 train_batch["label"])
        extra = {"lr": lr, **method.step_metrics(clock)}
        if method.optimization == "single_level":
            state, metrics = single_level_update(state, train, k_weights, clock)
            return {**state, "step": step_index + 1}, {**metrics, **extra}
        valid = (data_lib.augment(k_aug_valid, valid_batch["image"], search.mean, search.std, pad=pad),
                 valid_batch["label"])

        def arch_phase(s):
            warmup = config.arch_warmup_epochs
            if warmup <= 0:
                return arch_update(s, train, valid, k_arch, clock, lr)
            # Counted from the start of the stage (DrNAS warms up again after each stage boundary).
            return jax.lax.cond(
                clock.epoch - search.stage_start_epoch >= warmup,
                lambda s: arch_update(s, train, valid, k_arch, clock, lr),
                lambda s: (s, jax.tree.map(jnp.zeros_like, jax.eval_shape(
                    lambda s: arch_update(s, train, valid, k_arch, clock, lr)[1], s))), s)

        if config.update_order == "arch_first":
            state, arch_metrics = arch_phase(state)
            state, weight_metrics = weight_update(state, train, k_weights, clock)
        else:
            state, weight_metrics = weight_update(state, train, k_weights, clock)
            state, arch_metrics = arch_phase(state)
        return {**state, "step": step_index + 1}, {**weight_metrics, **arch_metrics, **extra}

    return step


def make_step(search: Search, mesh: jax.sharding.Mesh):
    """The jitted, donated, data-parallel step, guarded against numerical faults (`jnas.loop.guard_step`).

    The guard's flags name the architecture parameters and their optimizer state (small trees, cheap to
    reduce) and, through `finite`, cover the weights, BatchNorm statistics and weight optimizer state.
    """
    step = loop_lib.guard_step(step_fn(search), STATE_FLAGS, search.config.get("nan_policy", "stop"))
    replicated, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    return jax.jit(step, in_shardings=(replicated, sharded, sharded),
                   out_shardings=(replicated, replicated), donate_argnums=0)


def make_eval_step(search: Search, mesh: jax.sharding.Mesh):
    """Sums of loss and correct predictions over a (masked) batch, BatchNorm in inference mode."""
    method, model = search.method, search.model

    def evaluate(state: State, batch: Batch):
        images = data_lib.normalize(batch["image"], search.mean, search.std)
        # Stochastic methods (GDAS, DrNAS) evaluate one sample, as their references' infer() do.
        key = jax.random.fold_in(jax.random.fold_in(state["rng"], state["step"]), 1)
        weights = method.mixing_weights(state["arch"], key, _clock(search, state["step"], key))
        logits = model.apply({"params": state["params"], "batch_stats": state["batch_stats"]},
                             images, weights, train=False, edge_weights=method.edge_weights(state["arch"]))
        losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), batch["label"])
        mask = batch["mask"]
        correct = (jnp.argmax(logits, -1) == batch["label"]) * mask
        return {"loss_sum": jnp.sum(losses * mask), "correct": jnp.sum(correct), "count": jnp.sum(mask)}

    replicated, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    return jax.jit(evaluate, in_shardings=(replicated, sharded), out_shardings=replicated)


def genotype_record(search: Search, state: State) -> dict:
    """The genotype and the parameters it came from, as written to genotype.json."""
    arch = jax.device_get(state["arch"])
    genotype = search.method.derive(arch)
    return {
        "space": search.config.space,
        "method": search.config.method,
        "genotype": genotype.to_string(),
        "arch_params": {k: np.asarray(v).tolist() for k, v in arch.items()},
        **({"op_mask": {k: np.asarray(v).tolist() for k, v in search.method.op_mask.items()}}
           if search.method.op_mask is not None else {}),
        "mixing_weights": {k: np.asarray(v).tolist()
                           for k, v in search.method.derivation_weights(arch).items()},
    }


def benchmark_lookup(config: ml_collections.ConfigDict) -> Callable[[str], dict] | None:
    """genotype string -> NAS-Bench-201 accuracies, when the config names a table for an NB201 search."""
    if config.space != "nb201":
        return None
    if not config.benchmark.nb201_table:
        logging.info("benchmark.nb201_table is not set: no NAS-Bench-201 lookup of the genotypes")
        return None
    from jnas.benchmarks import nb201

    table = nb201.load_table(config.benchmark.nb201_table)
    return lambda genotype: nb201.summary(table.lookup(genotype))


def advance_stage(new: Search, state: State, image_shape: tuple[int, int, int], seed: int) -> State:
    """The state of `new`'s first step from the last state of `old` (methods.md §4.5).

    Pruned ops lose their weights and their α become 0; the kept ops' channels, BatchNorm statistics and
    SGD momentum are widened by duplicating channels (the same indices for all three, `jnas.nn.widen`); the
    optimizer's step count carries over, so the learning rate continues on the global schedule, and Adam's
    state of α is kept, as in DrNAS.
    """
    from jnas.nn import widen

    template = jax.eval_shape(lambda: init_state(new, jax.random.PRNGKey(0), image_shape))
    host = jax.device_get(state)
    params = widen.widen_like(host["params"], template["params"], seed)
    batch_stats = widen.widen_like(host["batch_stats"], template["batch_stats"], seed)
    w_opt = widen.widen_opt_state(host["w_opt"], template["w_opt"], seed)
    mask = new.method.op_mask
    arch = {k: np.where(mask[k], v, 0.0).astype(v.dtype) if mask is not None and k in mask else v
            for k, v in host["arch"].items()}
    return {**host, "params": params, "batch_stats": batch_stats, "w_opt": w_opt, "arch": arch}


@dataclasses.dataclass
class SearchData:
    """The splits a search reads: weights, architecture, and the one scored after each epoch."""

    train: data_pipeline.Split
    valid: data_pipeline.Split
    eval: data_pipeline.Split
    eval_name: str  # "valid" or "test", the prefix of the scores in metrics.jsonl
    num_classes: int
    image_shape: tuple[int, int, int]
    description: str


def search_data(config: ml_collections.ConfigDict, dataset: data_lib.Dataset | None, method: methods.Method,
                mesh: jax.sharding.Mesh) -> SearchData:
    """The splits of this kind of search, as config.data.pipeline places them.

    Bi-level: the DARTS split of the training set; the architecture split is also scored each epoch.
    Single level: every training image trains both weights and α; the test set is scored each epoch.
    ImageNet (`dataset` None; always read on the host): the PC-DARTS per-class subsets of the training set,
    the architecture subset scored with the evaluation transform; single level trains both on the weight
    subset.
    """
    single_level = method.optimization == "single_level"
    if config.data.name == imagenet.NAME:
        weight_reader, arch_reader, eval_reader = imagenet.search_readers(config.data)
        workers = config.data.get("workers", 0)
        # The salts set the splits apart in the examples' host-augmentation seeds.
        train = data_pipeline.HostSplit(weight_reader, mesh, workers=workers, seed_salt=0)
        valid = train if single_level else data_pipeline.HostSplit(arch_reader, mesh, workers=workers, seed_salt=1)
        evaluation = (valid if eval_reader is arch_reader and not single_level
                      else data_pipeline.HostSplit(eval_reader, mesh, workers=workers, seed_salt=2))
        return SearchData(train, valid, evaluation, "valid", weight_reader.num_classes, train.image_shape,
                          f"{imagenet.NAME} ({weight_reader.source})")
    description = f"{dataset.name} ({dataset.source})"
    if single_level:
        train = data_pipeline.make_split(config.data, dataset.train_images, dataset.train_labels, mesh, seed_salt=0)
        evaluation = data_pipeline.make_split(config.data, dataset.test_images, dataset.test_labels, mesh,
                                              seed_salt=2)
        return SearchData(train, train, evaluation, "test", dataset.num_classes, dataset.image_shape, description)
    (train_x, train_y), (valid_x, valid_y) = data_lib.search_split_for(dataset, config.data)
    train = data_pipeline.make_split(config.data, train_x, train_y, mesh, seed_salt=0)
    valid = data_pipeline.make_split(config.data, valid_x, valid_y, mesh, seed_salt=1)
    return SearchData(train, valid, valid, "valid", dataset.num_classes, dataset.image_shape, description)


def run(config: ml_collections.ConfigDict, workdir: str, dataset: data_lib.Dataset | None = None) -> dict:
    """A whole search; writes metrics.jsonl, genotype.json, plots/ and checkpoints/ into `workdir`.

    A workdir holding checkpoints is resumed from the newest readable one, and the resumed run computes
    exactly what an uninterrupted run would: the data order is a function of (seed, epoch), every random
    number is folded from the state's key and step, and a checkpoint taken inside an epoch also holds that
    epoch's step metrics so far. SIGTERM and SIGINT stop the run after the current step with a checkpoint
    (raising `Preempted`); a non-finite value stops it with `NumericalFault` under nan_policy="stop".
    """
    mesh = parallel.make_mesh()
    parallel.check_batch_size(config.batch_size, mesh)
    data_pipeline.check_config(config.data)
    if dataset is None and config.data.name != imagenet.NAME:
        dataset = data_lib.load(config.data)
    space = spaces.get(config.space, **config.space_options.to_dict())
    method = methods.build(config, space)
    splits = search_data(config, dataset, method, mesh)
    train_split, valid_split, eval_split, eval_name = splits.train, splits.valid, splits.eval, splits.eval_name
    num_classes, image_shape = splits.num_classes, splits.image_shape
    steps_per_epoch = train_split.size // config.batch_size
    if steps_per_epoch == 0 or valid_split.size < config.batch_size or eval_split.size == 0:
        raise UserError(
            f"config.batch_size={config.batch_size} is larger than a search split ({train_split.size} images "
            f"for the weights, {valid_split.size} for the architecture); lower it, or give more data "
            "(config.data.synthetic_size for synthetic data)")
    if config.max_steps_per_epoch > 0:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
    lookup = benchmark_lookup(config)
    logging.info("search: %s on %s, %s, %d x %d steps, %d devices", config.method, config.space,
                 splits.description, config.num_epochs, steps_per_epoch, mesh.size)

    os.makedirs(os.path.join(workdir, "plots"), exist_ok=True)
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    # Process 0 writes the outputs (every process computes them): on a shared filesystem the others
    # would append each metrics line again; elsewhere their workdirs hold checkpoints only.
    primary = jax.process_index() == 0
    stages = method.stages()
    progress = report.ProgressLine(config.num_epochs * steps_per_epoch, batch_size=config.batch_size)
    with checkpoint_lib.StopSignals() as signals, checkpoint_lib.Checkpointer(
            workdir, keep=config.get("keep_checkpoints", 3)) as ckpt:
        resumed = _restore(ckpt, config, num_classes, steps_per_epoch, image_shape, mesh)
        loop = loop_lib.EpochLoop(config=config, ckpt=ckpt, signals=signals, progress=progress,
                                  steps_per_epoch=steps_per_epoch, mesh=mesh, state_flags=STATE_FLAGS,
                                  lr_advice="config.optimizer.lr or config.arch_optimizer.lr")
        search, state, op_mask, start_stage, start_epoch = None, None, None, 0, 0
        progress_in_epoch = loop_lib.EpochProgress()
        if resumed is not None:
            search, state, extra = resumed
            op_mask = search.method.op_mask
            start_stage, start_epoch = extra["stage"], extra["epoch"]
            loop.history = list(extra["history"])
            progress_in_epoch = loop_lib.EpochProgress.from_extra(extra)
            logging.info("resuming %s at step %d (epoch %d, %d of its %d steps done)", workdir,
                         start_epoch * steps_per_epoch + progress_in_epoch.position, start_epoch + 1,
                         progress_in_epoch.position, steps_per_epoch)
        # Epochs after the checkpoint are computed again: drop their lines, so each epoch has one.
        loop_lib.rewrite_metrics(metrics_path, loop.history)
        with loop_lib.metrics_writer(metrics_path) as writer:
            for stage_index in range(start_stage, len(stages)):
                stage = stages[stage_index]
                if resumed is None or stage_index > start_stage:
                    if stage.num_keep is not None and state is not None:
                        op_mask = methods.prune_mask(jax.device_get(state["arch"]), op_mask, stage.num_keep,
                                                     space.arch_shape)
                    search = build(config, num_classes, steps_per_epoch, op_mask=op_mask,
                                   stage_index=stage_index)
                    if state is None:
                        state = init_state(search, jax.random.PRNGKey(config.seed), image_shape)
                    else:
                        state = advance_stage(search, state, image_shape, config.seed + stage_index)
                        logging.info("stage %d: K=%d, %s", stage_index + 1, stage.partial_channels,
                                     "all ops" if op_mask is None else f"{stage.num_keep} ops per edge")
                    state = jax.device_put(state, parallel.replicated(mesh))
                step = parallel.start_together(make_step(search, mesh), "search_step")
                eval_step = parallel.start_together(make_eval_step(search, mesh), "search_eval_step")
                loop.fresh_step = True
                loop.checkpoint_fields = functools.partial(_checkpoint_fields, search, stage_index)
                stage_end = search.stage_start_epoch + stage.num_epochs
                for epoch in range(max(search.stage_start_epoch, start_epoch), stage_end):
                    state, entry = _run_epoch(loop, search, splits, lookup, state, step, eval_step, epoch,
                                              progress_in_epoch)
                    progress_in_epoch = loop_lib.EpochProgress()
                    if len(stages) > 1:
                        entry["stage"] = stage_index + 1
                    loop.history.append(writer.write(entry))
                    logging.info("epoch %d/%d train %.4f/%.3f %s %.4f/%.3f %s", epoch + 1, config.num_epochs,
                                 entry["train_loss"], entry["train_acc"], eval_name, entry[f"{eval_name}_loss"],
                                 entry[f"{eval_name}_acc"], entry["genotype"])
                    loop.end_epoch(state, epoch, save=True, final=epoch + 1 == config.num_epochs)

    record = genotype_record(search, state)
    if lookup:
        record["benchmark"] = lookup(record["genotype"])
    if not primary:
        return {"genotype": record["genotype"], "history": loop.history, "state": state}
    report.write_json(os.path.join(workdir, "genotype.json"), record)
    report.plot_mixing_weights({k: np.asarray(v) for k, v in record["mixing_weights"].items()},
                               search.space, os.path.join(workdir, "plots", "mixing_weights.png"),
                               title=f"{config.method} on {config.space}: {record['genotype']}")
    from jnas import draw

    draw.write_search_pictures(workdir, search.space, record["genotype"], os.path.join(workdir, "metrics.jsonl"))
    return {"genotype": record["genotype"], "history": loop.history, "state": state}


def _checkpoint_fields(search: Search, stage_index: int) -> dict:
    """What a search adds to a checkpoint: its stage and op mask decide the state's shapes."""
    mask = search.method.op_mask
    return {"stage": stage_index,
            "op_mask": None if mask is None else {k: np.asarray(v, bool).tolist() for k, v in mask.items()}}


def _restore(ckpt: checkpoint_lib.Checkpointer, config: ml_collections.ConfigDict, num_classes: int,
             steps_per_epoch: int, image_shape: tuple[int, int, int], mesh: jax.sharding.Mesh):
    """(search, state, extra) of the newest readable checkpoint in `ckpt`, or None when there is none.

    The state's shapes depend on the stage it was saved in (a progressive method's K and pruned ops), so
    the template is built from each candidate checkpoint's own `extra`.
    """
    built: dict[str, tuple[Search, PyTree]] = {}

    def search_for(extra: dict) -> tuple[Search, PyTree]:
        key = json.dumps([extra["stage"], extra["op_mask"]])
        if key not in built:
            mask = extra["op_mask"]
            mask = None if mask is None else {k: np.asarray(v, bool) for k, v in mask.items()}
            search = build(config, num_classes, steps_per_epoch, op_mask=mask, stage_index=extra["stage"])
            built[key] = search, jax.eval_shape(lambda: init_state(search, jax.random.PRNGKey(0), image_shape))
        return built[key]

    restored = loop_lib.restore_state(ckpt, lambda extra: search_for(extra)[1], steps_per_epoch, mesh,
                                      "search state")
    if restored is None:
        return None
    state, extra = restored
    return search_for(extra)[0], state, extra


def _run_epoch(loop: loop_lib.EpochLoop, search: Search, splits: SearchData, lookup: Callable[[str], dict] | None,
               state: State, step, eval_step, epoch: int, progress: loop_lib.EpochProgress) -> tuple[State, dict]:
    """Epoch `epoch` from step `progress.position` on; its metrics line (without "stage")."""
    config, batch, steps_per_epoch = loop.config, loop.config.batch_size, loop.steps_per_epoch
    # Batches from step `progress.position` on: each is a function of (seed, epoch, step), so a resumed
    # epoch reads what the uninterrupted one did. The architecture batches come from a stream of their
    # own (its own order, fresh each epoch); single level has none, its step gets the weight batch twice.
    window = dict(seed=config.seed, epoch=epoch, batch_size=batch, start=progress.position, stop=steps_per_epoch)
    train_batches = splits.train.epoch_batches(**window, stream=WEIGHT_STREAM)
    if splits.valid is splits.train:
        done = loop.run_steps(state, lambda s, b: step(s, b, b), [train_batches], epoch, progress)
    else:
        valid_batches = splits.valid.epoch_batches(**window, stream=ARCH_STREAM)
        done = loop.run_steps(state, step, [train_batches, valid_batches], epoch, progress)
    state = done.state
    means = done.means()
    scores = evaluate_split(eval_step, state, splits.eval, batch, config.eval_batches)
    record = genotype_record(search, state)
    skipped = done.skipped_per_step()
    entry = {
        "epoch": epoch + 1,
        "step": int((epoch + 1) * steps_per_epoch),
        "lr": means.pop("lr"),
        "train_loss": means.pop("train_loss"),
        "train_acc": means.pop("train_acc"),
        f"{splits.eval_name}_loss": scores["loss"],
        f"{splits.eval_name}_acc": scores["acc"],
        "genotype": record["genotype"],
        "mixing_weights": record["mixing_weights"],  # the derivation weights, for the history plots
        "seconds": done.seconds,
        "images_per_second": done.images_per_second,
        **means,
        **({"skipped_steps": int(skipped.sum())} if loop.nan_policy == "skip_step" or skipped.any() else {}),
        **(lookup(record["genotype"]) if lookup else {}),
    }
    if done.compile_seconds is not None:
        entry["compile_seconds"] = done.compile_seconds
    return state, entry
