"""Checkpoints of the search state: the only module that talks to orbax.

A checkpoint is one orbax step directory `<workdir>/checkpoints/<step>/` with two items: `state`, the
search state pytree (arrays, written with `StandardSave`), and `extra`, a JSON dict of everything a
resumed run needs besides arrays (epoch, position in the data order, a method's stage index and masks,
the metrics history).

Saving is asynchronous: `save` returns once the arrays are copied to host memory, so the state's device
buffers may be donated to the next step right away, and the files are written in the background.
`wait()` blocks until they are committed; `close()` (or leaving the `with` block) waits and releases
orbax's threads, and must run before the process exits.

A checkpoint that cannot be read back (a killed or failed write, truncated or deleted files) is skipped
with a warning and the next older one is used. Orbax never lists an unfinished write: it writes into
`<step>.orbax-checkpoint-tmp-<time>` and renames that to `<step>` as its last act (on GCS it writes
`commit_success.txt` last instead); such leftovers are reported and removed when a `Checkpointer` opens
the directory. A finished step that fails to read is renamed to `<step>.corrupt` (kept for inspection,
no longer counted by orbax), so the resumed run can save that step again and the last good checkpoint is
never the one retention deletes.

Every method is called by every process of a multi-process run; orbax picks the primary process for the
writes that only one may do.

`StopSignals` turns SIGTERM and SIGINT into a request to checkpoint and stop at the next step boundary;
searches and training runs both use it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from typing import Any, Callable, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

PyTree = Any
Template = PyTree | Callable[[dict], PyTree]

CHECKPOINT_DIR = "checkpoints"
_STATE, _EXTRA = "state", "extra"
_COMMIT_FILE = ocp.path.atomicity.COMMIT_SUCCESS_FILE
_CORRUPT_SUFFIX = ".corrupt"


class Checkpointer:
    """Saves and restores `(state, extra)` under `<workdir>/checkpoints`, keeping the `keep` newest.

    Use it as a context manager so pending writes finish before the process exits:

        with Checkpointer(workdir, keep=3) as ckpt:
            restored = ckpt.restore_latest(lambda extra: template_for(extra))
            ...
            ckpt.save(step, state, {"epoch": epoch, "history": history})
    """

    def __init__(self, workdir: str | os.PathLike, keep: int = 3, async_save: bool = True):
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep={keep!r} must be a positive int: the number of newest checkpoints to keep")
        # epath, as orbax uses: local paths and gs:// alike.
        self.directory = epath.Path(workdir) / CHECKPOINT_DIR
        _warn_unfinished_writes(self.directory)
        registry = ocp.handlers.create_default_handler_registry(
            **{_STATE: ocp.StandardCheckpointHandler(), _EXTRA: ocp.JsonCheckpointHandler()})
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(n=keep),
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
            create=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options, handler_registry=registry)
        self._barrier_count = 0

    # -- lifetime -------------------------------------------------------------------------------------

    def wait(self) -> None:
        """Block until every started save is committed; raises the error of a failed background write."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Wait for pending saves and release orbax's background threads."""
        self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- queries --------------------------------------------------------------------------------------

    def steps(self) -> list[int]:
        """Steps of the finished checkpoints, oldest first (pending async saves included)."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest checkpoint's step (readable or not: only a restore reads it), None if there is none."""
        return self._manager.latest_step()

    # -- save -----------------------------------------------------------------------------------------

    def save(self, step: int, state: PyTree, extra: Mapping[str, Any]) -> bool:
        """Start writing `state` and `extra` as checkpoint `step`; returns before the files are written.

        `extra` must be JSON-serialisable (tuples come back as lists, dict keys as str). Saving a step
        that is already checkpointed does nothing and returns False (e.g. a SIGTERM right after the
        end-of-epoch save); a step older than the newest checkpoint is an error.
        """
        step = _as_step(step)
        if not isinstance(extra, Mapping):
            raise ValueError(f"extra must be a dict of JSON values, got {type(extra).__name__}")
        try:
            json.dumps(extra)
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"extra is not JSON-serialisable ({e}); convert numpy and jax values with float(), int() "
                "or .tolist() before saving") from e
        leaves = jax.tree_util.tree_flatten_with_path(state)[0]
        if not leaves:
            raise ValueError("the state to save has no arrays")
        for path, leaf in leaves:
            # Restoring needs a jax.Array template for every leaf, so only jax.Arrays are saved.
            if not isinstance(leaf, jax.Array):
                raise ValueError(
                    f"state leaf {jax.tree_util.keystr(path)} is a {type(leaf).__name__}; a checkpointed "
                    "state holds only jax.Arrays (jnp.asarray it, or put plain values into `extra`)")
        latest = self.latest_step()
        if latest is not None and step == latest:
            logging.info("checkpoint for step %d already exists in %s: not saved again", step, self.directory)
            return False
        if latest is not None and step < latest:
            raise ValueError(
                f"cannot save step {step}: {self.directory} already holds the newer step {latest}; "
                "resume from it (restore_latest) or use an empty workdir")
        # force=True: the caller decides when to save, orbax's save-interval policy does not.
        saved = self._manager.save(
            step,
            args=ocp.args.Composite(**{_STATE: ocp.args.StandardSave(state),
                                       _EXTRA: ocp.args.JsonSave(dict(extra))}),
            force=True)
        return bool(saved)

    # -- restore --------------------------------------------------------------------------------------

    def latest_extra(self) -> dict | None:
        """The `extra` dict of the newest readable checkpoint, without reading any array; None if none.

        For a state whose shapes depend on `extra` (a progressive method widened at a stage boundary),
        build the template from this; `restore_latest` also accepts a function `extra -> template`,
        which stays right when the newest checkpoint turns out to be unreadable.
        """
        self.wait()
        for step in sorted(self._manager.all_steps(), reverse=True):
            extra, error = self._read_extra(step)
            if self._all_processes_ok(error is None):
                return extra
            self._set_aside(step, error)
        return None

    def restore_latest(self, template: Template) -> tuple[PyTree, dict] | None:
        """`(state, extra)` of the newest readable checkpoint, or None when there is none.

        `template` is a state pytree (jax.Arrays, or jax.ShapeDtypeStructs with a sharding) or a
        function `extra -> such a pytree`, called with each candidate checkpoint's `extra`. The restored
        state has the template's structure, shapes, dtypes and shardings (replicated arrays come back
        replicated over the same mesh). Unreadable checkpoints are skipped with a warning; a readable
        one whose arrays differ from the template raises ValueError.
        """
        self.wait()
        for step in sorted(self._manager.all_steps(), reverse=True):
            extra, error = self._read_extra(step)
            saved = abstract = None
            if error is None:
                abstract = _abstract_template(template(extra) if callable(template) else template)
                saved, error = self._read_array_metadata(step)
            if self._all_processes_ok(error is None):
                # Only a readable checkpoint is compared with the template: a mismatch is the
                # caller's mistake and must not cost a good checkpoint.
                _check_matches(step, saved, abstract)
                state, error = self._read_state(step, abstract)
                if self._all_processes_ok(error is None):
                    logging.info("restored checkpoint step %d from %s", step, self.directory)
                    return state, extra
            self._set_aside(step, error)
        return None

    # -- internals ------------------------------------------------------------------------------------

    def _step_dir(self, step: int) -> epath.Path:
        return self.directory / str(step)

    def _read_extra(self, step: int) -> tuple[dict | None, str | None]:
        """(extra, None), or (None, why the checkpoint is unusable)."""
        if not (self._step_dir(step) / _COMMIT_FILE).exists():
            return None, f"{_COMMIT_FILE} is missing: the write did not finish"
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(**{_EXTRA: ocp.args.JsonRestore()}))
            extra = restored[_EXTRA]
        except Exception as e:  # noqa: BLE001 - any failure to read means the files are damaged
            _reraise_if_resource_error(e)
            return None, _describe(e)
        if not isinstance(extra, dict):
            return None, f"its {_EXTRA} item is a {type(extra).__name__}, not a dict"
        return extra, None

    def _read_array_metadata(self, step: int) -> tuple[dict | None, str | None]:
        """({path: (shape, dtype)} of the saved arrays, None), or (None, why unusable)."""
        try:
            metadata = self._manager.metadata(step).item_metadata[_STATE]
        except Exception as e:  # noqa: BLE001
            _reraise_if_resource_error(e)
            return None, _describe(e)
        if metadata is None:
            return None, f"the {_STATE} item has no readable metadata"
        tree = getattr(metadata, "tree", metadata)
        saved = {}
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
                return None, f"metadata of {_path_name(path)} has no shape/dtype ({leaf!r})"
            saved[_path_name(path)] = (tuple(leaf.shape), np.dtype(leaf.dtype))
        return saved, None

    def _read_state(self, step: int, abstract: PyTree) -> tuple[PyTree | None, str | None]:
        try:
            restored = self._manager.restore(
                step, args=ocp.args.Composite(**{_STATE: ocp.args.StandardRestore(abstract)}))
            state = restored[_STATE]
            # Reading is lazy in places; a damaged chunk must fail here, not in the first step.
            jax.block_until_ready(state)
        except Exception as e:  # noqa: BLE001
            _reraise_if_resource_error(e)
            return None, _describe(e)
        return state, None

    def _all_processes_ok(self, ok: bool) -> bool:
        """True only if `ok` holds on every process, so all processes take the same branch."""
        if jax.process_count() == 1:
            return ok
        oks = multihost_utils.process_allgather(np.asarray(ok, np.int32))
        return bool(np.all(oks))

    def _set_aside(self, step: int, reason: str | None) -> None:
        """Rename an unreadable step out of orbax's view; warn."""
        source = self._step_dir(step)
        target, k = self.directory / f"{step}{_CORRUPT_SUFFIX}", 1
        while target.exists():
            target, k = self.directory / f"{step}{_CORRUPT_SUFFIX}-{k}", k + 1
        logging.warning(
            "checkpoint step %d in %s is unreadable (%s); skipping it and moving it to %s",
            step, self.directory, reason or "failed on another process", target.name)
        if ocp.multihost.is_primary_host(0):
            try:
                source.rename(target)
            except OSError as e:
                logging.error("could not move unreadable checkpoint %s aside (%s); saving step %d "
                              "again will be skipped until it is removed", source, e, step)
        self._barrier_count += 1
        ocp.multihost.sync_global_processes(f"jnas_checkpoint_set_aside_{step}_{self._barrier_count}")
        self._manager.reload()


