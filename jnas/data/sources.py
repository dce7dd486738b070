"""Where the images come from: prepared TFDS data, a python-pickle folder, or synthetic arrays.

Datasets: CIFAR-10, CIFAR-100 and ImageNet16-120 (NAS-Bench-201's 16x16 ImageNet subset, see
`jnas.data.imagenet16_classes`). Every source returns whole splits as host numpy arrays (uint8 NHWC
images, int32 labels), in the original order of the dataset wherever the source keeps it, so that
`search_split` and `search_split_for` take the same images as the PyTorch references whatever the source.

Facts about TFDS that shape this module (tensorflow-datasets 4.9.10, checked here, no TensorFlow):
- Reading prepared `array_record` data works without TensorFlow: `tfds.data_source` decodes the PNGs
  with Pillow. Prepared `tfrecord` data (the `tfds.load` default) cannot be read this way: it has no
  random access.
- Preparing CIFAR does NOT work without TensorFlow: the cifar builder reads the archive with
  `tf.io.gfile` and encodes every image with `tf.image.encode_png`. On Python >= 3.9 preparing also
  imports `importlib_resources`, which tfds does not declare as a dependency.
- The prepared records are shuffled; the `id` feature ("train_00042") keeps the original index, which is
  used here to restore the original order. `imagenet_resized` has no such feature: its splits come in
  the stored order (`Dataset.original_order` is False).
- `imagenet_resized` labels are the downsampled-ImageNet labels minus one (its builder yields `label - 1`),
  i.e. the map_clsloc.txt order, not the sorted-WordNet-ID order of `imagenet2012`.
"""

from __future__ import annotations

import codecs
import dataclasses
import importlib.util
import json
import os
import pickle
import socket
import urllib.parse
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from jnas.data import imagenet16_classes
from jnas.errors import UserError

SOURCES = ("auto", "tfds", "folder", "synthetic")
# How the search splits the data (data.split): DrNAS's portion of the training set, or NAS-Bench-201's
# split files as AutoDL's search scripts use them (methods.md §7.5, §11.12).
SPLITS = ("train_portion", "nb201_xvalid")

# Where the PyTorch reference repos keep their CIFAR folders, relative to the working directory.
_DEFAULT_FOLDER_PLACES = ("data", "../data")
_PROBE_TIMEOUT_S = 3.0
_SYNTHETIC_SEED = 0
_DEFAULT_SYNTHETIC_SIZE = 512


class DataUnavailableError(UserError):
    """The requested data is not on this machine and cannot be fetched; the message says how to fix it."""


# ------------------------------------------------------------------------------------------------
# Registry: everything dataset-specific lives here, so a new dataset touches only this table.


