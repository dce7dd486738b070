"""Examples read on the host, by index: the input side of a multi-host run.

An `ExampleReader` turns an example index (and, for training, a seed) into one uint8 image; a
`HostLoader` reads whole rows of indices (one row = the examples one process contributes to one global
batch) in order, in this process or in grain worker processes. What a row holds depends only on its
indices and seeds, never on the number of workers or on which rows were read before, so a pipeline can
start at any step of an epoch (a resumed run) and still read what an uninterrupted run would.

The device side (which rows a process reads, global arrays) is `jnas.data.pipeline`.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Protocol, runtime_checkable

import numpy as np

Row = dict[str, np.ndarray]


@runtime_checkable
class ExampleReader(Protocol):
    """Random access to one split's examples. Must be picklable: grain's workers receive a copy.

    `read(index, seed)` returns the uint8 (H, W, 3) image of example `index`, of shape `image_shape`:
    with `seed=None` the deterministic evaluation transform, with an int the random training transform,
    drawn from `np.random.default_rng(seed)` only (so the image depends on (index, seed) alone).
    `labels` (int32 [len]) must be available without decoding any image.

    A reader may also define `read_batch(indices, seeds) -> uint8 [b, H, W, 3]` (seeds None or int64
    [b]) when it can read many examples faster than one at a time; `HostLoader` then uses it.
    """

    labels: np.ndarray
    image_shape: tuple[int, int, int]

    def __len__(self) -> int: ...

    def read(self, index: int, seed: int | None) -> np.ndarray: ...


class ArrayReader:
    """A split held in memory as uint8 arrays (CIFAR, ImageNet16-120, synthetic data).

    No host augmentation: `read` returns the stored image whatever the seed, since the search step
    augments these images on the device. Pickling copies the arrays, so keep `HostLoader(workers=0)`
    for it (reading from memory is cheap; worker processes would only add copies).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        images, labels = np.asarray(images), np.asarray(labels)
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(f"ArrayReader needs uint8 images of shape [N, H, W, C], got {images.dtype} "
                             f"{images.shape}; convert them with np.asarray(images, np.uint8)")
        if labels.shape != (len(images),):
            raise ValueError(f"ArrayReader got {len(images)} images but labels of shape {labels.shape}; "
                             "give one label per image")
        self.images = images
        self.labels = labels.astype(np.int32)
        self.image_shape = tuple(int(d) for d in images.shape[1:])

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, index: int, seed: int | None) -> np.ndarray:
        del seed  # no host augmentation
        return self.images[index]

    def read_batch(self, indices: np.ndarray, seeds: np.ndarray | None) -> np.ndarray:
        del seeds
        return self.images[indices]


def read_row(reader: ExampleReader, indices: np.ndarray, seeds: np.ndarray | None) -> Row:
    """{"image": uint8 [b, H, W, 3], "label": int32 [b]} of the examples `indices` (seeds: None or [b])."""
    indices = np.asarray(indices, np.int64)
    read_batch = getattr(reader, "read_batch", None)
    if read_batch is not None:
        images = np.asarray(read_batch(indices, seeds))
        expected = (len(indices), *reader.image_shape)
        if images.shape != expected or images.dtype != np.uint8:
            raise ValueError(f"{type(reader).__name__}.read_batch returned {images.dtype} {images.shape}, "
                             f"expected uint8 {expected}")
    else:
        images = np.empty((len(indices), *reader.image_shape), np.uint8)
        for k, index in enumerate(indices):
            image = np.asarray(reader.read(int(index), None if seeds is None else int(seeds[k])))
            if image.shape != tuple(reader.image_shape) or image.dtype != np.uint8:
                raise ValueError(
                    f"{type(reader).__name__}.read({int(index)}) returned {image.dtype} {image.shape}, but the "
                    f"reader's image_shape says uint8 {tuple(reader.image_shape)}: every image of a split must "
                    "have that shape")
            images[k] = image
    return {"image": images, "label": np.asarray(reader.labels[indices], np.int32)}