class StopSignals:
    """SIGTERM and SIGINT ask the loop to stop after the current step; a second one exits at once.

    The previous handlers come back on leaving the `with` block. Handlers can only be installed from the
    main thread; elsewhere (a run started from a worker thread) signals keep their previous meaning.
    In a multi-process run a signal may reach only some processes: `requested(sync=True)` makes all of
    them agree (any process signalled means stop), at points every process reaches at the same step.

        with StopSignals() as signals:
            for step in ...:
                ...
                if signals.requested(sync=at_a_step_every_process_reaches):
                    save a checkpoint; raise jnas.loop.Preempted(signals.signum, step, directory)
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self._agreed = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:
            # Pending checkpoint writes are abandoned; orbax ignores and removes their temporary folders.
            os.write(2, f"\n{name} again: exiting now, without saving\n".encode())
            os._exit(128 + signum)
        self.signum = signum
        logging.warning("%s: stopping after the current step with a checkpoint (send it again to exit at "
                        "once, without saving)", name)

    def requested(self, sync: bool) -> bool:
        """Whether to stop now. With several processes the answer only changes at `sync` points, which
        must be the same steps on every process (a cheap all-gather of one flag there)."""
        if jax.process_count() == 1:
            return self.signum is not None
        if sync and not self._agreed:
            flags = multihost_utils.process_allgather(np.asarray(self.signum is not None, np.int32))
            self._agreed = bool(np.any(flags))
            if self._agreed and self.signum is None:
                self.signum = signal.SIGTERM  # another process was signalled
        return self._agreed


def _as_step(step: Any) -> int:
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise ValueError(f"step={step!r} must be a non-negative int (e.g. int(state['step']))")
    return int(step)


def _warn_unfinished_writes(directory: epath.Path) -> None:
    if not directory.is_dir():
        return
    names = sorted(p.get().name for p in ocp.step.all_temporary_paths(directory))
    if names:
        logging.warning("%s holds unfinished checkpoint writes %s (a run was killed while saving); "
                        "they are ignored and removed", directory, names)


def _path_name(path: tuple) -> str:
    """`a/0/mu/b` for dict keys, sequence indices and NamedTuple fields alike.

    Orbax stores tuples as lists and NamedTuples as dicts, so the template and the saved metadata are
    compared by these names, not by tree structure.
    """
    return "/".join(ocp.tree.str_keypath(path))


def _abstract_template(template: PyTree) -> PyTree:
    """The template as ShapeDtypeStructs carrying the shardings the arrays are restored onto."""

    def abstract(path, leaf):
        if isinstance(leaf, jax.Array):
            return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
        if isinstance(leaf, jax.ShapeDtypeStruct) and leaf.sharding is not None:
            return leaf
        raise ValueError(
            f"template leaf {jax.tree_util.keystr(path)} is a {type(leaf).__name__}; give a jax.Array or "
            "a jax.ShapeDtypeStruct with a sharding (e.g. parallel.replicated(mesh)), so the restored "
            "array lands on the mesh")

    if not jax.tree_util.tree_leaves(template):
        raise ValueError("the restore template has no arrays; pass the state pytree (or a function "
                         "extra -> state pytree) to restore onto")
    return jax.tree_util.tree_map_with_path(abstract, template)


def _check_matches(step: int, saved: dict, abstract: PyTree) -> None:
    wanted = {_path_name(path): (tuple(leaf.shape), np.dtype(leaf.dtype))
              for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]}
    problems = []
    missing = sorted(set(wanted) - set(saved))
    unexpected = sorted(set(saved) - set(wanted))
    if missing:
        problems.append(f"not in the checkpoint: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(f"not in the template: {', '.join(unexpected[:5])}"
                        f"{' ...' if len(unexpected) > 5 else ''}")
    differ = [f"{name}: saved {saved[name][0]} {saved[name][1]}, template {wanted[name][0]} {wanted[name][1]}"
              for name in sorted(set(saved) & set(wanted)) if saved[name] != wanted[name]]
    if differ:
        problems.append("; ".join(differ[:5]) + (" ..." if len(differ) > 5 else ""))
    if problems:
        raise ValueError(
            f"checkpoint step {step} does not match the restore template ({' | '.join(problems)}). "
            "Build the template for that checkpoint: pass restore_latest a function extra -> template "
            "that sizes the state from the checkpoint's extra (e.g. its progressive stage)")


def _reraise_if_resource_error(error: Exception) -> None:
    """Running out of memory says nothing about the files: never set a checkpoint aside for it."""
    if isinstance(error, MemoryError) or "RESOURCE_EXHAUSTED" in str(error):
        raise error


def _describe(error: Exception) -> str:
    text = str(error).splitlines()[0] if str(error) else ""
    if len(text) > 300:
        text = text[:300] + " ..."
    return f"{type(error).__name__}: {text}"
