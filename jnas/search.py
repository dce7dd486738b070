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
    """Everything the step closes over: static structure, never arrays that change."""

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


def build(config: ml_collections.ConfigDict, num_classes: int, steps_per_epoch: int) -> Search:
    space = spaces.get(config.space, **config.space_options.to_dict())
    method = methods.get(config.method)
    model = supernet_lib.build_supernet(space, config.model, num_classes)
    schedule = optim.epoch_cosine_schedule(
        config.optimizer.lr, config.optimizer.min_lr, config.num_epochs, steps_per_epoch,
        config.optimizer.epoch_offset)
    mean, std = data_lib.normalization(config.data.name, config.data.normalization)
    return Search(config=config, space=space, method=method, model=model, num_classes=num_classes,
                  steps_per_epoch=steps_per_epoch, schedule=schedule,
                  weight_tx=optim.weight_optimizer(config.optimizer, schedule),
                  arch_tx=optim.arch_optimizer(config.arch_optimizer), mean=mean, std=std)


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
        arch = search.method.init_arch(k_arch, search.space, search.config)
        dummy = jnp.zeros((1, *image_shape), jnp.float32)
        weights = search.method.mixing_weights(arch, k_arch, jnp.float32(0.0))
        k_params = jax.random.wrap_key_data(jax.random.bits(k_params, (4,), jnp.uint32), impl="rbg")
        variables = search.model.init({"params": k_params}, dummy, weights, train=False)
        params = variables["params"]
        return {
            "params": params,
            "batch_stats": variables.get("batch_stats", {}),
            "arch": arch,
            "w_opt": search.weight_tx.init(params),
            "a_opt": search.arch_tx.init(arch),
            "step": jnp.zeros((), jnp.int32),
            "rng": k_run,
        }

    return init(rng)


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels).mean()


