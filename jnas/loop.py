"""The epoch loop that searches (`jnas.search`) and training runs (`jnas.train`) share.

Both run epochs of one jitted, donated step over batches that are functions of (seed, epoch, step), and
both must survive preemption and numerical faults in the same way:

* the host syncs with the device only every `config.log_every_steps` steps, at checkpoints, when a signal
  asks to stop and at the end of an epoch; there the step metrics are fetched and checked;
* `guard_step` makes the step report whether its loss, gradient norms and new state are finite, and under
  `config.nan_policy="skip_step"` discard a step that is not (`NumericalFault` under "stop");
* checkpoints hold the state packed into one flat array per dtype (`pack_state`) plus the position in the
  epoch and the epoch's step metrics so far (`EpochProgress`), so a resumed run computes exactly what an
  uninterrupted one would;
* SIGTERM and SIGINT (`jnas.checkpoint.StopSignals`) stop the run after the current step with a checkpoint
  (`Preempted`, exit status `EXIT_PREEMPTED` from launch.py).

The two runs differ only in the step's arguments, in which parts of the state their flags watch, and in
what their checkpoints add (a search's stage and op mask).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import signal
import tempfile
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jnas import checkpoint as checkpoint_lib
from jnas import parallel, report
from jnas.errors import UserError

PyTree = Any
State = dict[str, Any]

# The exit status of a run stopped by SIGTERM or SIGINT after saving its checkpoint: sysexits.h's
# EX_TEMPFAIL ("try again later"). It differs from 143/130 (killed by the signal before anything was
# saved, also the status after a second signal) and from 1 (an error), so a job script can requeue on 75.
EXIT_PREEMPTED = 75
# Step metrics whose non-finite value is a numerical fault; the step returns them anyway.
FAULT_METRICS = ("train_loss", "grad_norm", "arch_grad_norm")


class Preempted(Exception):
    """The run stopped on a signal after saving a checkpoint; the same command resumes it."""

    def __init__(self, signum: int, step: int, directory: str):
        self.signum, self.step = signum, step
        super().__init__(
            f"stopped by {signal.Signals(signum).name} after step {step}; its checkpoint is in {directory}. "
            "Run the same command again to resume.")


class NumericalFault(UserError):
    """A non-finite value under `config.nan_policy="stop"`; no checkpoint holds the faulty state."""


# ------------------------------------------------------------------------------------------------------------
# The guarded step


def all_finite(tree: PyTree) -> jax.Array:
    """One bool: every float in `tree` is finite (integer leaves, the step count and keys, are skipped)."""
    flags = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(flags)) if flags else jnp.asarray(True)


def guard_step(step: Callable[..., tuple[State, dict]], state_flags: Mapping[str, tuple[str, str]],
               nan_policy: str) -> Callable[..., tuple[State, dict]]:
    """`step(state, *batches)` whose metrics also say whether its results are finite.

    The metrics gain one flag per entry of `state_flags` (flag -> (state key, what it holds): every value of
    that part of the new state finite, to name the part in the error), `finite` (the metrics and the whole new
    state finite) and `skipped`, so with the loss and gradient norms the step returns anyway the loop sees a
    fault at its next host sync, without a transfer per step. Under nan_policy="skip_step" a step that is
    not finite keeps the old state, except that the step counter advances (the schedule, data order and
    random numbers go on as if the step had happened), and reports `skipped` = 1; keeping both states alive
    for the select costs one more copy of the state in device memory.
    """
    skip = nan_policy == "skip_step"
    watched_parts = {part for part, _ in state_flags.values()}

    def guarded(state: State, *batches):
        new, metrics = step(state, *batches)
        flags = {flag: all_finite(new[part]) for flag, (part, _) in state_flags.items()}
        rest = {k: v for k, v in new.items() if k not in watched_parts}
        watched = [metrics[k] for k in FAULT_METRICS if k in metrics]
        ok = jnp.all(jnp.stack([*flags.values(), all_finite(rest), all_finite(watched)]))
        if skip:
            new = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, state)
            new = {**new, "step": state["step"] + 1}
        # Always present, so a run resumed under the other nan_policy has the same metrics in every step.
        skipped = jnp.logical_not(ok).astype(jnp.int32) if skip else jnp.zeros((), jnp.int32)
        return new, {**metrics, **flags, "finite": ok, "skipped": skipped}

    return guarded


# ------------------------------------------------------------------------------------------------------------
# The state in a checkpoint


def layout_digest(state: PyTree) -> str:
    """A fingerprint of the state's structure, shapes and dtypes (what `unpack_state` relies on)."""
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    text = "\n".join(f"{jax.tree_util.keystr(path)} {tuple(leaf.shape)} {np.dtype(leaf.dtype).name}"
                     for path, leaf in leaves)
    return hashlib.sha256(text.encode()).hexdigest()


