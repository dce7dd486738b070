"""Device mesh, shardings and multi-host start-up.

One 1-D mesh over every device of every process, axis "data". The search state is replicated and
batches are sharded along their leading axis, so `jax.jit` runs data-parallel and reductions over the
batch (the loss, BatchNorm statistics) cover the global batch.
"""

from __future__ import annotations

import os

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

    `JNAS_DISTRIBUTED=0` turns the detection off (e.g. a single-process job inside SLURM).
    """
    if os.environ.get("JNAS_DISTRIBUTED", "") == "0":
        return False
    forced = os.environ.get("JNAS_DISTRIBUTED", "") == "1"
    if not forced and not any(k in os.environ for k in _DISTRIBUTED_ENV):
        return False
    if jax.distributed.is_initialized():
        return True
    jax.distributed.initialize()
    return True


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
