"""Global, data-sharded batches for the search loop, from device-held or host-read splits.

Two ways to feed a split to a jitted step whose batches are sharded over the mesh's data axis
(`jnas.parallel.batch_sharded`):

- `DeviceSplit`: the whole split on every device, batches gathered there by index. No host work per
  step; right for CIFAR-sized data, on any number of processes (each holds the whole split).
- `HostSplit`: examples read on the host through an `ExampleReader` (`jnas.data.host_pipeline`). Each
  process reads only the rows of the global batch that its own devices hold and the global array is
  assembled with `jax.make_array_from_process_local_data`; right for data that does not fit on a device
  (ImageNet), with host augmentation.

Both give the same batches for the same indices (for `ArrayReader`, bit for bit), through one interface:
`epoch_batches` (training and architecture batches of one epoch, from any step on), `eval_batches` (a
fixed order, the last batch padded and masked) and `batches` (any rows of indices). What a batch holds is
a function of (seed, stream, epoch, step) only, so a run resumed inside an epoch reads exactly what an
uninterrupted one would, and the number of processes changes nothing.
"""

from __future__ import annotations

import abc
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from jnas import parallel
from jnas.data import host_pipeline
from jnas.errors import UserError

Batch = dict[str, jax.Array]
PIPELINES = ("device", "host")  # config.data.pipeline

# Streams of batches drawn from one split in one epoch; each gets its own order and augmentation seeds.
WEIGHT_STREAM = 0  # the batches that train the weights
ARCH_STREAM = 1  # the batches that train the architecture
# The epoch order of stream s is drawn with seed `seed + s * _STREAM_SEED_STRIDE` (the stride the
# search has always used for its validation order; changing it changes every search's results).
_STREAM_SEED_STRIDE = 1_000_003


def example_seeds(seed: int, salt: int, stream: int, epoch: int, steps: np.ndarray, batch_size: int) -> np.ndarray:
    """int64 [len(steps), batch_size]: the host-augmentation seed of each example of those steps.

    A function of (seed, salt, stream, epoch, step, column) alone, so neither the number of processes
    nor the step a run was resumed at changes any image.
    """
    steps = np.asarray(steps, np.int64)
    seeds = np.empty((len(steps), batch_size), np.int64)
    for n, step in enumerate(steps):
        words = np.random.SeedSequence([seed, salt, stream, epoch, int(step)]).generate_state(batch_size, np.uint64)
        seeds[n] = (words >> np.uint64(1)).astype(np.int64)  # non-negative, as default_rng wants
    return seeds