@dataclasses.dataclass(frozen=True)
class FolderLayout:
    """The python-pickle layout of the original archive (also what torchvision / AutoDL read).

    Every file is a pickled dict with b'data' (uint8 [N, C*H*W], rows in CHW order) and a label list.
    Labels in the files run over [first_label, first_label + file_classes); the dataset keeps the images
    whose label minus first_label is below its num_classes (ImageNet16-120: labels 1..120 of 1..1000).
    """

    dirname: str  # the folder the archive unpacks to
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: bytes  # key of the label list inside every pickled batch
    description: str  # what it is and where it comes from, for error messages
    other_dirnames: tuple[str, ...] = ()  # names the reference repos also give that folder
    first_label: int = 0
    file_classes: int = 0  # classes in the files; 0: the dataset's num_classes


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    num_train: int
    num_test: int  # the evaluation split: the test set, or ImageNet's validation set
    tfds_name: str
    tfds_label_key: str
    download_url: str  # what TFDS downloads when preparing; its host is the connectivity probe target
    folder: FolderLayout
    # scheme -> (mean, std) per RGB channel in [0, 1] units (methods.md §0.4, §4.6 and §7.4).
    normalization: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]]
    tfds_test_split: str = "test"  # the TFDS split that plays the test set
    # When set, TFDS labels are mapped onto these classes through their names (WordNet IDs); images of
    # other classes are dropped. None: the TFDS labels are the dataset's labels.
    tfds_class_names: tuple[str, ...] | None = None
    crop_padding: int = 4  # RandomCrop padding of the references' training augmentation (methods.md §7.4)
    # NAS-Bench-201's split file for this dataset (AutoDL configs/nas-benchmark/) and the split whose
    # images it indexes: "train" (cifar-split.txt: keys train / valid) or "test" (keys xvalid / xtest).
    nb201_split_file: str = ""
    nb201_split_of: str = ""


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
            description="the CIFAR-10 python version, as torchvision and the PyTorch DARTS repos use it",
        ),
        normalization={
            "darts": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
            "nb201": ((125.3 / 255, 123.0 / 255, 113.9 / 255), (63.0 / 255, 62.1 / 255, 66.7 / 255)),
        },
        nb201_split_file="cifar-split.txt",
        nb201_split_of="train",
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
            description="the CIFAR-100 python version, as torchvision and the PyTorch DARTS repos use it",
        ),
        normalization={
            # DrNAS 201-space (utils._data_transforms_cifar100) and AutoDL, methods.md §4.6 and §7.4.
            "darts": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
            "nb201": ((129.3 / 255, 124.1 / 255, 112.4 / 255), (68.2 / 255, 65.4 / 255, 70.4 / 255)),
        },
        nb201_split_file="cifar100-test-split.txt",
        nb201_split_of="test",
    ),
    # NAS-Bench-201's ImageNet16-120: downsampled ImageNet at 16x16, the first 120 classes of its labelling;
    # its 6,000 validation images (50 per class) are the test set. AutoDL get_dataset_with_transform.py
    # asserts 151,700 and 6,000 images.
    "imagenet16_120": DatasetSpec(
        name="imagenet16_120",
        num_classes=imagenet16_classes.NUM_CLASSES,
        image_shape=(16, 16, 3),
        num_train=151_700,
        num_test=6_000,
        tfds_name="imagenet_resized/16x16",
        tfds_label_key="label",
        download_url="http://www.image-net.org/data/downsample/Imagenet16_train_npz.zip",
        folder=FolderLayout(
            dirname="ImageNet16",
            other_dirnames=("imagenet16",),  # DrNAS: os.path.join(args.data, 'imagenet16')
            train_files=tuple(f"train_data_batch_{i}" for i in range(1, 11)),
            test_files=("val_data",),
            label_key=b"labels",
            description=("downsampled ImageNet 16x16 in its pickle release (Imagenet16_train.zip and "
                         "Imagenet16_val.zip from image-net.org), the folder AutoDL's ImageNet16 reads"),
            first_label=1,
            file_classes=1000,
        ),
        normalization={
            # AutoDL get_dataset_with_transform.py and DrNAS 201-space/train_search.py use the same constants.
            "darts": ((122.68 / 255, 116.66 / 255, 104.01 / 255), (63.22 / 255, 61.26 / 255, 65.09 / 255)),
            "nb201": ((122.68 / 255, 116.66 / 255, 104.01 / 255), (63.22 / 255, 61.26 / 255, 65.09 / 255)),
        },
        tfds_test_split="validation",
        tfds_class_names=imagenet16_classes.WNIDS,
        crop_padding=2,  # RandomCrop(16, padding=2) in AutoDL and DrNAS
        nb201_split_file="imagenet-16-120-test-split.txt",
        nb201_split_of="test",
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
    # Whether both splits are in the dataset's original order (the order index-based split files refer
    # to). False for TFDS data without an "id" feature (imagenet_resized): the order TFDS stored.
    original_order: bool = True

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


def check_split_config(data_config: Any) -> None:
    """Raise UserError when data.split (and, for nb201_xvalid, data.xvalid_split_file) cannot work.

    Cheap (no data is read), so a config check can call it before anything is loaded or compiled.
    """
    split = _get(data_config, "split", "train_portion")
    if split not in SPLITS:
        raise UserError(f"unknown data.split {split!r}; use one of {', '.join(SPLITS)}")
    if split == "train_portion":
        portion = float(_get(data_config, "train_portion", 0.5))
        if not 0.0 < portion < 1.0:
            raise UserError(f"data.train_portion={portion} must be in (0, 1): both the weights and the "
                            "architecture need images")
        return
    spec = get_spec(_get(data_config, "name", ""))
    path = str(_get(data_config, "xvalid_split_file", "") or "")
    where = f"AutoDL-Projects' configs/nas-benchmark/{spec.nb201_split_file}"
    if not spec.nb201_split_file:
        raise UserError(f"data.split=nb201_xvalid: NAS-Bench-201 has no split file for {spec.name}; "
                        "use data.split=train_portion")
    if not path:
        raise UserError(
            f"data.split=nb201_xvalid needs NAS-Bench-201's split file for {spec.name}, which jnas does not "
            f"ship: set data.xvalid_split_file to the path of {where}, or use data.split=train_portion "
            "(DrNAS's split of the training set)")
    if not os.path.isfile(os.path.expanduser(path)):
        raise UserError(f"data.xvalid_split_file={path!r} is not a file; give the path of {where}")


def search_split_for(dataset: Dataset, data_config: Any,
                     ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The images that train the weights and those that train the architecture, as data.split says.

    - "train_portion" (DrNAS, and DARTS on CIFAR-10): `search_split(dataset, data.train_portion)`.
    - "nb201_xvalid" (AutoDL's NAS-Bench-201 search scripts, methods.md §7.5): for CIFAR-100 and
      ImageNet16-120 the weights train on the whole training set and the architecture on the x-valid
      half of the test set (`cifar100-test-split.txt`, `imagenet-16-120-test-split.txt`); for CIFAR-10
      on the train / valid halves of the training set (`cifar-split.txt`). The file is data.xvalid_split_file.

    Returns ((weight_images, weight_labels), (arch_images, arch_labels)).
    """
    check_split_config(data_config)
    if _get(data_config, "split", "train_portion") == "train_portion":
        return search_split(dataset, float(_get(data_config, "train_portion", 0.5)))
    return nb201_xvalid_split(dataset, os.path.expanduser(str(_get(data_config, "xvalid_split_file", ""))))


def read_nb201_split_file(path: str) -> dict[str, np.ndarray]:
    """A NAS-Bench-201 split file as {key: int64 indices}.

    The files are AutoDL's config format, JSON with one `"key": ["int", ["0", "5", ...]]` per split
    (`cifar-split.txt`: train / valid; `cifar100-test-split.txt`, `imagenet-16-120-test-split.txt`:
    xvalid / xtest). A plain list of ints per key is accepted too.
    """
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
        if not isinstance(raw, dict):
            raise ValueError(f"it holds a {type(raw).__name__}, not a JSON object")
        out = {}
        for key, value in raw.items():
            if (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
                    and isinstance(value[1], list)):
                value = value[1]  # AutoDL's ["int", [...]]
            out[key] = np.asarray([int(v) for v in value], np.int64)
    except (OSError, ValueError, TypeError) as e:
        raise UserError(f"cannot read the NAS-Bench-201 split file {path} ({type(e).__name__}: {e}); expected "
                        'JSON like {"xvalid": ["int", ["1", "3", ...]], "xtest": ["int", [...]]}') from None
    return out


def nb201_xvalid_split(dataset: Dataset, split_file: str,
                       ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """AutoDL's NAS-Bench-201 search split from its split file (see `search_split_for`)."""
    spec = get_spec(dataset.name)
    if not dataset.original_order:
        raise UserError(
            f"data.split=nb201_xvalid: the {dataset.name} data from {dataset.source} is not in the original "
            "order that the NAS-Bench-201 split file indexes (TFDS keeps no example ids for it); use "
            f"data.source=folder ({spec.folder.dirname}) or data.split=train_portion")
    indices = read_nb201_split_file(split_file)
    keys = ("train", "valid") if spec.nb201_split_of == "train" else ("xvalid", "xtest")
    if any(k not in indices for k in keys):
        raise UserError(f"{split_file} has keys {', '.join(indices) or '(none)'}; the {dataset.name} split file "
                        f"({spec.nb201_split_file}) has {' and '.join(keys)}")
    pool_images, pool_labels = ((dataset.train_images, dataset.train_labels) if spec.nb201_split_of == "train"
                                else (dataset.test_images, dataset.test_labels))
    both = np.concatenate([indices[keys[0]], indices[keys[1]]])
    # The two halves partition the split they index: this also catches a file for another dataset and
    # data that is not the full dataset (synthetic, a subset).
    if len(both) != len(pool_labels) or not np.array_equal(np.sort(both), np.arange(len(pool_labels))):
        raise UserError(
            f"{split_file}: {keys[0]} ({len(indices[keys[0]])}) and {keys[1]} ({len(indices[keys[1]])}) must "
            f"together index each of the {len(pool_labels)} {spec.nb201_split_of} images of {dataset.name} "
            f"({dataset.source}) exactly once; is it {spec.nb201_split_file}, and is the data complete? "
            "(synthetic data: use data.split=train_portion)")
    arch = indices[keys[0]] if spec.nb201_split_of == "test" else indices["valid"]
    arch_split = (pool_images[arch], pool_labels[arch])
    if spec.nb201_split_of == "test":
        return (dataset.train_images, dataset.train_labels), arch_split
    train = indices["train"]
    return (dataset.train_images[train], dataset.train_labels[train]), arch_split


# ------------------------------------------------------------------------------------------------
# load(): dispatch on data_config.source.


def _get(config: Any, key: str, default: Any) -> Any:
    """A key of the data config; ConfigDict, dict and plain objects all work."""
    if hasattr(config, "get"):
        return config.get(key, default)
    return getattr(config, key, default)


def load(data_config: Any) -> Dataset:
    """Load `data_config.name` from `data_config.source` ("auto" | "tfds" | "folder" | "synthetic")."""
    spec = get_spec(_get(data_config, "name", ""))
    source = _get(data_config, "source", "auto")
    data_dir = str(_get(data_config, "dir", "") or "")
    if source == "synthetic":
        size = int(_get(data_config, "synthetic_size", _DEFAULT_SYNTHETIC_SIZE))
        image_size = _get(data_config, "image_size", None)
        return load_synthetic(spec.name, size=size, image_size=None if image_size is None else int(image_size))
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
        f"  - data.source=folder and data.dir=<folder holding {spec.folder.dirname}> "
        f"({spec.folder.description});\n"
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


def load_synthetic(name: str, size: int = _DEFAULT_SYNTHETIC_SIZE, image_size: int | None = None) -> Dataset:
    """`size` random images per split, the same on every call. Each class has its own mean colour, so a
    network can learn something and a smoke test can see the loss fall. `image_size` defaults to the
    dataset's (32 for CIFAR, 16 for ImageNet16-120)."""
    spec = get_spec(name)
    image_size = spec.image_shape[0] if image_size is None else image_size
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
# Python-pickle folders: CIFAR python versions and the downsampled-ImageNet pickle release.


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
                f"refusing global {module}.{name}: a batch file holds only dicts, lists, bytes and "
                "numpy arrays") from None


def _read_batch(path: Path, spec: DatasetSpec) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch as (uint8 NHWC images, int32 labels), keeping only the dataset's classes."""
    layout, image_shape = spec.folder, spec.image_shape
    label_key = layout.label_key
    low = layout.first_label
    high = low + (layout.file_classes or spec.num_classes)  # exclusive
    expected = (f"a pickled dict with b'data' (uint8 [N, {int(np.prod(image_shape))}], rows in CHW order) "
                f"and {label_key!r} (N ints in [{low}, {high}))")
    if not path.is_file():
        raise DataUnavailableError(f"missing {spec.name} batch file {path}: expected {expected}")
    try:
        with open(path, "rb") as f:
            batch = _ArrayOnlyUnpickler(f, encoding="bytes").load()
    except Exception as e:  # anything from a truncated or foreign file: say which file and what it should be
        raise UserError(f"cannot read {spec.name} batch file {path} ({type(e).__name__}: {e}); expected "
                        f"{expected}") from e
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
    if len(labels) and (labels.min() < low or labels.max() >= high):
        raise UserError(f"{path}: labels span [{labels.min()}, {labels.max()}]; expected {expected}")
    labels = labels.astype(np.int64) - low
    # ImageNet16-120 keeps labels 1..120 of 1..1000 (AutoDL: `if 1 <= L <= use_num_of_class_only`), in
    # file order; selecting before the reshape copies only the kept rows.
    keep = labels < spec.num_classes
    if not keep.all():
        data, labels = data[keep], labels[keep]
    images = data.reshape(len(data), *c_h_w).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int32)


def _resolve_folder(spec: DatasetSpec, data_dir: str) -> Path | None:
    """The `cifar-10-batches-py`-like folder at or directly under data_dir, if there is one."""
    d = Path(data_dir).expanduser()
    dirnames = (spec.folder.dirname, *spec.folder.other_dirnames)
    for dirname in dirnames:
        if (d / dirname).is_dir():
            return d / dirname
    if d.is_dir() and (d.name in dirnames or (d / spec.folder.train_files[0]).is_file()):
        return d
    return None


def load_folder(name: str, data_dir: str = "") -> Dataset:
    """Read the python-pickle layout. `data_dir` is the folder holding `cifar-10-batches-py` (or
    `cifar-100-python`, or `ImageNet16` with train_data_batch_1..10 and val_data) or that folder itself;
    "" looks in ./data and ../data."""
    spec = get_spec(name)
    places = [data_dir] if data_dir else list(_DEFAULT_FOLDER_PLACES)
    folder = next((f for f in map(lambda p: _resolve_folder(spec, p), places) if f is not None), None)
    if folder is None:
        tried = ", ".join(os.path.abspath(p) for p in places)
        raise DataUnavailableError(
            f"no {spec.folder.dirname} folder at or under {tried}: data.dir must name the folder holding "
            f"{spec.folder.dirname} (files {', '.join(spec.folder.train_files + spec.folder.test_files)}: "
            f"{spec.folder.description}) or that folder itself")

    def read(files: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        parts = [_read_batch(folder / f, spec) for f in files]
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
    """Modules the tfds builders need to prepare data and that are not installed."""
    return [m for m in ("tensorflow", "importlib_resources") if importlib.util.find_spec(m) is None]


def _tfds_download_blocker(spec: DatasetSpec) -> str | None:
    """Why TFDS cannot download and prepare `spec` here, or None when it can."""
    missing = _missing_modules_for_prepare()
    if missing:
        # No network probe: without these modules preparing fails whatever the network does.
        return (f"the tfds {spec.tfds_name} builder cannot prepare data without TensorFlow (it encodes every "
                "image with tf.image.encode_png, and the CIFAR builders read the archive with tf.io.gfile; "
                "tensorflow-datasets also imports importlib_resources when preparing); not installed: "
                + ", ".join(missing))
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
    label_map = None
    if spec.tfds_class_names is not None:
        names = builder.info.features[spec.tfds_label_key].names
        try:
            label_map = imagenet16_classes.label_map(names, spec.tfds_class_names)
        except ValueError as e:
            raise UserError(f"the TFDS labels of {spec.tfds_name} under {data_dir} cannot be mapped onto "
                            f"{spec.name}: {e}") from None
    splits = tfds.data_source(spec.tfds_name, data_dir=data_dir, download=False)
    train_images, train_labels, train_ordered = _read_tfds_split(splits["train"], spec, label_map)
    test_images, test_labels, test_ordered = _read_tfds_split(splits[spec.tfds_test_split], spec, label_map)
    ordered = train_ordered and test_ordered
    return Dataset(spec.name, train_images, train_labels, test_images, test_labels, spec.num_classes,
                   source=f"tfds:{data_dir}" + ("" if ordered else " (TFDS stored order)"),
                   original_order=ordered)


def _read_tfds_split(source: Sequence[dict], spec: DatasetSpec, label_map: np.ndarray | None = None,
                     chunk: int = 2048) -> tuple[np.ndarray, np.ndarray, bool]:
    """All records of one split as arrays, put back into the original dataset order when the records
    carry their original index. With `label_map` (TFDS label -> class or -1), only the images of mapped
    classes are kept. Returns (images, labels, whether the original order was restored)."""
    n = len(source)
    image_parts, label_parts, index_parts = [], [], []
    has_ids = True
    for start in range(0, n, chunk):
        keys = list(range(start, min(n, start + chunk)))
        examples = source.__getitems__(keys)
        labels = np.asarray([int(example[spec.tfds_label_key]) for example in examples], np.int64)
        if label_map is not None:
            labels = label_map[labels]
        kept = [i for i, label in enumerate(labels) if label >= 0]
        images = np.empty((len(kept), *spec.image_shape), np.uint8)
        original_index = np.empty((len(kept),), np.int64)
        for j, i in enumerate(kept):
            example = examples[i]
            images[j] = example["image"]
            example_id = example.get("id")
            if example_id is None:
                has_ids = False
                continue
            if isinstance(example_id, bytes):
                example_id = example_id.decode()
            original_index[j] = int(str(example_id).rsplit("_", 1)[-1])
        image_parts.append(images)
        label_parts.append(labels[kept].astype(np.int32))
        index_parts.append(original_index)
    images = np.concatenate(image_parts) if image_parts else np.empty((0, *spec.image_shape), np.uint8)
    labels = np.concatenate(label_parts) if label_parts else np.empty((0,), np.int32)
    # TFDS shuffles records when preparing; the "id" ("train_00042") is the original position.
    if not has_ids:
        return images, labels, False
    original_index = np.concatenate(index_parts) if index_parts else np.empty((0,), np.int64)
    order = np.argsort(original_index)
    # Every record kept: the ids must be exactly 0..n-1; some dropped: at least distinct.
    expected = np.arange(n) if label_map is None else np.unique(original_index)
    if not np.array_equal(original_index[order], expected):
        return images, labels, False
    return images[order], labels[order], True