class _ReadRows:
    """Row `i` of an iteration, as a picklable callable for grain's `MapDataset.map`."""

    def __init__(self, reader: ExampleReader, index_batches: np.ndarray, seeds: np.ndarray | None):
        self.reader, self.index_batches, self.seeds = reader, index_batches, seeds

    def __call__(self, row: int) -> Row:
        return read_row(self.reader, self.index_batches[row], None if self.seeds is None else self.seeds[row])


class HostLoader:
    """Reads rows of example indices from a reader, in order.

    `workers=0` reads in the calling thread, when the next row is asked for. `workers > 0` reads in that
    many grain worker processes (started per `iterate` call, with the "spawn" method: each imports jnas
    and receives a pickled copy of the reader), row r in worker r % workers, each keeping up to
    `prefetch` rows ready; rows still come out in order, so the result does not depend on `workers`.
    """

    def __init__(self, reader: ExampleReader, *, workers: int = 0, prefetch: int = 2):
        if not isinstance(workers, (int, np.integer)) or workers < 0:
            raise ValueError(f"HostLoader workers={workers!r} must be an int >= 0 (0 reads in this process)")
        if not isinstance(prefetch, (int, np.integer)) or prefetch < 1:
            raise ValueError(f"HostLoader prefetch={prefetch!r} must be an int >= 1 (rows each worker keeps ready)")
        self.reader, self.workers, self.prefetch = reader, int(workers), int(prefetch)

    def iterate(self, index_batches: np.ndarray, seeds: np.ndarray | None) -> Iterator[Row]:
        """{"image": uint8 [b, H, W, 3], "label": int32 [b]} for each row of `index_batches` (int [steps, b]),
        read with the seeds in the same place of `seeds` (int64 [steps, b]; None: evaluation transform)."""
        index_batches = np.asarray(index_batches)
        if index_batches.ndim != 2 or not np.issubdtype(index_batches.dtype, np.integer):
            raise ValueError(f"index_batches must be an int array [steps, batch], got {index_batches.dtype} "
                             f"{index_batches.shape}")
        size = len(self.reader)
        if index_batches.size and (index_batches.min() < 0 or index_batches.max() >= size):
            raise ValueError(f"example indices run over [{index_batches.min()}, {index_batches.max()}], but the "
                             f"reader holds {size} examples (valid indices 0..{size - 1})")
        if seeds is not None:
            seeds = np.asarray(seeds, np.int64)
            if seeds.shape != index_batches.shape:
                raise ValueError(f"seeds of shape {seeds.shape} must match index_batches {index_batches.shape} "
                                 "(one seed per example), or be None for the evaluation transform")
        if self.workers == 0 or len(index_batches) == 0:
            return self._in_process(index_batches, seeds)
        return self._in_workers(index_batches, seeds)

    def _in_process(self, index_batches: np.ndarray, seeds: np.ndarray | None) -> Iterator[Row]:
        read = _ReadRows(self.reader, index_batches, seeds)
        for row in range(len(index_batches)):
            yield read(row)

    def _in_workers(self, index_batches: np.ndarray, seeds: np.ndarray | None) -> Iterator[Row]:
        import grain  # only runs with workers: its import costs a second
        from absl import flags

        # grain 0.2.18 reads one of its absl flags when it starts workers, which fails before absl has
        # parsed the command line (any program not started by absl.app; google/grain#1355): the flags
        # keep their defaults then.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        dataset = (grain.MapDataset.range(len(index_batches))
                   .map(_ReadRows(self.reader, index_batches, seeds))
                   # Inside a worker, no threads: the worker processes are the parallelism.
                   .to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
                   .mp_prefetch(grain.MultiprocessingOptions(num_workers=self.workers,
                                                             per_worker_buffer_size=self.prefetch)))
        iterator = iter(dataset)
        # Stopping early (a preempted run, an evaluation cut short) must still end the worker processes.
        closing = getattr(iterator, "close", None)
        with contextlib.ExitStack() as stack:
            if closing is not None:
                stack.callback(closing)
            for row in iterator:
                # grain hands arrays over in shared memory; a copy frees it at once (a view would hold it
                # for as long as the consumer keeps the row).
                yield {k: np.array(v) for k, v in row.items()}