class Split(abc.ABC):
    """A split of `size` examples served as global batches sharded over `mesh`'s data axis."""

    size: int
    mesh: jax.sharding.Mesh
    seed_salt: int = 0

    def epoch_order(self, seed: int, epoch: int) -> np.ndarray:
        """The permutation of epoch `epoch`: a function of (seed, epoch) only, so runs are reproducible."""
        return np.random.default_rng([seed, epoch]).permutation(self.size)

    def steps_per_pass(self, batch_size: int) -> int:
        """Whole batches in one pass over the split (the remainder of the permutation is not used)."""
        return self.size // batch_size

    def epoch_index(self, *, seed: int, epoch: int, batch_size: int, start: int, stop: int,
                    stream: int = WEIGHT_STREAM) -> np.ndarray:
        """int [stop - start, batch_size]: the example indices of steps [start, stop) of epoch `epoch`.

        Steps past one pass over the split start the same permutation again (the architecture split
        may hold fewer batches than the weights train for).
        """
        per_pass = self.steps_per_pass(batch_size)
        if per_pass == 0:
            raise ValueError(f"batch_size={batch_size} is larger than the split ({self.size} examples)")
        order = self.epoch_order(seed + stream * _STREAM_SEED_STRIDE, epoch)
        rows = order[:per_pass * batch_size].reshape(per_pass, batch_size)
        return rows[np.arange(start, stop) % per_pass]

    def epoch_batches(self, *, seed: int, epoch: int, batch_size: int, start: int, stop: int,
                      stream: int = WEIGHT_STREAM) -> Iterator[Batch]:
        """The global batches of steps [start, stop) of epoch `epoch` (`{"image", "label"}`, uint8 images
        with the training transform of host readers)."""
        index = self.epoch_index(seed=seed, epoch=epoch, batch_size=batch_size, start=start, stop=stop,
                                 stream=stream)
        seeds = example_seeds(seed, self.seed_salt, stream, epoch, np.arange(start, stop), batch_size)
        return self.batches(index, seeds)

    def eval_batches(self, batch_size: int, max_batches: int = 0) -> Iterator[Batch]:
        """The split in its stored order (the first `max_batches` batches when > 0), the evaluation
        transform, a float32 `mask` of 1 for real examples and 0 for the padding of the last batch."""
        num_batches = -(-self.size // batch_size)
        if max_batches > 0:
            num_batches = min(num_batches, max_batches)
        index = np.arange(num_batches * batch_size).reshape(num_batches, batch_size)
        mask = index < self.size
        return self.batches(np.where(mask, index, 0), None, mask.astype(np.float32))

    @abc.abstractmethod
    def batches(self, index_batches: np.ndarray, seeds: np.ndarray | None,
                masks: np.ndarray | None = None) -> Iterator[Batch]:
        """One global batch per row of `index_batches` (int [steps, batch], the same on every process).

        `seeds` (int64, same shape) are the examples' host-augmentation seeds, None for the evaluation
        transform; `masks` (float32, same shape), when given, become each batch's "mask".
        """


class DeviceSplit(Split):
    """One split's images and labels held on every device; batches are gathered by index there.

    The images are the stored ones (no host augmentation: the step augments on the device), so the
    seeds are not used.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, mesh: jax.sharding.Mesh, *, seed_salt: int = 0):
        self.size = len(labels)
        self.mesh = mesh
        self.seed_salt = seed_salt
        self.image_shape = tuple(images.shape[1:])
        self.images = parallel.put_replicated(images, mesh)
        self.labels = parallel.put_replicated(labels.astype(np.int32), mesh)
        sharded = parallel.batch_sharded(mesh)
        self._gather = jax.jit(
            lambda images, labels, index: {"image": images[index], "label": labels[index]},
            out_shardings=sharded)

    def batch(self, index: np.ndarray) -> Batch:
        """The examples `index` (int [batch], the same on every process) as one global batch."""
        return self._gather(self.images, self.labels, parallel.put_sharded(index.astype(np.int32), self.mesh))

    def batches(self, index_batches: np.ndarray, seeds: np.ndarray | None,
                masks: np.ndarray | None = None) -> Iterator[Batch]:
        del seeds
        for n, index in enumerate(index_batches):
            batch = self.batch(index)
            if masks is not None:
                batch["mask"] = parallel.put_sharded(masks[n], self.mesh)
            yield batch


class HostSplit(Split):
    """A split read on the host: each process reads only the rows of a global batch its devices hold.

    Under `parallel.batch_sharded(mesh)` a global batch of B rows is cut into equal blocks, one per
    device; this process reads the rows of the blocks on its addressable devices (B / process_count of
    them, through a `HostLoader` with `workers` processes and `prefetch` rows each) and
    `jax.make_array_from_process_local_data` joins every process's rows into one global array without
    any transfer between processes. `seed_salt` sets the split apart in the examples' augmentation seeds.
    """

    def __init__(self, reader: host_pipeline.ExampleReader, mesh: jax.sharding.Mesh, *, workers: int = 0,
                 prefetch: int = 2, seed_salt: int = 0):
        self.reader = reader
        self.size = len(reader)
        self.mesh = mesh
        self.seed_salt = seed_salt
        self.image_shape = tuple(reader.image_shape)
        self.loader = host_pipeline.HostLoader(reader, workers=workers, prefetch=prefetch)
        self._sharding = parallel.batch_sharded(mesh)
        self._rows: dict[int, np.ndarray] = {}

    def local_rows(self, batch_size: int) -> np.ndarray:
        """int [batch_size / processes]: the rows of a global batch this process holds, in the order
        `make_array_from_process_local_data` expects them (its devices' blocks, by position)."""
        if batch_size not in self._rows:
            indices = self._sharding.addressable_devices_indices_map((batch_size,)).values()
            blocks = sorted({(s.start or 0, batch_size if s.stop is None else s.stop)
                             for s in (index[0] for index in indices)})
            self._rows[batch_size] = np.concatenate([np.arange(a, b) for a, b in blocks])
        return self._rows[batch_size]

    def batches(self, index_batches: np.ndarray, seeds: np.ndarray | None,
                masks: np.ndarray | None = None) -> Iterator[Batch]:
        index_batches = np.asarray(index_batches)
        batch_size = index_batches.shape[1]
        rows = self.local_rows(batch_size)
        local_seeds = None if seeds is None else np.asarray(seeds)[:, rows]
        shapes = {"image": (batch_size, *self.image_shape), "label": (batch_size,), "mask": (batch_size,)}
        host_rows = self.loader.iterate(index_batches[:, rows], local_seeds)
        try:
            for n, local in enumerate(host_rows):
                if masks is not None:
                    local = {**local, "mask": np.asarray(masks[n][rows], np.float32)}
                yield {k: jax.make_array_from_process_local_data(self._sharding, v, shapes[k])
                       for k, v in local.items()}
        finally:
            host_rows.close()  # ends grain's worker processes when the caller stops early


def evaluate_split(eval_step, state: Any, split: Split, batch_size: int, max_batches: int) -> dict:
    """Loss and accuracy over the split (or its first `max_batches` batches), in a fixed order.

    `eval_step(state, batch)` returns sums of loss, correct predictions and mask over a masked batch.
    """
    totals = None
    for batch in split.eval_batches(batch_size, max_batches):
        out = eval_step(state, batch)
        totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
    totals = jax.device_get(totals)
    count = max(float(totals["count"]), 1.0)
    return {"loss": float(totals["loss_sum"]) / count, "acc": float(totals["correct"]) / count}


def check_config(data_config: Any) -> None:
    """Raise UserError when config.data.pipeline or config.data.workers cannot work."""
    pipeline, workers = data_config.get("pipeline", "device"), data_config.get("workers", 0)
    if pipeline not in PIPELINES:
        raise UserError(f"config.data.pipeline={pipeline!r} is not one of: {', '.join(PIPELINES)} (device: splits "
                        "held on every device; host: each process reads its own examples on the host)")
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 0:
        raise UserError(f"config.data.workers={workers!r} must be an int >= 0 (grain worker processes; 0 reads "
                        "in the main process)")
    if workers > 0 and pipeline != "host":
        raise UserError(f"config.data.workers={workers} needs config.data.pipeline=host (the device pipeline "
                        "reads nothing on the host); set data.workers=0 or data.pipeline=host")


def make_split(data_config: Any, images: np.ndarray, labels: np.ndarray, mesh: jax.sharding.Mesh, *,
               seed_salt: int = 0) -> Split:
    """The split of in-memory `images` and `labels` that config.data.pipeline names."""
    check_config(data_config)
    if data_config.get("pipeline", "device") == "host":
        return HostSplit(host_pipeline.ArrayReader(images, labels), mesh, workers=data_config.get("workers", 0),
                         seed_salt=seed_salt)
    return DeviceSplit(images, labels, mesh, seed_salt=seed_salt)
