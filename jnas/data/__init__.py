"""Data: CIFAR splits as host arrays (TFDS, CIFAR python folder or synthetic) and on-device augmentation."""

from jnas.data.augment import augment, normalize
from jnas.data.sources import (
    DATASETS,
    SOURCES,
    Dataset,
    DatasetSpec,
    DataUnavailableError,
    FolderLayout,
    get_spec,
    load,
    load_folder,
    load_synthetic,
    load_tfds,
    names,
    normalization,
    search_split,
)

__all__ = [
    "DATASETS", "SOURCES", "Dataset", "DatasetSpec", "DataUnavailableError", "FolderLayout", "augment",
    "get_spec", "load", "load_folder", "load_synthetic", "load_tfds", "names", "normalization",
    "normalize", "search_split",
]
