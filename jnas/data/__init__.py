"""Data: CIFAR-10, CIFAR-100 and ImageNet16-120 splits as host arrays (TFDS, a python-pickle folder or
synthetic), the search splits, and on-device augmentation."""

from jnas.data import imagenet16_classes
from jnas.data.augment import augment, normalize
from jnas.data.sources import (
    DATASETS,
    SOURCES,
    SPLITS,
    Dataset,
    DatasetSpec,
    DataUnavailableError,
    FolderLayout,
    check_split_config,
    get_spec,
    load,
    load_folder,
    load_synthetic,
    load_tfds,
    names,
    nb201_xvalid_split,
    normalization,
    read_nb201_split_file,
    search_split,
    search_split_for,
)

__all__ = [
    "DATASETS", "SOURCES", "SPLITS", "Dataset", "DatasetSpec", "DataUnavailableError", "FolderLayout", "augment",
    "check_split_config", "get_spec", "imagenet16_classes", "load", "load_folder", "load_synthetic", "load_tfds",
    "names", "nb201_xvalid_split", "normalization", "normalize", "read_nb201_split_file", "search_split",
    "search_split_for",
]
