"""ImageNet (ILSVRC2012) for the host input pipeline: sources, transforms, PC-DARTS search subsets.

The images are decoded and augmented on the host, example by example, by an `ImageNetReader` (a
`jnas.data.host_pipeline.ExampleReader`); `HostLoader` runs it in grain worker processes. The random
horizontal flip stays on the device (`jnas.data.augment`), so the readers never flip.

Sources (`data.source`):
- "tfds": TFDS `imagenet2012` prepared as array_record, read with `tfds.data_source` (no TensorFlow).
  The images are read as raw JPEG bytes (`tfds.decode.SkipDecoding`) and decoded here with Pillow, so the
  random crop runs on the decoded image once. TFDS cannot download ImageNet: when the data is not prepared
  the error gives the manual steps. Labels (and file names) of a split are read once, by a pass over all of
  its records, and cached in a small .npz (`data.label_cache_dir`), so later runs build the per-class
  subsets without reading the images.
- "folder": the torchvision `ImageFolder` layout the PyTorch references read: DIR/train/<wnid>/*.JPEG and
  DIR/val/<wnid>/*.JPEG; classes are the sorted folder names, files in sorted order.
- "synthetic": deterministic random images (no JPEG), a mean colour per class, for smoke tests.
- "auto": prepared TFDS data under data.dir (or TFDS's data_dir), else the folder layout at data.dir.

Transforms (torchvision semantics on PIL images, all randomness from `np.random.default_rng(seed)`):
- training: RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3)) with torchvision's 10 attempts and
  centre-crop fallback, then ColorJitter(brightness, contrast, saturation, hue) in a random order. DARTS,
  PC-DARTS and DrNAS train the ImageNet *evaluation* networks with ColorJitter(0.4, 0.4, 0.4, 0.2); their
  ImageNet *search* scripts use no colour jitter (PC-DARTS train_search_imagenet.py, DrNAS
  DARTS-space/train_search_imagenet.py: RandomResizedCrop(224) and a flip, for both subsets).
- evaluation: resize the shorter side to round(size * 256 / 224) (256 for 224), centre crop size x size.

Config keys (config.data), with the defaults `search_readers` / `train_readers` use:
  name="imagenet2012"; source="auto"|"tfds"|"folder"|"synthetic"; dir (TFDS data_dir or the ImageFolder
  root; "" = TFDS_DATA_DIR or ~/tensorflow_datasets); image_size=224; num_classes=1000 (class folders a
  folder source must have; other values for ImageNet subsets such as ImageNet-100);
  crop_scale=(0.08, 1.0); crop_ratio=(3/4, 4/3); color_jitter=(brightness, contrast, saturation, hue)
  (search: (0, 0, 0, 0), training: (0.4, 0.4, 0.4, 0.2));
  weight_fraction=0.1, arch_fraction=0.025, subset_seed=0 (PC-DARTS search subsets, per class);
  presampled=False (True: the folder's train/ and val/ already are the weight and architecture subsets,
  as PC-DARTS's pre-sampled `imagenet_search` folder);
  label_cache_dir="" (TFDS label cache; "" = next to the prepared data when writable, else
  ~/.cache/jnas/imagenet2012); synthetic_size=512 (images per split); synthetic_classes=1000.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageEnhance

from jnas.data.sources import DataUnavailableError
from jnas.errors import UserError

NAME = "imagenet2012"
NUM_CLASSES = 1000
# torchvision's ImageNet statistics, as every reference normalises (mean, std in [0, 1] units).
NORMALIZATION = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
SOURCES = ("auto", "tfds", "folder", "synthetic")
# torchvision.datasets.folder.IMG_EXTENSIONS, compared case-insensitively as ImageFolder does.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
# ColorJitter of quark0/darts, PC-DARTS and DrNAS train_imagenet.py (evaluation-network training).
TRAIN_COLOR_JITTER = (0.4, 0.4, 0.4, 0.2)
NO_COLOR_JITTER = (0.0, 0.0, 0.0, 0.0)
# The PC-DARTS ImageNet search subsets (methods.md §2.4): per class, 10% for the weights, 2.5% for α.
WEIGHT_FRACTION = 0.1
ARCH_FRACTION = 0.025
EVAL_RESIZE_RATIO = 256 / 224  # Resize(256) before CenterCrop(224)
TFDS_SPLITS = {"train": "train", "val": "validation"}
FOLDER_SPLITS = {"train": "train", "val": "val"}
_SYNTHETIC_SEED = 0


def _get(config: Any, key: str, default: Any) -> Any:
    if config is None:
        return default
    if hasattr(config, "get"):
        return config.get(key, default)
    return getattr(config, key, default)


# ------------------------------------------------------------------------------------------------------------
# Transforms


@dataclasses.dataclass(frozen=True)
class Transform:
    """The training and evaluation transforms of one image size.

    Attributes:
      image_size: side of the square output (224).
      crop_scale: RandomResizedCrop's range of the crop's area as a fraction of the image's.
      crop_ratio: its range of the crop's aspect ratio (width / height), sampled log-uniformly.
      color_jitter: ColorJitter (brightness, contrast, saturation, hue); all 0 disables it.
    """

    image_size: int = 224
    crop_scale: tuple[float, float] = CROP_SCALE
    crop_ratio: tuple[float, float] = CROP_RATIO
    color_jitter: tuple[float, float, float, float] = NO_COLOR_JITTER

    def __post_init__(self):
        if int(self.image_size) < 1:
            raise UserError(f"data.image_size={self.image_size} must be a positive int")
        scale, ratio = tuple(map(float, self.crop_scale)), tuple(map(float, self.crop_ratio))
        if len(scale) != 2 or not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise UserError(f"data.crop_scale={self.crop_scale} must be (low, high) with 0 < low <= high <= 1")
        if len(ratio) != 2 or not 0.0 < ratio[0] <= ratio[1]:
            raise UserError(f"data.crop_ratio={self.crop_ratio} must be (low, high) with 0 < low <= high")
        jitter = tuple(map(float, self.color_jitter))
        if len(jitter) != 4 or min(jitter) < 0 or jitter[3] > 0.5:
            raise UserError(f"data.color_jitter={self.color_jitter} must be (brightness, contrast, saturation, "
                            "hue), each >= 0, hue <= 0.5 (torchvision's ColorJitter)")
        object.__setattr__(self, "image_size", int(self.image_size))
        object.__setattr__(self, "crop_scale", scale)
        object.__setattr__(self, "crop_ratio", ratio)
        object.__setattr__(self, "color_jitter", jitter)

    def train(self, image: Image.Image, rng: np.random.Generator) -> np.ndarray:
        """RandomResizedCrop, then ColorJitter: uint8 [size, size, 3]."""
        image = random_resized_crop(image, rng, self.image_size, self.crop_scale, self.crop_ratio)
        image = color_jitter(image, rng, self.color_jitter)
        return np.asarray(image, np.uint8)

    def eval(self, image: Image.Image) -> np.ndarray:
        """Resize the shorter side to round(size * 256 / 224), centre crop: uint8 [size, size, 3]."""
        return np.asarray(resize_center_crop(image, self.image_size), np.uint8)


def random_resized_crop_params(rng: np.random.Generator, height: int, width: int,
                               scale: Sequence[float] = CROP_SCALE,
                               ratio: Sequence[float] = CROP_RATIO) -> tuple[int, int, int, int]:
    """torchvision `RandomResizedCrop.get_params`: (top, left, crop_height, crop_width).

    Up to 10 attempts draw an area fraction uniformly from `scale` and an aspect ratio log-uniformly from
    `ratio`; the first crop that fits is placed uniformly. When none fits, the centre crop of the whole
    image with its aspect ratio clamped into `ratio`.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect_ratio = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        # Python's round (half to even), as torchvision.
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(image: Image.Image, rng: np.random.Generator, size: int,
                        scale: Sequence[float] = CROP_SCALE, ratio: Sequence[float] = CROP_RATIO) -> Image.Image:
    """torchvision `RandomResizedCrop(size, scale, ratio)`: crop, then bilinear resize to size x size."""
    width, height = image.size
    top, left, h, w = random_resized_crop_params(rng, height, width, scale, ratio)
    return image.crop((left, top, left + w, top + h)).resize((size, size), Image.BILINEAR)


