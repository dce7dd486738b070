"""The search: its state, the jitted bi-level step and the epoch loop.

The state is one plain pytree, `{params, batch_stats, arch, w_opt, a_opt, step, rng}`. The step is a
pure function `(state, train_batch, valid_batch) -> (state, metrics)`, jitted with the state replicated
and donated and the batches sharded over the mesh's data axis. Every random number is drawn for the
global batch from `fold_in(state["rng"], step)`, so the result does not depend on the device count.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jnas import data as data_lib
from jnas import hypergrad, methods, optim, parallel, report, spaces
from jnas.errors import UserError
from jnas.nn import supernet as supernet_lib

PyTree = Any
State = dict[str, Any]
Batch = dict[str, jax.Array]


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
    schedule = optim.epoch_cosine_schedule(
        config.optimizer.lr, config.optimizer.min_lr, config.num_epochs, steps_per_epoch,
        config.optimizer.epoch_offset)
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
        train = (data_lib.augment(k_aug_train, train_batch["image"], search.mean, search.std),
                 train_batch["label"])
        extra = {"lr": lr, **method.step_metrics(clock)}
        if method.optimization == "single_level":
            state, metrics = single_level_update(state, train, k_weights, clock)
            return {**state, "step": step_index + 1}, {**metrics, **extra}
        valid = (data_lib.augment(k_aug_valid, valid_batch["image"], search.mean, search.std),
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
    """The jitted, donated, data-parallel step."""
    replicated, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    return jax.jit(step_fn(search), in_shardings=(replicated, sharded, sharded),
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


class DeviceSplit:
    """One split's images and labels held on every device; batches are gathered by index there."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, mesh: jax.sharding.Mesh):
        self.size = len(labels)
        self.mesh = mesh
        self.images = parallel.put_replicated(images, mesh)
        self.labels = parallel.put_replicated(labels.astype(np.int32), mesh)
        sharded = parallel.batch_sharded(mesh)
        self._gather = jax.jit(
            lambda images, labels, index: {"image": images[index], "label": labels[index]},
            out_shardings=sharded)

    def batch(self, index: np.ndarray) -> Batch:
        return self._gather(self.images, self.labels, parallel.put_sharded(index.astype(np.int32), self.mesh))

    def epoch_order(self, seed: int, epoch: int) -> np.ndarray:
        """The permutation of epoch `epoch`: a function of (seed, epoch) only, so runs are reproducible."""
        return np.random.default_rng([seed, epoch]).permutation(self.size)


