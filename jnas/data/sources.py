"""Where the images come from: prepared TFDS data, a CIFAR python folder, or synthetic arrays.

Every source returns whole splits as host numpy arrays (uint8 NHWC images, int32 labels) in the original
CIFAR order, so that `search_split` takes the same images as the PyTorch references whatever the source.

Facts about TFDS that shape this module (tensorflow-datasets 4.9.10, checked here, no TensorFlow):
- Reading prepared `array_record` data works without TensorFlow: `tfds.data_source` decodes the PNGs
  with Pillow. Prepared `tfrecord` data (the `tfds.load` default) cannot be read this way: it has no
  random access.
- Preparing CIFAR does NOT work without TensorFlow: the cifar builder reads the archive with
  `tf.io.gfile` and encodes every image with `tf.image.encode_png`. On Python >= 3.9 preparing also
  imports `importlib_resources`, which tfds does not declare as a dependency.
- The prepared records are shuffled; the `id` feature ("train_00042") keeps the original index, which is
  used here to restore the original order.
"""

from __future__ import annotations

import codecs
import dataclasses
import importlib.util
import os
import pickle
import socket
import urllib.parse
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from jnas.errors import UserError

SOURCES = ("auto", "tfds", "folder", "synthetic")

# Where the PyTorch reference repos keep their CIFAR folders, relative to the working directory.
_DEFAULT_FOLDER_PLACES = ("data", "../data")
_PROBE_TIMEOUT_S = 3.0
_SYNTHETIC_SEED = 0
_DEFAULT_SYNTHETIC_SIZE = 512
_DEFAULT_IMAGE_SIZE = 32


class DataUnavailableError(UserError):
    """The requested data is not on this machine and cannot be fetched; the message says how to fix it."""


# ------------------------------------------------------------------------------------------------
# Registry: everything dataset-specific lives here, so a new dataset touches only this table.


@dataclasses.dataclass(frozen=True)
class FolderLayout:
    """The python-pickle layout of the original archive (also what torchvision reads)."""

    dirname: str  # the folder the archive unpacks to
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: bytes  # key of the label list inside every pickled batch


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    num_train: int
    num_test: int
    tfds_name: str
    tfds_label_key: str
    download_url: str  # what TFDS downloads when preparing; its host is the connectivity probe target
    folder: FolderLayout
    # scheme -> (mean, std) per RGB channel in [0, 1] units (methods.md §0.4 and §7.4).
    normalization: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]]


DATASETS: dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec(
        name="cifar10",
        num_classes=10,
        image_shape=(32, 32, 3),
        num_train=50_000,
        num_test=10_000,
        tfds_name="cifar10",
        tfds_label_key="label",
        download_url="https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
        folder=FolderLayout(
            dirname="cifar-10-batches-py",
            train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
            test_files=("test_batch",),
            label_key=b"labels",
        ),
        normalization={
            "darts": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
            "nb201": ((125.3 / 255, 123.0 / 255, 113.9 / 255), (63.0 / 255, 62.1 / 255, 66.7 / 255)),
        },
    ),
    "cifar100": DatasetSpec(
        name="cifar100",
        num_classes=100,
        image_shape=(32, 32, 3),
        num_train=50_000,
        num_test=10_000,
        tfds_name="cifar100",
        tfds_label_key="label",  # the fine label; "coarse_label" is the 20 superclasses
        download_url="https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
        folder=FolderLayout(
            dirname="cifar-100-python",
            train_files=("train",),
            test_files=("test",),
            label_key=b"fine_labels",
        ),
        normalization={
            "darts": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
            "nb201": ((129.3 / 255, 124.1 / 255, 112.4 / 255), (68.2 / 255, 65.4 / 255, 70.4 / 255)),
        },
    ),
}


def names() -> tuple[str, ...]:
    """Dataset names that `load` accepts."""
    return tuple(DATASETS)


def get_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; data.name must be one of {', '.join(DATASETS)}")
    return DATASETS[name]