def _adjust_hue(image: Image.Image, hue_factor: float) -> Image.Image:
    """torchvision `F_pil.adjust_hue`: shift the HSV hue channel by hue_factor * 255, wrapping around."""
    h, s, v = image.convert("HSV").split()
    # torchvision adds np.uint8(hue_factor * 255), i.e. the value truncated towards zero, modulo 256.
    shifted = (np.asarray(h, np.int32) + int(hue_factor * 255)) % 256
    h = Image.fromarray(shifted.astype(np.uint8), "L")
    return Image.merge("HSV", (h, s, v)).convert("RGB")


def color_jitter(image: Image.Image, rng: np.random.Generator,
                 strengths: Sequence[float] = TRAIN_COLOR_JITTER) -> Image.Image:
    """torchvision `ColorJitter(brightness, contrast, saturation, hue)` on an RGB image.

    The four adjustments run in a random order, each with a factor drawn uniformly from
    [max(0, 1 - s), 1 + s] (hue: a shift in [-s, s]); a strength of 0 skips that adjustment and draws
    nothing, so all-zero strengths return the image unchanged.
    """
    brightness, contrast, saturation, hue = (float(s) for s in strengths)
    if brightness == contrast == saturation == hue == 0.0:
        return image
    order = rng.permutation(4)

    def factor(strength: float) -> float | None:
        return None if strength == 0.0 else float(rng.uniform(max(0.0, 1.0 - strength), 1.0 + strength))

    factors = [factor(brightness), factor(contrast), factor(saturation),
               None if hue == 0.0 else float(rng.uniform(-hue, hue))]
    for fn_id in order:
        f = factors[fn_id]
        if f is None:
            continue
        if fn_id == 0:
            image = ImageEnhance.Brightness(image).enhance(f)
        elif fn_id == 1:
            image = ImageEnhance.Contrast(image).enhance(f)
        elif fn_id == 2:
            image = ImageEnhance.Color(image).enhance(f)
        else:
            image = _adjust_hue(image, f)
    return image