def packed_template(state: PyTree, mesh: jax.sharding.Mesh) -> dict[str, jax.ShapeDtypeStruct]:
    """The shapes of `pack_state(state)`, replicated over `mesh`: what a restore reads into."""
    sizes: dict[str, int] = {}
    for leaf in jax.tree.leaves(state):
        name = np.dtype(leaf.dtype).name
        sizes[name] = sizes.get(name, 0) + int(np.prod(leaf.shape))
    sharding = parallel.replicated(mesh)
    return {name: jax.ShapeDtypeStruct((size,), np.dtype(name), sharding=sharding) for name, size in sizes.items()}


def pack_state(host_state: PyTree, mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    """The state as one flat array per dtype, in leaf order: what a checkpoint holds.

    Orbax spends milliseconds on each array, and a DARTS-space search state has 4,666 (16 MB): saved as
    they are, a checkpoint blocked the loop for 6-11 s and took 21 s to restore (2-core CPU, 4 simulated
    devices); packed, 0.3-0.5 s and 0.9 s. The packing runs on the host (an XLA program of thousands of
    slices takes minutes to compile); the checkpoint's extra holds a digest of the state's structure.
    """
    parts: dict[str, list[np.ndarray]] = {}
    for leaf in jax.tree.leaves(host_state):
        parts.setdefault(np.dtype(leaf.dtype).name, []).append(np.ravel(leaf))
    return {name: parallel.put_replicated(np.concatenate(arrays), mesh) for name, arrays in parts.items()}


def unpack_state(packed: dict[str, jax.Array], template: PyTree, mesh: jax.sharding.Mesh) -> PyTree:
    """The inverse of `pack_state`: arrays shaped and arranged as `template`, replicated over `mesh`."""
    flat = {name: np.asarray(jax.device_get(array)) for name, array in packed.items()}
    offsets = dict.fromkeys(flat, 0)
    leaves, treedef = jax.tree.flatten(template)
    arrays = []
    for leaf in leaves:
        name, size = np.dtype(leaf.dtype).name, int(np.prod(leaf.shape))
        arrays.append(parallel.put_replicated(flat[name][offsets[name]:offsets[name] + size].reshape(leaf.shape),
                                              mesh))
        offsets[name] += size
    return jax.tree.unflatten(treedef, arrays)


def restore_state(ckpt: checkpoint_lib.Checkpointer, state_shapes: Callable[[dict], PyTree],
                  steps_per_epoch: int, mesh: jax.sharding.Mesh, what: str) -> tuple[PyTree, dict] | None:
    """(state, extra) of the newest readable checkpoint in `ckpt`, or None when there is none.

    `state_shapes(extra)` gives the state's shapes for a checkpoint's `extra` (a progressive search's shapes
    depend on its stage); `what` names the state in errors ("search state").
    """
    def mismatch(why: str) -> UserError:
        return UserError(f"the checkpoints in {ckpt.directory} do not fit this config ({why}); resume with the "
                         "config recorded in the workdir's config.json, or give a fresh --workdir")

    try:
        restored = ckpt.restore_latest(lambda extra: packed_template(state_shapes(extra), mesh))
    except ValueError as e:
        raise mismatch(str(e)) from None
    if restored is None:
        return None
    packed, extra = restored
    shapes = state_shapes(extra)
    if extra.get("state_layout") != layout_digest(shapes):
        raise mismatch(f"the arrays of the {what} differ in names or shapes")
    if extra["steps_per_epoch"] != steps_per_epoch:
        raise UserError(
            f"the checkpoints in {ckpt.directory} were written with {extra['steps_per_epoch']} steps per epoch, "
            f"this config gives {steps_per_epoch}: restore config.batch_size, config.max_steps_per_epoch and "
            "the data of that run, or give a fresh --workdir")
    return unpack_state(packed, shapes, mesh), extra


# ------------------------------------------------------------------------------------------------------------
# metrics.jsonl


def rewrite_metrics(path: str, history: list[dict]) -> None:
    """metrics.jsonl holding exactly `history`, replaced atomically (a kill leaves the old or the new)."""
    if jax.process_index() != 0:
        return
    folder = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".metrics.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        for entry in history:
            f.write(json.dumps(entry) + "\n")
    os.replace(tmp, path)


class _MetricsRecord:
    """`report.MetricsWriter` without the file: the metrics line each process keeps in its history."""

    def __enter__(self) -> "_MetricsRecord":
        return self

    def __exit__(self, *exc_info) -> None:
        pass

    def write(self, record: dict) -> dict:
        return report.to_json_value(dict(record))


def metrics_writer(path: str) -> report.MetricsWriter | _MetricsRecord:
    """Appends to metrics.jsonl on process 0 only: on a shared filesystem the other processes would write
    each line again. Every process gets the written line back for its history."""
    return report.MetricsWriter(path) if jax.process_index() == 0 else _MetricsRecord()


# ------------------------------------------------------------------------------------------------------------
# The loop


@dataclasses.dataclass
class EpochProgress:
    """The part of an epoch before a checkpoint: steps taken, their metrics (host values), seconds."""

    position: int = 0
    metrics: dict[str, list] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0

    @classmethod
    def from_extra(cls, extra: Mapping[str, Any]) -> "EpochProgress":
        return cls(extra["position"], extra["epoch_metrics"], extra["epoch_seconds"])


@dataclasses.dataclass
class EpochSteps:
    """What the steps of one epoch gave: the state after them and the metrics of every step of the epoch
    (host values, those from before a resume included)."""

    state: State
    metrics: list[dict]
    seconds: float  # the whole epoch's, the part before a resume included
    compile_seconds: float | None  # when the epoch's first step compiled the step function
    images_per_second: float  # over the steps after the first, when there were any
    flags: frozenset[str] = frozenset({"finite", "skipped"})  # the guard's flags among the metrics

    def means(self, drop: Sequence[str] = ()) -> dict[str, float]:
        """Each metric's mean over the epoch, `drop`ped names and the fault flags left out; under skip_step
        over the steps that were kept (over all when none was)."""
        skipped = self.skipped_per_step()
        kept = skipped == 0 if np.any(skipped == 0) else np.ones(len(self.metrics), bool)
        names = [k for k in self.metrics[0] if k not in drop and k not in self.flags]
        return {k: float(np.mean(np.asarray([m[k] for m in self.metrics], np.float64)[kept])) for k in names}

    def skipped_per_step(self) -> np.ndarray:
        return np.asarray([int(m.get("skipped", 0)) for m in self.metrics], np.int64)


@dataclasses.dataclass
class EpochLoop:
    """What every epoch of a run shares: outputs, checkpoints, signals and the numerical guard.

    Attributes:
      state_flags: the flags `guard_step` adds to the step metrics (flag -> (state key, what it holds)).
      lr_advice: the learning-rate keys to lower after a numerical fault.
      checkpoint_fields: gives what the run adds to each checkpoint's extra (a search's stage and op mask).
      history: the metrics lines of the finished epochs (saved with each checkpoint).
      fresh_step: the next call of the step function compiles it (its time is not a step's).
    """

    config: ml_collections.ConfigDict
    ckpt: checkpoint_lib.Checkpointer
    signals: checkpoint_lib.StopSignals
    progress: report.ProgressLine
    steps_per_epoch: int
    mesh: jax.sharding.Mesh
    state_flags: Mapping[str, tuple[str, str]]
    lr_advice: str
    checkpoint_fields: Callable[[], dict] = dict
    history: list = dataclasses.field(default_factory=list)
    fresh_step: bool = True

    @property
    def nan_policy(self) -> str:
        return self.config.get("nan_policy", "stop")

    def save(self, state: State, epoch: int, progress: EpochProgress) -> None:
        """Checkpoint `state`, taken `progress.position` steps into epoch `epoch` (0-based).

        Blocks only for the copy of the state to host memory and its packing (the step donates the state's
        buffers); the files are written in the background. Only checked states get here: `check` has seen
        the `finite` flag of every step before it.
        """
        step = epoch * self.steps_per_epoch + progress.position
        start = time.perf_counter()
        host = jax.device_get(state)
        extra = {
            "epoch": epoch,
            "position": progress.position,
            "steps_per_epoch": self.steps_per_epoch,
            **self.checkpoint_fields(),
            "history": self.history,
            "epoch_metrics": progress.metrics,
            "epoch_seconds": progress.seconds,
            "state_layout": layout_digest(host),
        }
        if self.ckpt.save(step, pack_state(host, self.mesh), extra):
            logging.info("checkpoint of step %d started (%.3f s in the loop)", step, time.perf_counter() - start)

    def check(self, metrics: list[dict], first_step: int, epoch: int) -> None:
        """Raise NumericalFault for the first faulty step of `metrics` (host values of the steps from
        `first_step`, 0-based) under nan_policy="stop"; under "skip_step" warn about skipped steps."""
        if self.nan_policy == "skip_step":
            skipped = sum(int(m.get("skipped", 0)) for m in metrics)
            if skipped:
                logging.warning("skipped %d step(s) with non-finite values before step %d (epoch %d)",
                                skipped, first_step + len(metrics), epoch + 1)
            return
        for n, m in enumerate(metrics):
            bad = [f"{k}={float(m[k])}" for k in FAULT_METRICS if k in m and not np.isfinite(m[k])]
            bad += [what for flag, (_, what) in self.state_flags.items() if not m.get(flag, True)]
            if bad or not m.get("finite", True):
                bad = bad or ["weights, BatchNorm statistics or weight optimizer state"]
                step = first_step + n + 1
                raise NumericalFault(
                    f"non-finite {', '.join(bad)} in step {step} (epoch {epoch + 1}, its step "
                    f"{step - epoch * self.steps_per_epoch} of {self.steps_per_epoch}); {self.fault_advice()}")

    def fault_advice(self) -> str:
        latest = self.ckpt.latest_step()
        kept = (f"the newest checkpoint (step {latest} in {self.ckpt.directory}) is from before the fault"
                if latest is not None else "no checkpoint was written before it")
        return (f"the run stopped without saving this state and {kept}. Lower {self.lr_advice} (or set "
                "config.optimizer.grad_clip), then resume with --config.resume=force; or set "
                "--config.nan_policy=skip_step to discard such steps")

    def run_steps(self, state: State, step: Callable[..., tuple[State, dict]], batches: Sequence[Iterator],
                  epoch: int, progress: EpochProgress) -> EpochSteps:
        """Epoch `epoch`'s steps from `progress.position` on: `state, metrics = step(state, *next batches)`.

        Saves a checkpoint every `config.checkpoint_every_steps` steps inside the epoch and raises
        `Preempted` after saving when a signal asks to stop (the epoch's last step is answered by
        `end_epoch`, after the epoch's metrics line). The batch iterators are closed on every way out, so
        a host pipeline ends its worker processes.
        """
        config, steps_per_epoch = self.config, self.steps_per_epoch
        started = time.perf_counter()
        host = [dict(zip(progress.metrics, values)) for values in zip(*progress.metrics.values())]
        pending: list[dict] = []  # device metrics of the steps since the last sync
        compile_seconds, timed_from, timed_steps = None, started, 0
        every = config.get("checkpoint_every_steps", 0)

        def sync(done: int) -> None:
            values = jax.device_get(pending)
            self.check(values, done - len(values), epoch)
            host.extend({k: np.asarray(v).item() for k, v in m.items()} for m in values)
            pending.clear()

        def carried(done_in_epoch: int) -> EpochProgress:
            metrics = {k: [m[k] for m in host] for k in (host[0] if host else {})}
            return EpochProgress(done_in_epoch, metrics, progress.seconds + time.perf_counter() - started)

        with contextlib.ExitStack() as open_batches:
            for iterator in batches:
                open_batches.callback(iterator.close)
            for i in range(progress.position, steps_per_epoch):
                state, metrics = step(state, *(next(iterator) for iterator in batches))
                pending.append(metrics)
                done, last = epoch * steps_per_epoch + i + 1, i == steps_per_epoch - 1
                if self.fresh_step:
                    self.fresh_step = False
                    jax.block_until_ready(metrics)
                    compile_seconds = time.perf_counter() - started
                    timed_from = time.perf_counter()
                    self.progress.start(done)
                else:
                    timed_steps += 1
                log_now = done % config.log_every_steps == 0 or last
                save_now = every > 0 and done % every == 0 and not last
                stop_now = self.signals.requested(sync=log_now or save_now) and not last
                if log_now or save_now or stop_now:
                    sync(done)
                    if log_now:
                        self.progress.update(done, loss=host[-1]["train_loss"], acc=host[-1]["train_acc"])
                if save_now or stop_now:
                    self.save(state, epoch, carried(i + 1))
                if stop_now:
                    raise Preempted(self.signals.signum, done, str(self.ckpt.directory))
        sync((epoch + 1) * steps_per_epoch)
        jax.block_until_ready(state)
        timed_seconds = time.perf_counter() - timed_from
        return EpochSteps(
            state=state, metrics=host, seconds=progress.seconds + time.perf_counter() - started,
            compile_seconds=compile_seconds,
            images_per_second=timed_steps * config.batch_size / timed_seconds if timed_steps else 0.0,
            flags=frozenset({"finite", "skipped", *self.state_flags}))

    def end_epoch(self, state: State, epoch: int, save: bool, final: bool) -> None:
        """After epoch `epoch`'s metrics line: checkpoint when `save` or a signal asks to stop, then raise
        `Preempted` for the signal, unless this was the run's `final` epoch (the run just finishes)."""
        stop = self.signals.requested(sync=True) and not final
        if save or stop:
            self.save(state, epoch + 1, EpochProgress())
        if stop:
            raise Preempted(self.signals.signum, (epoch + 1) * self.steps_per_epoch, str(self.ckpt.directory))