def evaluate_split(eval_step, state: State, split: DeviceSplit, batch_size: int, max_batches: int) -> dict:
    """Loss and accuracy over the split (or its first `max_batches` batches), in a fixed order."""
    num_batches = -(-split.size // batch_size)
    if max_batches > 0:
        num_batches = min(num_batches, max_batches)
    totals = None
    for i in range(num_batches):
        index = np.arange(i * batch_size, (i + 1) * batch_size)
        mask = index < split.size
        batch = split.batch(np.where(mask, index, 0))
        batch["mask"] = parallel.put_sharded(mask.astype(np.float32), split.mesh)
        out = eval_step(state, batch)
        totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
    totals = jax.device_get(totals)
    count = max(float(totals["count"]), 1.0)
    return {"loss": float(totals["loss_sum"]) / count, "acc": float(totals["correct"]) / count}


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


def search_data(config: ml_collections.ConfigDict, dataset: data_lib.Dataset, method: methods.Method):
    """(weight split, architecture split, evaluation split and its name) for this kind of search.

    Bi-level: the DARTS split of the training set; the architecture split is also scored each epoch.
    Single level: every training image trains both weights and α; the test set is scored each epoch.
    """
    if method.optimization == "single_level":
        train = (dataset.train_images, dataset.train_labels)
        return train, train, (dataset.test_images, dataset.test_labels), "test"
    train, valid = data_lib.search_split(dataset, config.data.train_portion)
    return train, valid, valid, "valid"


def run(config: ml_collections.ConfigDict, workdir: str, dataset: data_lib.Dataset | None = None) -> dict:
    """A whole search; writes metrics.jsonl, genotype.json and plots/ into `workdir`."""
    mesh = parallel.make_mesh()
    parallel.check_batch_size(config.batch_size, mesh)
    if dataset is None:
        dataset = data_lib.load(config.data)
    space = spaces.get(config.space, **config.space_options.to_dict())
    method = methods.build(config, space)
    (train_x, train_y), (valid_x, valid_y), (eval_x, eval_y), eval_name = search_data(config, dataset, method)
    steps_per_epoch = len(train_y) // config.batch_size
    if steps_per_epoch == 0 or len(valid_y) < config.batch_size or len(eval_y) == 0:
        raise UserError(
            f"config.batch_size={config.batch_size} is larger than a search split ({len(train_y)} images for "
            f"the weights, {len(valid_y)} for the architecture); lower it, or give more data "
            "(config.data.synthetic_size for synthetic data)")
    if config.max_steps_per_epoch > 0:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
    lookup = benchmark_lookup(config)
    logging.info("search: %s on %s, %s (%s), %d x %d steps, %d devices", config.method, config.space,
                 dataset.name, dataset.source, config.num_epochs, steps_per_epoch, mesh.size)

    single_level = method.optimization == "single_level"
    train_split = DeviceSplit(train_x, train_y, mesh)
    valid_split = train_split if single_level else DeviceSplit(valid_x, valid_y, mesh)
    eval_split = valid_split if eval_name == "valid" else DeviceSplit(eval_x, eval_y, mesh)

    os.makedirs(os.path.join(workdir, "plots"), exist_ok=True)
    total_steps = config.num_epochs * steps_per_epoch
    progress = report.ProgressLine(total_steps, batch_size=config.batch_size)
    history = []
    batch = config.batch_size
    search, state, op_mask = None, None, None
    with report.MetricsWriter(os.path.join(workdir, "metrics.jsonl")) as writer:
        for stage_index, stage in enumerate(method.stages()):
            if stage.num_keep is not None and state is not None:
                op_mask = methods.prune_mask(jax.device_get(state["arch"]), op_mask, stage.num_keep,
                                             space.arch_shape)
            search = build(config, dataset.num_classes, steps_per_epoch, op_mask=op_mask,
                                             stage_index=stage_index)
            if state is None:
                state = init_state(search, jax.random.PRNGKey(config.seed), train_x.shape[1:])
            else:
                state = advance_stage(search, state, train_x.shape[1:], config.seed + stage_index)
                logging.info("stage %d: K=%d, %s", stage_index + 1, stage.partial_channels,
                             "all ops" if op_mask is None else f"{stage.num_keep} ops per edge")
            state = jax.device_put(state, parallel.replicated(mesh))
            step = make_step(search, mesh)
            eval_step = make_eval_step(search, mesh)
            for epoch in range(search.stage_start_epoch, search.stage_start_epoch + stage.num_epochs):
                state, entry = _run_epoch(search, state, step, eval_step, epoch, train_split, valid_split,
                                          eval_split, eval_name, progress, lookup)
                if len(method.stages()) > 1:
                    entry["stage"] = stage_index + 1
                writer.write(entry)
                history.append(entry)
                logging.info("epoch %d/%d train %.4f/%.3f %s %.4f/%.3f %s", epoch + 1, config.num_epochs,
                             entry["train_loss"], entry["train_acc"], eval_name, entry[f"{eval_name}_loss"],
                             entry[f"{eval_name}_acc"], entry["genotype"])

    record = genotype_record(search, state)
    if lookup:
        record["benchmark"] = lookup(record["genotype"])
    report.write_json(os.path.join(workdir, "genotype.json"), record)
    report.plot_mixing_weights({k: np.asarray(v) for k, v in record["mixing_weights"].items()},
                               search.space, os.path.join(workdir, "plots", "mixing_weights.png"),
                               title=f"{config.method} on {config.space}: {record['genotype']}")
    return {"genotype": record["genotype"], "history": history, "state": state}


def _run_epoch(search: Search, state: State, step, eval_step, epoch: int, train_split: DeviceSplit,
               valid_split: DeviceSplit, eval_split: DeviceSplit, eval_name: str, progress, lookup):
    config, batch, steps_per_epoch = search.config, search.config.batch_size, search.steps_per_epoch
    epoch_start = time.perf_counter()
    train_order = train_split.epoch_order(config.seed, epoch)
    # A fresh validation order each epoch, from a stream disjoint from the training one.
    valid_order = valid_split.epoch_order(config.seed + 1_000_003, epoch)
    step_metrics, compile_seconds, timed_from = [], 0.0, epoch_start
    first_of_stage = epoch == search.stage_start_epoch
    for i in range(steps_per_epoch):
        global_step = epoch * steps_per_epoch + i
        train_batch = train_split.batch(train_order[i * batch:(i + 1) * batch])
        if valid_split is train_split:
            valid_batch = train_batch  # single level: the step ignores it
        else:
            j = i % (valid_split.size // batch)
            valid_batch = valid_split.batch(valid_order[j * batch:(j + 1) * batch])
        state, metrics = step(state, train_batch, valid_batch)
        step_metrics.append(metrics)
        if first_of_stage and i == 0:
            jax.block_until_ready(metrics)
            compile_seconds = time.perf_counter() - epoch_start
            timed_from = time.perf_counter()
            progress.start(global_step + 1)
        elif (global_step + 1) % config.log_every_steps == 0 or i == steps_per_epoch - 1:
            last = jax.device_get(metrics)
            progress.update(global_step + 1, loss=float(last["train_loss"]), acc=float(last["train_acc"]))
    jax.block_until_ready(state)
    seconds = time.perf_counter() - epoch_start
    timed_steps = steps_per_epoch - (1 if first_of_stage else 0)
    timed_seconds = time.perf_counter() - timed_from
    means = {k: float(np.mean(v)) for k, v in
             jax.tree.map(lambda *xs: np.stack(xs), *jax.device_get(step_metrics)).items()}
    scores = evaluate_split(eval_step, state, eval_split, batch, config.eval_batches)
    record = genotype_record(search, state)
    entry = {
        "epoch": epoch + 1,
        "step": int((epoch + 1) * steps_per_epoch),
        "lr": means.pop("lr"),
        "train_loss": means.pop("train_loss"),
        "train_acc": means.pop("train_acc"),
        f"{eval_name}_loss": scores["loss"],
        f"{eval_name}_acc": scores["acc"],
        "genotype": record["genotype"],
        "seconds": seconds,
        "images_per_second": timed_steps * batch / timed_seconds if timed_steps else 0.0,
        **means,
        **(lookup(record["genotype"]) if lookup else {}),
    }
    if first_of_stage:
        entry["compile_seconds"] = compile_seconds
    return state, entry