def normalization(name: str, scheme: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (mean, std) in [0, 1] units, float32 arrays of shape [3]."""
    spec = get_spec(name)
    if scheme not in spec.normalization:
        raise UserError(f"unknown normalization {scheme!r} for {name}; data.normalization must be one of "
                        f"{', '.join(spec.normalization)}")
    mean, std = spec.normalization[scheme]
    return np.asarray(mean, np.float32), np.asarray(std, np.float32)


# ------------------------------------------------------------------------------------------------
# The dataset and the search split.


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: element-wise array equality is not a bool
class Dataset:
    """Whole splits on the host, in the original order of the dataset."""

    name: str
    train_images: np.ndarray = dataclasses.field(repr=False)  # uint8 [N, H, W, 3]
    train_labels: np.ndarray = dataclasses.field(repr=False)  # int32 [N]
    test_images: np.ndarray = dataclasses.field(repr=False)
    test_labels: np.ndarray = dataclasses.field(repr=False)
    num_classes: int
    source: str  # where it actually came from, e.g. "folder:/data/cifar-10-batches-py"

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])


def search_split(dataset: Dataset, train_portion: float,
                 ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The DARTS split (methods.md §1.3): the first floor(portion * N) training images train the weights,
    the rest train the architecture. Returns ((weight_images, weight_labels), (arch_images, arch_labels))
    as views of the dataset arrays."""
    if not 0.0 < train_portion < 1.0:
        raise UserError(f"data.train_portion={train_portion} must be in (0, 1): both the weights and the "
                        "architecture need images")
    n = len(dataset.train_images)
    split = int(np.floor(train_portion * n))
    if split == 0 or split == n:
        raise UserError(f"data.train_portion={train_portion} of {n} training images leaves one side empty; "
                        "use more images (data.synthetic_size for synthetic data) or a portion nearer 0.5")
    return ((dataset.train_images[:split], dataset.train_labels[:split]),
            (dataset.train_images[split:], dataset.train_labels[split:]))


# ------------------------------------------------------------------------------------------------
# load(): dispatch on data_config.source.


def _get(config: Any, key: str, default: Any) -> Any:
    """A key of the data config; ConfigDict, dict and plain objects all work."""
    if hasattr(config, "get"):
        return config.get(key, default)
    return getattr(config, key, default)


def load(data_config: Any) -> Dataset:
    """Load `data_config.name` from `data_config.source` ("auto" | "tfds" | "folder" | "synthetic")."""
    spec = get_spec(data_config.name)
    source = _get(data_config, "source", "auto")
    data_dir = str(_get(data_config, "dir", "") or "")
    if source == "synthetic":
        size = int(_get(data_config, "synthetic_size", _DEFAULT_SYNTHETIC_SIZE))
        image_size = int(_get(data_config, "image_size", _DEFAULT_IMAGE_SIZE))
        return load_synthetic(spec.name, size=size, image_size=image_size)
    if source == "folder":
        return load_folder(spec.name, data_dir)
    if source == "tfds":
        return load_tfds(spec.name, data_dir or _default_tfds_dir())
    if source == "auto":
        return _load_auto(spec, data_dir)
    raise UserError(f"unknown data.source {source!r}; use one of {', '.join(SOURCES)}")


def _fix_hint(spec: DatasetSpec, tfds_dir: str) -> str:
    return (
        "Fix it with one of:\n"
        f"  - data.source=folder and data.dir=<folder holding {spec.folder.dirname}> (the CIFAR python "
        "version, as torchvision and the PyTorch DARTS repos use it);\n"
        f"  - prepare the TFDS data on a machine with TensorFlow and network "
        f"(`tfds build {spec.tfds_name} --file_format=array_record`) and copy its "
        f"~/tensorflow_datasets/{spec.tfds_name} folder to {os.path.join(tfds_dir, spec.tfds_name)} "
        "(or point data.dir or TFDS_DATA_DIR at a copy);\n"
        "  - data.source=synthetic for a smoke test (random images, meaningless accuracy).")


def _load_auto(spec: DatasetSpec, data_dir: str) -> Dataset:
    """Prepared TFDS data, else a CIFAR folder, else a TFDS download, else an error listing every place.

    With data.dir set only data.dir is searched (and downloaded into); without it the TFDS data_dir
    (TFDS_DATA_DIR or ~/tensorflow_datasets), then ./data and ../data where the PyTorch repos keep CIFAR.
    """
    tfds_dirs = [data_dir] if data_dir else [_default_tfds_dir()]
    folder_places = [data_dir] if data_dir else list(_DEFAULT_FOLDER_PLACES)
    looked: list[str] = []
    for d in tfds_dirs:
        if _tfds_prepared_on_disk(spec, d):
            return load_tfds(spec.name, d, allow_download=False)
        looked.append(f"TFDS data_dir {os.path.abspath(d)}: no prepared {spec.tfds_name}")
    for d in folder_places:
        folder = _resolve_folder(spec, d)
        if folder is not None:
            return load_folder(spec.name, str(folder))
        looked.append(f"{os.path.abspath(d)}: no {spec.folder.dirname} folder")
    download_dir = tfds_dirs[0]
    blocker = _tfds_download_blocker(spec)
    if blocker is None:
        return load_tfds(spec.name, download_dir, allow_download=True)
    looked.append(f"TFDS download into {os.path.abspath(download_dir)}: impossible, {blocker}")
    raise DataUnavailableError(
        f"No {spec.name} data found (data.source=auto). Looked at:\n"
        + "".join(f"  - {place}\n" for place in looked) + _fix_hint(spec, download_dir))


# ------------------------------------------------------------------------------------------------
# Synthetic.


def load_synthetic(name: str, size: int = _DEFAULT_SYNTHETIC_SIZE,
                   image_size: int = _DEFAULT_IMAGE_SIZE) -> Dataset:
    """`size` random images per split, the same on every call. Each class has its own mean colour, so a
    network can learn something and a smoke test can see the loss fall."""
    spec = get_spec(name)
    if size < 1 or image_size < 1:
        raise UserError(f"data.synthetic_size={size} and data.image_size={image_size} must be positive")
    rng = np.random.default_rng(_SYNTHETIC_SEED)
    class_colours = rng.uniform(48, 208, (spec.num_classes, 1, 1, 3))

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.permutation(np.arange(n) % spec.num_classes).astype(np.int32)
        noise = rng.normal(0.0, 40.0, (n, image_size, image_size, 3))
        images = np.clip(class_colours[labels] + noise, 0, 255).astype(np.uint8)
        return images, labels

    train_images, train_labels = split(size)
    test_images, test_labels = split(size)
    return Dataset(spec.name, train_images, train_labels, test_images, test_labels, spec.num_classes,
                   source=f"synthetic:size={size},image_size={image_size},seed={_SYNTHETIC_SEED}")


# ------------------------------------------------------------------------------------------------
# CIFAR python folder.


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Refuses every global except what a pickled numpy array needs, so a batch file cannot run code.

    The official batches (Python 2 pickles) name numpy.core.multiarray; files written by numpy 2
    (e.g. to_cifar_python.py) name numpy._core.multiarray. Protocol-2 pickles written by Python 3 store
    bytes as _codecs.encode(str, "latin1").
    """

    _RECONSTRUCT = getattr(getattr(np, "_core", np.core), "multiarray")._reconstruct
    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing global {module}.{name}: a CIFAR batch holds only dicts, lists, bytes and "
                "numpy arrays") from None


def _read_batch(path: Path, label_key: bytes, image_shape: tuple[int, int, int],
                num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    expected = (f"a pickled dict with b'data' (uint8 [N, {int(np.prod(image_shape))}], rows in CHW order) "
                f"and {label_key!r} (N ints in [0, {num_classes}))")
    if not path.is_file():
        raise DataUnavailableError(f"missing CIFAR batch file {path}: expected {expected}")
    try:
        with open(path, "rb") as f:
            batch = _ArrayOnlyUnpickler(f, encoding="bytes").load()
    except Exception as e:  # anything from a truncated or foreign file: say which file and what it should be
        raise UserError(f"cannot read CIFAR batch file {path} ({type(e).__name__}: {e}); expected {expected}"
                        ) from e
    if not isinstance(batch, dict):
        raise UserError(f"{path} holds a {type(batch).__name__}; expected {expected}")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(label_key, batch.get(label_key.decode()))
    if data is None or labels is None:
        keys = ", ".join(repr(k) for k in batch)
        raise UserError(f"{path} has keys {keys}; expected {expected}")
    data = np.asarray(data)
    c_h_w = (image_shape[2], image_shape[0], image_shape[1])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != int(np.prod(c_h_w)):
        raise UserError(f"{path}: b'data' is {data.dtype} {data.shape}; expected {expected}")
    labels = np.asarray(labels)
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{path}: {label_key!r} has shape {labels.shape} and dtype {labels.dtype} for "
                        f"{len(data)} images; expected {expected}")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise UserError(f"{path}: labels span [{labels.min()}, {labels.max()}]; expected {expected}")
    images = data.reshape(len(data), *c_h_w).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int32)


def _resolve_folder(spec: DatasetSpec, data_dir: str) -> Path | None:
    """The `cifar-10-batches-py`-like folder at or directly under data_dir, if there is one."""
    d = Path(data_dir).expanduser()
    if (d / spec.folder.dirname).is_dir():
        return d / spec.folder.dirname
    if d.is_dir() and (d.name == spec.folder.dirname or (d / spec.folder.train_files[0]).is_file()):
        return d
    return None


def load_folder(name: str, data_dir: str = "") -> Dataset:
    """Read the CIFAR python layout. `data_dir` is the folder holding `cifar-10-batches-py` (or
    `cifar-100-python`) or that folder itself; "" looks in ./data and ../data."""
    spec = get_spec(name)
    places = [data_dir] if data_dir else list(_DEFAULT_FOLDER_PLACES)
    folder = next((f for f in map(lambda p: _resolve_folder(spec, p), places) if f is not None), None)
    if folder is None:
        tried = ", ".join(os.path.abspath(p) for p in places)
        raise DataUnavailableError(
            f"no {spec.folder.dirname} folder at or under {tried}: data.dir must name the folder holding "
            f"{spec.folder.dirname} (files {', '.join(spec.folder.train_files + spec.folder.test_files)}) "
            "or that folder itself")

    def read(files: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        parts = [_read_batch(folder / f, spec.folder.label_key, spec.image_shape, spec.num_classes)
                 for f in files]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    train_images, train_labels = read(spec.folder.train_files)
    test_images, test_labels = read(spec.folder.test_files)
    return Dataset(spec.name, train_images, train_labels, test_images, test_labels, spec.num_classes,
                   source=f"folder:{folder.resolve()}")


# ------------------------------------------------------------------------------------------------
# TFDS.


def _default_tfds_dir() -> str:
    """Where tfds looks when no data_dir is given."""
    return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def _tfds_prepared_on_disk(spec: DatasetSpec, data_dir: str) -> bool:
    """A cheap layout check (<data_dir>/<name>/<version>/dataset_info.json) that avoids importing tfds."""
    return any((Path(data_dir).expanduser() / spec.tfds_name).glob("*/dataset_info.json"))


def _probe(url: str, timeout_s: float = _PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the download host opens within timeout_s (so a download cannot hang)."""
    parsed = urllib.parse.urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _missing_modules_for_prepare() -> list[str]:
    """Modules the tfds CIFAR builder needs to prepare data and that are not installed."""
    return [m for m in ("tensorflow", "importlib_resources") if importlib.util.find_spec(m) is None]


def _tfds_download_blocker(spec: DatasetSpec) -> str | None:
    """Why TFDS cannot download and prepare `spec` here, or None when it can."""
    missing = _missing_modules_for_prepare()
    if missing:
        # No network probe: without these modules preparing fails whatever the network does.
        return ("the tfds CIFAR builder cannot prepare data without TensorFlow (it reads the archive "
                "with tf.io.gfile and encodes every image with tf.image.encode_png; tensorflow-datasets "
                "also imports importlib_resources when preparing); not installed: " + ", ".join(missing))
    if not _probe(spec.download_url):
        host = urllib.parse.urlparse(spec.download_url).hostname
        return f"no network: could not connect to the download host {host} within {_PROBE_TIMEOUT_S:g} s"
    return None


def load_tfds(name: str, data_dir: str | None = None, allow_download: bool = True) -> Dataset:
    """Read prepared `array_record` TFDS data with `tfds.data_source` (no TensorFlow needed).

    When nothing is prepared under data_dir, download and prepare only if that can work here (TensorFlow
    installed and the download host answering within a few seconds); otherwise fail at once.
    """
    spec = get_spec(name)
    data_dir = os.path.abspath(os.path.expanduser(data_dir or _default_tfds_dir()))
    import tensorflow_datasets as tfds  # deferred: importing tfds costs about a second

    builder = tfds.builder(spec.tfds_name, data_dir=data_dir)
    if not builder.is_prepared():
        blocker = _tfds_download_blocker(spec) if allow_download else "downloading was not requested"
        if blocker is not None:
            raise DataUnavailableError(
                f"no prepared TFDS data for {spec.tfds_name} under {data_dir}, and it cannot be downloaded "
                f"and prepared here: {blocker}.\n" + _fix_hint(spec, data_dir))
        builder.download_and_prepare(
            file_format="array_record",  # the only format tfds.data_source reads without TensorFlow
            download_config=tfds.download.DownloadConfig(try_download_gcs=False))
        builder = tfds.builder(spec.tfds_name, data_dir=data_dir)

    file_format = builder.info.file_format
    if file_format not in tfds.core.file_adapters.FileFormat.with_random_access():
        raise DataUnavailableError(
            f"the TFDS data for {spec.tfds_name} under {data_dir} is stored as {file_format.value}, which "
            "tfds.data_source cannot read (no random access). Prepare it as array_record: "
            f"`tfds build {spec.tfds_name} --file_format=array_record`, or use data.source=folder.")
    splits = tfds.data_source(spec.tfds_name, data_dir=data_dir, download=False)
    train_images, train_labels = _read_tfds_split(splits["train"], spec)
    test_images, test_labels = _read_tfds_split(splits["test"], spec)
    return Dataset(spec.name, train_images, train_labels, test_images, test_labels, spec.num_classes,
                   source=f"tfds:{data_dir}")


def _read_tfds_split(source: Sequence[dict], spec: DatasetSpec,
                     chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """All records of one split as arrays, put back into the original dataset order."""
    n = len(source)
    images = np.empty((n, *spec.image_shape), np.uint8)
    labels = np.empty((n,), np.int32)
    original_index = np.empty((n,), np.int64)
    has_ids = True
    for start in range(0, n, chunk):
        keys = list(range(start, min(n, start + chunk)))
        for i, example in zip(keys, source.__getitems__(keys)):
            images[i] = example["image"]
            labels[i] = example[spec.tfds_label_key]
            example_id = example.get("id")
            if example_id is None:
                has_ids = False
                continue
            if isinstance(example_id, bytes):
                example_id = example_id.decode()
            original_index[i] = int(str(example_id).rsplit("_", 1)[-1])
    # TFDS shuffles records when preparing; the "id" ("train_00042") is the original position.
    if has_ids and np.array_equal(np.sort(original_index), np.arange(n)):
        order = np.argsort(original_index)
        images, labels = images[order], labels[order]
    return images, labels

