"""Device mesh, shardings and multi-host start-up.

One 1-D mesh over every device of every process, axis "data". The search state is replicated and
batches are sharded along their leading axis, so `jax.jit` runs data-parallel and reductions over the
batch (the loss, BatchNorm statistics) cover the global batch.
"""

from __future__ import annotations

import itertools
import os
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jnas.errors import UserError

DATA_AXIS = "data"

# Any of these in the environment means a multi-process launch that jax.distributed can read
# (coordinator set by hand, SLURM, Open MPI, or a Cloud TPU pod slice).
_DISTRIBUTED_ENV = ("JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES")


def maybe_initialize_distributed() -> bool:
    """Call `jax.distributed.initialize()` when the environment describes a multi-process run.

    On SLURM, Open MPI and Cloud TPU pod slices jax finds everything itself. Elsewhere (GPU machines
    started by hand, or several processes on one machine) set `JAX_COORDINATOR_ADDRESS=host:port` (process
    0's machine, a free port) and, since jax reads neither from the environment, `JNAS_NUM_PROCESSES` and
    `JNAS_PROCESS_ID` (0 .. JNAS_NUM_PROCESSES - 1, a different one per process).
    `JNAS_DISTRIBUTED=0` turns the detection off (e.g. a single-process job inside SLURM).
    """
    if os.environ.get("JNAS_DISTRIBUTED", "") == "0":
        return False
    forced = os.environ.get("JNAS_DISTRIBUTED", "") == "1"
    if not forced and not any(k in os.environ for k in _DISTRIBUTED_ENV):
        return False
    if jax.distributed.is_initialized():
        return True
    jax.distributed.initialize(**_process_env())
    return True


def _process_env() -> dict[str, int]:
    """num_processes and process_id from JNAS_NUM_PROCESSES and JNAS_PROCESS_ID, when set."""
    values = {}
    for key, name in (("JNAS_NUM_PROCESSES", "num_processes"), ("JNAS_PROCESS_ID", "process_id")):
        text = os.environ.get(key, "").strip()
        if text:
            try:
                values[name] = int(text)
            except ValueError:
                raise UserError(f"{key}={text!r} must be an integer") from None
    if len(values) == 1:
        raise UserError("set JNAS_NUM_PROCESSES and JNAS_PROCESS_ID together (the number of processes, and "
                        "this process's index among them), or neither")
    if values and not 0 <= values["process_id"] < values["num_processes"]:
        raise UserError(f"JNAS_PROCESS_ID={values['process_id']} must be in [0, JNAS_NUM_PROCESSES="
                        f"{values['num_processes']})")
    return values


def make_mesh(devices=None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh, key: str = "config.batch_size") -> None:
    n = mesh.size
    if batch_size <= 0 or batch_size % n:
        lower = max(n, batch_size // n * n)
        raise UserError(
            f"{key}={batch_size} must be a positive multiple of the number of devices ({n}); "
            f"use e.g. {key}={lower} or {lower + n}")


def put_replicated(array: np.ndarray, mesh: Mesh) -> jax.Array:
    """Place a host array (identical on every process) on every device of the mesh."""
    sharding = replicated(mesh)
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def put_sharded(array: np.ndarray, mesh: Mesh) -> jax.Array:
    """Shard a host array that every process holds in full along the data axis."""
    sharding = batch_sharded(mesh)
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


_barrier_ids = itertools.count()


def barrier(name: str, timeout_s: float = 3600.0) -> None:
    """Wait until every process has reached this point (a no-op in a single process).

    The coordination service's barrier, not a device collective: XLA's CPU collectives (gloo) give up
    when the processes arrive more than 30 s apart, and compiling can take longer than that. Every
    process must call the barriers in the same order.
    """
    if jax.process_count() == 1:
        return
    # jax exposes no public barrier on its distributed client (orbax calls the same one).
    client = jax._src.distributed.global_state.client  # pylint: disable=protected-access
    client.wait_at_barrier(f"jnas_{name}_{next(_barrier_ids)}", int(timeout_s * 1000))


def start_together(jitted: Callable, name: str, timeout_s: float = 3600.0) -> Callable:
    """`jitted` (a `jax.jit` function), which in a multi-process run runs for the first time only once
    every process has compiled it. In a single process `jitted` itself is returned.

    Processes compile at their own pace: only process 0 writes the persistent compilation cache (and on
    CPU the cache keys hold each process's devices, so the others never find their programs there), and
    XLA's CPU collectives (gloo) fail when processes reach a collective more than 30 s apart. So the
    first call compiles ahead (its arguments fix the shapes for good), then waits at a barrier.
    """
    if jax.process_count() == 1:
        return jitted
    compiled: list[Any] = []

    def call(*args):
        if not compiled:
            compiled.append(jitted.lower(*args).compile())
            barrier(f"compiled_{name}", timeout_s)
        return compiled[0](*args)

    return call