def eval_resize_size(image_size: int) -> int:
    """The shorter side before the evaluation centre crop: 256 for 224."""
    return int(round(image_size * EVAL_RESIZE_RATIO))


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """torchvision `Resize(round(size * 256 / 224))` (shorter side, bilinear) then `CenterCrop(size)`."""
    target = eval_resize_size(size)
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    if short != target:
        new_long = int(target * long / short)
        new_w, new_h = (target, new_long) if width <= height else (new_long, target)
        image = image.resize((new_w, new_h), Image.BILINEAR)
    width, height = image.size
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def decode(data: bytes | memoryview) -> Image.Image:
    """JPEG (or PNG, ...) bytes -> RGB PIL image, as torchvision's `pil_loader` (grayscale and CMYK too)."""
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


# ------------------------------------------------------------------------------------------------------------
# Image stores: where the example `i` of a reader comes from. Each is small when pickled (file names,
# record indices), because grain sends the reader to every worker process.


class FolderStore:
    """Image files under `root`, named by relative paths (bytes, one per example)."""

    def __init__(self, root: str, paths: np.ndarray):
        self.root = str(root)
        self.paths = np.asarray(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> Image.Image:
        path = os.path.join(self.root, self.paths[index].decode())
        with open(path, "rb") as f:
            return decode(f.read())

    def subset(self, indices: np.ndarray) -> "FolderStore":
        return FolderStore(self.root, self.paths[indices])


class TfdsStore:
    """Records of one split of prepared array_record TFDS `imagenet2012`, opened lazily in each process.

    `record_indices` None stands for all `num_records` records in order (nothing to pickle for a whole split).
    """

    def __init__(self, data_dir: str, split: str, record_indices: np.ndarray | None, num_records: int):
        self.data_dir = str(data_dir)
        self.split = split
        self.record_indices = None if record_indices is None else np.asarray(record_indices, np.int64)
        self.num_records = int(num_records) if record_indices is None else len(self.record_indices)
        self._source = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_source"] = None  # file handles do not pickle; each worker opens its own
        return state

    def __len__(self) -> int:
        return self.num_records

    def _record(self, index: int) -> int:
        return int(index) if self.record_indices is None else int(self.record_indices[index])

    def _open(self):
        if self._source is None:
            self._source = _tfds_source(self.data_dir, self.split)
        return self._source

    def load(self, index: int) -> Image.Image:
        return decode(self._open()[self._record(index)]["image"])

    def subset(self, indices: np.ndarray) -> "TfdsStore":
        records = indices if self.record_indices is None else self.record_indices[indices]
        return TfdsStore(self.data_dir, self.split, records, len(records))


class SyntheticStore:
    """Deterministic random images, no files: example i's pixels depend on (seed, split, i) only.

    Each image has its class's mean colour plus noise and a random size between `base` and 1.5 * `base`
    on each side, so the crops and resizes of the transforms have something to do.
    """

    def __init__(self, seed: int, split: str, example_ids: np.ndarray, labels: np.ndarray, num_classes: int,
                 base: int):
        self.seed, self.split, self.base, self.num_classes = int(seed), split, int(base), int(num_classes)
        self.example_ids = np.asarray(example_ids, np.int64)
        self.labels = np.asarray(labels, np.int32)

    def __len__(self) -> int:
        return len(self.example_ids)

    def load(self, index: int) -> Image.Image:
        colours = np.random.default_rng(self.seed).uniform(48, 208, (self.num_classes, 3))
        split_id = list(TFDS_SPLITS).index(self.split)
        rng = np.random.default_rng((self.seed, split_id, int(self.example_ids[index])))
        h, w = (int(v) for v in rng.integers(self.base, self.base + self.base // 2 + 1, 2))
        pixels = colours[self.labels[index]] + rng.normal(0.0, 40.0, (h, w, 3))
        return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")

    def subset(self, indices: np.ndarray) -> "SyntheticStore":
        return SyntheticStore(self.seed, self.split, self.example_ids[indices], self.labels[indices],
                              self.num_classes, self.base)


# ------------------------------------------------------------------------------------------------------------
# The reader


class ImageNetReader:
    """`ExampleReader` over one split (or a subset of it) of ImageNet.

    `read(index, seed)` decodes example `index` and applies the training transform drawn from
    `np.random.default_rng(seed)` (an int; reduced modulo 2**64, so negative seeds work too), or the
    evaluation transform when `seed` is None. `labels` come without decoding anything. `keys` are the
    examples' file names (bytes), which make the PC-DARTS subsets independent of the source's order.

    Picklable and small: a folder reader holds relative paths, a TFDS reader record indices; the keys stay
    behind (a pickled copy, e.g. in a grain worker, only reads, and has keys None).
    """

    def __init__(self, store: FolderStore | TfdsStore | SyntheticStore, labels: np.ndarray,
                 keys: np.ndarray | None, transform: Transform, num_classes: int, source: str):
        labels = np.asarray(labels, np.int32)
        if len(labels) != len(store) or (keys is not None and len(keys) != len(store)):
            raise ValueError(f"{len(store)} examples but {len(labels)} labels and "
                             f"{'no' if keys is None else len(keys)} keys")
        self.store = store
        self.labels = labels
        self.keys = None if keys is None else np.asarray(keys)
        self.transform = transform
        self.num_classes = int(num_classes)
        self.source = source  # where the images come from, for logs
        self.image_shape = (transform.image_size, transform.image_size, 3)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["keys"] = None
        return state

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return f"ImageNetReader({len(self)} examples, {self.image_shape}, {self.source})"

    def read(self, index: int, seed: int | None) -> np.ndarray:
        image = self.store.load(int(index))
        if seed is None:
            return self.transform.eval(image)
        return self.transform.train(image, np.random.default_rng(int(seed) % 2**64))

    def subset(self, indices: np.ndarray, source: str | None = None) -> "ImageNetReader":
        """A reader of the examples `indices` (int array into this reader), in that order."""
        indices = np.asarray(indices, np.int64)
        keys = None if self.keys is None else self.keys[indices]
        return ImageNetReader(self.store.subset(indices), self.labels[indices], keys, self.transform,
                              self.num_classes, source or self.source)


# ------------------------------------------------------------------------------------------------------------
# Folder source (torchvision ImageFolder layout)


def _folder_layout_hint(root: Path) -> str:
    return (f"data.source=folder expects the torchvision ImageFolder layout that the PyTorch references read: "
            f"{root}/train/<wnid>/*.JPEG and {root}/val/<wnid>/*.JPEG (one folder per class, named by its "
            "WordNet ID, e.g. n01440764; the validation images sorted into class folders too, e.g. with "
            "the widely used valprep.sh). data.dir must name the folder holding train/ and val/")


def scan_folder(root: str | os.PathLike, split: str = "train", num_classes: int | None = NUM_CLASSES,
                ) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """(relative paths as bytes, int32 labels, class names) of `root/<split>` like torchvision ImageFolder.

    Classes are the sorted sub-folder names; each class's files are found by a sorted walk (following
    links) and kept when their extension is an image one (case-insensitive). `num_classes` (None: any) is
    how many class folders there must be.
    """
    root = Path(root).expanduser()
    if split not in FOLDER_SPLITS:
        raise ValueError(f"split={split!r} must be one of {', '.join(FOLDER_SPLITS)}")
    if not root.is_dir():
        raise DataUnavailableError(f"data.dir={str(root)!r} is not a folder. {_folder_layout_hint(root)}")
    split_dir = root / FOLDER_SPLITS[split]
    if not split_dir.is_dir():
        raise DataUnavailableError(f"{root} has no {FOLDER_SPLITS[split]}/ folder. {_folder_layout_hint(root)}")
    classes = tuple(sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir()))
    loose = [entry.name for entry in os.scandir(split_dir)
             if entry.is_file() and entry.name.lower().endswith(IMG_EXTENSIONS)]
    if not classes:
        extra = (f" It holds {len(loose)} images directly (e.g. {loose[0]}): sort them into one folder per "
                 "class." if loose else "")
        raise DataUnavailableError(f"{split_dir} has no class folders.{extra} {_folder_layout_hint(root)}")
    if num_classes is not None and len(classes) != num_classes:
        raise DataUnavailableError(
            f"{split_dir} has {len(classes)} class folders, expected {num_classes} (data.num_classes): an "
            f"incomplete copy? (first: {classes[0]}, last: {classes[-1]}). {_folder_layout_hint(root)}")
    paths: list[bytes] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        class_dir = split_dir / name
        found = 0
        for dirpath, _, filenames in sorted(os.walk(class_dir, followlinks=True)):
            rel = os.path.relpath(dirpath, split_dir)
            for filename in sorted(filenames):
                if filename.lower().endswith(IMG_EXTENSIONS):
                    paths.append(os.path.join(rel, filename).encode())
                    found += 1
        if not found:
            raise DataUnavailableError(
                f"class folder {class_dir} has no images (extensions {', '.join(IMG_EXTENSIONS)}): an "
                f"incomplete copy? {_folder_layout_hint(root)}")
        labels.extend([label] * found)
    return np.asarray(paths, dtype=bytes), np.asarray(labels, np.int32), classes


def folder_reader(root: str | os.PathLike, split: str, transform: Transform,
                  num_classes: int = NUM_CLASSES) -> ImageNetReader:
    """The whole `split` ("train" | "val") of an ImageFolder-layout ImageNet at `root`.

    Both splits must have the same class folders, so that a label means the same class in both.
    """
    root = Path(root).expanduser()
    paths, labels, classes = scan_folder(root, split, num_classes)
    other = "val" if split == "train" else "train"
    other_dir = root / FOLDER_SPLITS[other]
    if other_dir.is_dir():
        other_classes = tuple(sorted(e.name for e in os.scandir(other_dir) if e.is_dir()))
        if other_classes != classes:
            only = sorted(set(classes) ^ set(other_classes))
            raise DataUnavailableError(
                f"{root}/train and {root}/val have different class folders (e.g. {', '.join(only[:3])} is in "
                "only one of them), so their labels would not agree. " + _folder_layout_hint(root))
    split_dir = root / FOLDER_SPLITS[split]
    keys = np.asarray([os.path.basename(p) for p in paths], dtype=bytes)
    logging.info("ImageNet %s: %d images of %d classes in %s", split, len(paths), len(classes), split_dir)
    return ImageNetReader(FolderStore(str(split_dir), paths), labels, keys, transform, len(classes),
                          f"folder:{split_dir}")


# ------------------------------------------------------------------------------------------------------------
# TFDS source


def default_tfds_dir() -> str:
    """Where tfds looks when no data_dir is given."""
    return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def manual_download_steps(data_dir: str) -> str:
    """How to prepare TFDS imagenet2012 by hand (TFDS cannot download it)."""
    manual_dir = os.path.join(data_dir, "downloads", "manual")
    return (
        f"TFDS cannot download {NAME}; prepare it by hand:\n"
        "  1. register at https://image-net.org/download-images and download ILSVRC2012_img_train.tar "
        "(138 GB) and ILSVRC2012_img_val.tar (6.3 GB);\n"
        f"  2. put both files into TFDS's manual_dir, {manual_dir};\n"
        "  3. on a machine with TensorFlow installed (the imagenet2012 builder needs it to prepare the data, "
        "not to read it), run\n"
        f"       tfds build {NAME} --data_dir={data_dir} --manual_dir={manual_dir} --file_format=array_record\n"
        "     (array_record is the only format tfds.data_source reads without TensorFlow), and copy the "
        f"resulting {os.path.join(data_dir, NAME)} folder here if you prepared it elsewhere;\n"
        "  or use data.source=folder with data.dir=<folder holding train/<wnid>/*.JPEG and val/<wnid>/*.JPEG>, "
        "or data.source=synthetic for a smoke test.")


def tfds_prepared(data_dir: str) -> bool:
    """A cheap check (no tfds import) for <data_dir>/imagenet2012/<version>/dataset_info.json."""
    return any((Path(data_dir).expanduser() / NAME).glob("*/dataset_info.json"))


def _tfds_builder(data_dir: str):
    import tensorflow_datasets as tfds  # deferred: its import costs about a second

    builder = tfds.builder(NAME, data_dir=data_dir)
    if not builder.is_prepared():
        raise DataUnavailableError(
            f"no prepared TFDS {NAME} under {data_dir} (looked for {builder.data_dir}).\n"
            + manual_download_steps(data_dir))
    file_format = builder.info.file_format
    if file_format not in tfds.core.file_adapters.FileFormat.with_random_access():
        raise DataUnavailableError(
            f"the TFDS {NAME} data under {data_dir} is stored as {file_format.value}, which tfds.data_source "
            f"cannot read (no random access). Prepare it again as array_record: `tfds build {NAME} "
            f"--data_dir={data_dir} --file_format=array_record` (with the manual_dir of the first build), or "
            "use data.source=folder.")
    return builder


def _tfds_source(data_dir: str, split: str):
    """The split's records with the image left as JPEG bytes (no TensorFlow, no decoding in tfds)."""
    import tensorflow_datasets as tfds

    return tfds.data_source(NAME, split=split, data_dir=data_dir, download=False,
                            decoders={"image": tfds.decode.SkipDecoding()})


def _label_cache_path(builder: Any, split: str, num_examples: int, cache_dir: str) -> Path:
    name = f"jnas_{NAME}_{builder.info.version}_{split}_{num_examples}_labels.npz"
    if cache_dir:
        return Path(cache_dir).expanduser() / name
    prepared = Path(builder.data_dir)
    if os.access(prepared, os.W_OK):
        return prepared / name
    return Path("~/.cache/jnas").expanduser() / NAME / name


def tfds_labels(data_dir: str, split: str, cache_dir: str = "", chunk: int = 4096,
                ) -> tuple[np.ndarray, np.ndarray]:
    """(int32 labels, file names as bytes) of every record of a prepared split, in record order.

    The first call reads every record once (the images stay undecoded) and caches the result in an .npz
    (`cache_dir`, "" = next to the prepared data when writable, else ~/.cache/jnas/imagenet2012); later
    calls load the cache. Logged either way.
    """
    builder = _tfds_builder(data_dir)
    num_examples = int(builder.info.splits[split].num_examples)
    path = _label_cache_path(builder, split, num_examples, cache_dir)
    if path.is_file():
        with np.load(path, allow_pickle=False) as cached:
            labels, names = cached["labels"], cached["file_names"]
        if len(labels) == num_examples == len(names):
            logging.info("ImageNet %s: %d labels from the cache %s", split, num_examples, path)
            return labels.astype(np.int32), names
        logging.warning("ImageNet label cache %s holds %d labels, not %d: reading them again", path,
                        len(labels), num_examples)
    source = _tfds_source(data_dir, split)
    start = time.perf_counter()
    labels = np.empty((num_examples,), np.int32)
    names: list[bytes] = []
    logging.info("ImageNet %s: reading the labels of %d TFDS records once (images not decoded)", split,
                 num_examples)
    for first in range(0, num_examples, chunk):
        keys = list(range(first, min(num_examples, first + chunk)))
        for k, example in zip(keys, source.__getitems__(keys)):
            labels[k] = int(example["label"])
            name = example["file_name"]
            names.append(name if isinstance(name, bytes) else str(name).encode())
        if (first // chunk) % 50 == 49:
            logging.info("ImageNet %s labels: %d/%d records (%.0f s)", split, first + len(keys), num_examples,
                         time.perf_counter() - start)
    file_names = np.asarray(names, dtype=bytes)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        with open(tmp, "wb") as f:
            np.savez(f, labels=labels, file_names=file_names)
        os.replace(tmp, path)
        logging.info("ImageNet %s: read %d labels in %.0f s; cached them in %s", split, num_examples,
                     time.perf_counter() - start, path)
    except OSError as e:
        logging.warning("ImageNet %s: could not cache the labels in %s (%s); set data.label_cache_dir to a "
                        "writable folder to skip this pass next time", split, path, e)
    return labels, file_names


def tfds_reader(data_dir: str, split: str, transform: Transform, cache_dir: str = "") -> ImageNetReader:
    """The whole `split` ("train" | "val") of prepared TFDS imagenet2012 under `data_dir`."""
    tfds_split = TFDS_SPLITS[split]
    labels, names = tfds_labels(data_dir, tfds_split, cache_dir)
    store = TfdsStore(data_dir, tfds_split, None, len(labels))
    return ImageNetReader(store, labels, names, transform, NUM_CLASSES, f"tfds:{data_dir}:{tfds_split}")


# ------------------------------------------------------------------------------------------------------------
# Synthetic source


def synthetic_reader(split: str, transform: Transform, size: int, num_classes: int = NUM_CLASSES,
                     label_classes: int | None = None) -> ImageNetReader:
    """`size` deterministic random images of `split`; labels cycle over the first `label_classes` classes
    (all `num_classes` by default) in a fixed random order, so small sets can still fill every class."""
    label_classes = num_classes if label_classes is None else int(label_classes)
    if size < 1 or not 1 <= label_classes <= num_classes:
        raise UserError(f"data.synthetic_size={size} must be >= 1 and data.synthetic_classes={label_classes} "
                        f"in [1, {num_classes}]")
    split_id = list(TFDS_SPLITS).index(split)
    labels = np.random.default_rng((_SYNTHETIC_SEED, split_id)).permutation(
        np.arange(size) % label_classes).astype(np.int32)
    store = SyntheticStore(_SYNTHETIC_SEED, split, np.arange(size), labels, num_classes, transform.image_size)
    keys = np.asarray([f"synthetic_{split}_{i:08d}" for i in range(size)], dtype=bytes)
    return ImageNetReader(store, labels, keys, transform, num_classes,
                          f"synthetic:{split},size={size},classes={label_classes}")


# ------------------------------------------------------------------------------------------------------------
# Dispatch on config.data


def transform_from_config(data_config: Any, default_jitter: Sequence[float]) -> Transform:
    """The `Transform` of config.data (image_size, crop_scale, crop_ratio, color_jitter)."""
    return Transform(
        image_size=int(_get(data_config, "image_size", 224)),
        crop_scale=tuple(_get(data_config, "crop_scale", CROP_SCALE)),
        crop_ratio=tuple(_get(data_config, "crop_ratio", CROP_RATIO)),
        color_jitter=tuple(_get(data_config, "color_jitter", default_jitter)),
    )


def load_split(data_config: Any, split: str, transform: Transform) -> ImageNetReader:
    """The whole `split` ("train" | "val") from config.data.source."""
    name = _get(data_config, "name", NAME)
    if name != NAME:
        raise UserError(f"jnas.data.imagenet reads data.name={NAME!r}, got {name!r}")
    if split not in FOLDER_SPLITS:
        raise ValueError(f"split={split!r} must be one of {', '.join(FOLDER_SPLITS)}")
    source = _get(data_config, "source", "auto")
    data_dir = os.path.expanduser(str(_get(data_config, "dir", "") or ""))
    num_classes = int(_get(data_config, "num_classes", NUM_CLASSES))
    cache_dir = str(_get(data_config, "label_cache_dir", "") or "")
    if source == "synthetic":
        size = int(_get(data_config, "synthetic_size", 512))
        return synthetic_reader(split, transform, size, num_classes,
                                _get(data_config, "synthetic_classes", None))
    if source == "folder":
        if not data_dir:
            raise UserError("data.source=folder needs data.dir, the folder holding train/<wnid>/*.JPEG and "
                            "val/<wnid>/*.JPEG")
        return folder_reader(data_dir, split, transform, num_classes)
    if source == "tfds":
        _require_tfds_classes(num_classes)
        return tfds_reader(data_dir or default_tfds_dir(), split, transform, cache_dir)
    if source == "auto":
        tfds_dir = data_dir or default_tfds_dir()
        if tfds_prepared(tfds_dir):
            _require_tfds_classes(num_classes)
            return tfds_reader(tfds_dir, split, transform, cache_dir)
        if data_dir and (Path(data_dir) / FOLDER_SPLITS["train"]).is_dir():
            return folder_reader(data_dir, split, transform, num_classes)
        raise DataUnavailableError(
            f"No {NAME} data found (data.source=auto). Looked for prepared TFDS data under "
            f"{os.path.abspath(tfds_dir)} and for an ImageFolder layout (train/, val/) at "
            f"{os.path.abspath(data_dir) if data_dir else '(data.dir unset)'}.\n" + manual_download_steps(tfds_dir))
    raise UserError(f"unknown data.source {source!r} for {NAME}; use one of {', '.join(SOURCES)}")


def _require_tfds_classes(num_classes: int) -> None:
    if num_classes != NUM_CLASSES:
        raise UserError(f"data.num_classes={num_classes}: TFDS {NAME} has {NUM_CLASSES} classes; other class "
                        "counts need data.source=folder")


# ------------------------------------------------------------------------------------------------------------
# PC-DARTS search subsets


def per_class_subsets(labels: np.ndarray, weight_fraction: float = WEIGHT_FRACTION,
                      arch_fraction: float = ARCH_FRACTION, seed: int = 0,
                      keys: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """PC-DARTS's fixed ImageNet search subsets: per class, round(weight_fraction * n) examples for the
    weights and round(arch_fraction * n) others for the architecture (methods.md §2.4).

    The choice is a seeded permutation of each class's examples in the order of `keys` (file names; None:
    index order), with a generator of its own per class (`default_rng((seed, class))`). So it is the same on
    every run, and, given file names, the same images whatever order the source stores them in (TFDS
    shuffles its records; a folder lists them sorted). Halves round up (floor(f * n + 0.5)). Classes
    without examples are skipped.

    Returns (weight_indices, arch_indices): sorted int64 indices into `labels`, disjoint.
    """
    labels = np.asarray(labels)
    if not (0.0 < weight_fraction and 0.0 < arch_fraction and weight_fraction + arch_fraction <= 1.0):
        raise UserError(f"data.weight_fraction={weight_fraction} and data.arch_fraction={arch_fraction} must be "
                        "positive with a sum of at most 1 (the two subsets are disjoint)")
    if keys is not None and len(keys) != len(labels):
        raise ValueError(f"{len(keys)} keys for {len(labels)} labels")
    weight_parts, arch_parts = [], []
    by_class = np.argsort(labels, kind="stable")
    classes, starts = np.unique(labels[by_class], return_index=True)
    bounds = list(starts[1:]) + [len(labels)]
    for c, start, stop in zip(classes, starts, bounds):
        members = by_class[start:stop]
        if keys is not None:
            members = members[np.argsort(keys[members], kind="stable")]
        n = len(members)
        n_weight = int(math.floor(weight_fraction * n + 0.5))
        n_arch = int(math.floor(arch_fraction * n + 0.5))
        if n_weight + n_arch > n:  # only when both round up on a tiny class
            n_arch = n - n_weight
        chosen = members[np.random.default_rng((int(seed), int(c))).permutation(n)]
        weight_parts.append(chosen[:n_weight])
        arch_parts.append(chosen[n_weight:n_weight + n_arch])
    weight = np.sort(np.concatenate(weight_parts)) if weight_parts else np.empty((0,), np.int64)
    arch = np.sort(np.concatenate(arch_parts)) if arch_parts else np.empty((0,), np.int64)
    if not len(weight) or not len(arch):
        raise UserError(f"data.weight_fraction={weight_fraction} and data.arch_fraction={arch_fraction} of "
                        f"{len(labels)} images leave the {'weight' if not len(weight) else 'architecture'} subset "
                        "empty; use more images or larger fractions")
    return weight.astype(np.int64), arch.astype(np.int64)


# ------------------------------------------------------------------------------------------------------------
# Readers for search.run and train.run


def search_readers(data_config: Any) -> tuple[ImageNetReader, ImageNetReader, ImageNetReader]:
    """(weight_reader, arch_reader, eval_reader) of the PC-DARTS / DrNAS ImageNet search.

    The weights train on `data.weight_fraction` (10%) of each class's training images, the architecture on
    a disjoint `data.arch_fraction` (2.5%), chosen once by `data.subset_seed`; with `data.presampled` the
    folder's train/ and val/ are those subsets already (PC-DARTS's `imagenet_search`). Both subsets use the
    training transform (the references apply RandomResizedCrop and a flip to both); colour jitter defaults
    to none, as in the references' search scripts. `eval_reader` is the architecture subset again, to be read
    with seeds=None (the deterministic evaluation transform).
    """
    transform = transform_from_config(data_config, NO_COLOR_JITTER)
    if bool(_get(data_config, "presampled", False)):
        data_dir = str(_get(data_config, "dir", "") or "")
        if _get(data_config, "source", "auto") != "folder" or not data_dir:
            raise UserError("data.presampled=True reads a folder whose train/ and val/ are the two search subsets: "
                            "set data.source=folder and data.dir to it")
        num_classes = int(_get(data_config, "num_classes", NUM_CLASSES))
        weight = folder_reader(data_dir, "train", transform, num_classes)
        arch = folder_reader(data_dir, "val", transform, num_classes)
    else:
        train = load_split(data_config, "train", transform)
        weight_idx, arch_idx = per_class_subsets(
            train.labels,
            float(_get(data_config, "weight_fraction", WEIGHT_FRACTION)),
            float(_get(data_config, "arch_fraction", ARCH_FRACTION)),
            int(_get(data_config, "subset_seed", 0)),
            keys=train.keys,
        )
        weight = train.subset(weight_idx, f"{train.source} (weight subset)")
        arch = train.subset(arch_idx, f"{train.source} (architecture subset)")
    logging.info("ImageNet search: %d images train the weights, %d the architecture (%s)", len(weight),
                 len(arch), weight.source)
    return weight, arch, arch


def train_readers(data_config: Any) -> tuple[ImageNetReader, ImageNetReader]:
    """(train_reader, test_reader): the whole training set (training transform, colour jitter by default
    (0.4, 0.4, 0.4, 0.2) as the references' train_imagenet.py) and the validation set, which plays the test
    set (read with seeds=None: resize 256, centre crop 224)."""
    transform = transform_from_config(data_config, TRAIN_COLOR_JITTER)
    return load_split(data_config, "train", transform), load_split(data_config, "val", transform)