def step_fn(search: Search) -> Callable[[State, Batch, Batch], tuple[State, dict[str, jax.Array]]]:
    """The pure bi-level search step (not yet jitted)."""
    config, method, model = search.config, search.method, search.model
    hg = config.hypergradient

    def loss(params, batch_stats, arch, images, labels, key, progress):
        weights = method.mixing_weights(arch, key, progress)
        logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, images, weights,
                                      train=True, mutable=["batch_stats"])
        return _cross_entropy(logits, labels), (updates["batch_stats"], logits)

    def arch_update(state, train, valid, key, progress, lr):
        # BatchNorm statistics of these extra passes are discarded: the references use running
        # statistics only in their evaluation pass, and the weight pass below updates them.
        def train_loss(p, a, batch):
            return loss(p, state["batch_stats"], a, *batch, key, progress)[0]

        def val_loss(p, a, batch):
            return loss(p, state["batch_stats"], a, *batch, key, progress)[0] + method.regularizer(a)

        if hg.kind == "first_order":
            grads = hypergrad.first_order(val_loss, state["params"], state["arch"], valid)
        else:
            grads = hypergrad.darts_second_order(
                train_loss, val_loss, state["params"], state["arch"], train, valid, lr=lr,
                momentum_buffer=optim.momentum_buffer(state["w_opt"]),
                momentum=config.optimizer.momentum, weight_decay=config.optimizer.weight_decay,
                hvp=hg.hvp, fd_radius=hg.fd_radius)
        updates, a_opt = search.arch_tx.update(grads, state["a_opt"], state["arch"])
        arch = optax.apply_updates(state["arch"], updates)
        return {**state, "arch": arch, "a_opt": a_opt}, {"arch_grad_norm": optim.global_norm(grads)}

    def weight_update(state, train, key, progress):
        (value, (batch_stats, logits)), grads = jax.value_and_grad(loss, has_aux=True)(
            state["params"], state["batch_stats"], state["arch"], *train, key, progress)
        updates, w_opt = search.weight_tx.update(grads, state["w_opt"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = {
            "train_loss": value,
            "train_acc": jnp.mean(jnp.argmax(logits, -1) == train[1]),
            "grad_norm": optim.global_norm(grads),
        }
        return {**state, "params": params, "batch_stats": batch_stats, "w_opt": w_opt}, metrics

    def step(state: State, train_batch: Batch, valid_batch: Batch):
        step_index = state["step"]
        epoch = step_index // search.steps_per_epoch
        progress = epoch.astype(jnp.float32) / config.num_epochs
        lr = search.schedule(step_index)
        k_aug_train, k_aug_valid, k_arch, k_weights = jax.random.split(
            jax.random.fold_in(state["rng"], step_index), 4)
        # Both splits get the training augmentation, as in every reference (methods.md §11.16).
        train = (data_lib.augment(k_aug_train, train_batch["image"], search.mean, search.std),
                 train_batch["label"])
        valid = (data_lib.augment(k_aug_valid, valid_batch["image"], search.mean, search.std),
                 valid_batch["label"])

        def arch_phase(s):
            if config.arch_warmup_epochs <= 0:
                return arch_update(s, train, valid, k_arch, progress, lr)
            return jax.lax.cond(
                epoch >= config.arch_warmup_epochs,
                lambda s: arch_update(s, train, valid, k_arch, progress, lr),
                lambda s: (s, {"arch_grad_norm": jnp.zeros((), jnp.float32)}), s)

        if config.update_order == "arch_first":
            state, arch_metrics = arch_phase(state)
            state, weight_metrics = weight_update(state, train, k_weights, progress)
        else:
            state, weight_metrics = weight_update(state, train, k_weights, progress)
            state, arch_metrics = arch_phase(state)
        state = {**state, "step": step_index + 1}
        return state, {**weight_metrics, **arch_metrics, "lr": lr}

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
        progress = (state["step"] // search.steps_per_epoch).astype(jnp.float32) / search.config.num_epochs
        weights = method.mixing_weights(state["arch"], state["rng"], progress)
        logits = model.apply({"params": state["params"], "batch_stats": state["batch_stats"]},
                             images, weights, train=False)
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
    genotype = search.method.derive(arch, search.space)
    return {
        "space": search.config.space,
        "method": search.config.method,
        "genotype": genotype.to_string(),
        "arch_params": {k: np.asarray(v).tolist() for k, v in arch.items()},
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


def run(config: ml_collections.ConfigDict, workdir: str, dataset: data_lib.Dataset | None = None) -> dict:
    """A whole search; writes metrics.jsonl, genotype.json and plots/ into `workdir`."""
    mesh = parallel.make_mesh()
    parallel.check_batch_size(config.batch_size, mesh)
    if dataset is None:
        dataset = data_lib.load(config.data)
    (train_x, train_y), (valid_x, valid_y) = data_lib.search_split(dataset, config.data.train_portion)
    steps_per_epoch = len(train_y) // config.batch_size
    if steps_per_epoch == 0 or len(valid_y) < config.batch_size:
        raise UserError(
            f"config.batch_size={config.batch_size} is larger than a search split ({len(train_y)} images for "
            f"the weights, {len(valid_y)} for the architecture); lower it, or give more data "
            "(config.data.synthetic_size for synthetic data)")
    if config.max_steps_per_epoch > 0:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
    search = build(config, dataset.num_classes, steps_per_epoch)
    lookup = benchmark_lookup(config)
    logging.info("search: %s on %s, %s (%s), %d x %d steps, %d devices", config.method, config.space,
                 dataset.name, dataset.source, config.num_epochs, steps_per_epoch, mesh.size)

    train_split = DeviceSplit(train_x, train_y, mesh)
    valid_split = DeviceSplit(valid_x, valid_y, mesh)
    state = jax.device_put(init_state(search, jax.random.PRNGKey(config.seed), train_x.shape[1:]),
                           parallel.replicated(mesh))
    step = make_step(search, mesh)
    eval_step = make_eval_step(search, mesh)

    os.makedirs(os.path.join(workdir, "plots"), exist_ok=True)
    total_steps = config.num_epochs * steps_per_epoch
    progress = report.ProgressLine(total_steps, batch_size=config.batch_size)
    history = []
    batch = config.batch_size
    with report.MetricsWriter(os.path.join(workdir, "metrics.jsonl")) as writer:
        for epoch in range(config.num_epochs):
            epoch_start = time.perf_counter()
            train_order = train_split.epoch_order(config.seed, epoch)
            # A fresh validation order each epoch, from a stream disjoint from the training one.
            valid_order = valid_split.epoch_order(config.seed + 1_000_003, epoch)
            step_metrics, compile_seconds, timed_from = [], 0.0, epoch_start
            for i in range(steps_per_epoch):
                global_step = epoch * steps_per_epoch + i
                train_batch = train_split.batch(train_order[i * batch:(i + 1) * batch])
                j = i % (valid_split.size // batch)
                valid_batch = valid_split.batch(valid_order[j * batch:(j + 1) * batch])
                state, metrics = step(state, train_batch, valid_batch)
                step_metrics.append(metrics)
                if global_step == 0:
                    jax.block_until_ready(metrics)
                    compile_seconds = time.perf_counter() - epoch_start
                    timed_from = time.perf_counter()
                    progress.start(global_step + 1)
                elif (global_step + 1) % config.log_every_steps == 0 or i == steps_per_epoch - 1:
                    last = jax.device_get(metrics)
                    progress.update(global_step + 1, loss=float(last["train_loss"]),
                                    acc=float(last["train_acc"]))
            jax.block_until_ready(state)
            seconds = time.perf_counter() - epoch_start
            timed_steps = steps_per_epoch - (1 if epoch == 0 else 0)
            timed_seconds = time.perf_counter() - timed_from
            means = {k: float(np.mean(v)) for k, v in
                     jax.tree.map(lambda *xs: np.stack(xs), *jax.device_get(step_metrics)).items()}
            valid = evaluate_split(eval_step, state, valid_split, batch, config.eval_batches)
            record = genotype_record(search, state)
            entry = {
                "epoch": epoch + 1,
                "step": int((epoch + 1) * steps_per_epoch),
                "lr": means.pop("lr"),
                "train_loss": means.pop("train_loss"),
                "train_acc": means.pop("train_acc"),
                "valid_loss": valid["loss"],
                "valid_acc": valid["acc"],
                "genotype": record["genotype"],
                "seconds": seconds,
                "images_per_second": timed_steps * batch / timed_seconds if timed_steps else 0.0,
                **means,
                **(lookup(record["genotype"]) if lookup else {}),
            }
            if epoch == 0:
                entry["compile_seconds"] = compile_seconds
            writer.write(entry)
            history.append(entry)
            logging.info("epoch %d/%d train %.4f/%.3f valid %.4f/%.3f %s", epoch + 1, config.num_epochs,
                         entry["train_loss"], entry["train_acc"], entry["valid_loss"], entry["valid_acc"],
                         entry["genotype"])

    record = genotype_record(search, state)
    if lookup:
        record["benchmark"] = lookup(record["genotype"])
    report.write_json(os.path.join(workdir, "genotype.json"), record)
    report.plot_mixing_weights({k: np.asarray(v) for k, v in record["mixing_weights"].items()},
                               search.space, os.path.join(workdir, "plots", "mixing_weights.png"),
                               title=f"{config.method} on {config.space}: {record['genotype']}")
    return {"genotype": record["genotype"], "history": history, "state": state}
