"""ImageNet input: folder and TFDS sources on tiny data written here, transforms, PC-DARTS subsets, the ImageNet
search stem, and the quick variants of the ImageNet search configs."""

from __future__ import annotations

import io
import logging
import math
import os
import pickle
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

import jnas.spaces
from jnas.data import imagenet
from jnas.data.host_pipeline import ExampleReader, HostLoader
from jnas.data.sources import DataUnavailableError
from jnas.errors import UserError
from jnas.nn import supernet
from jnas.nn.networks import count_params

from helpers import load_config

WNIDS = ("n01440764", "n01443537", "n01484850")
TRAIN_PER_CLASS = (8, 12, 20)
VAL_PER_CLASS = 2


def jpeg_bytes(rng: np.random.Generator, height: int, width: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def tiny_imagenet_files(seed: int = 0) -> dict[str, list[tuple[str, int, bytes]]]:
    """{split: [(file_name, label, jpeg bytes)]} with varied image sizes, ImageNet-style names."""
    rng = np.random.default_rng(seed)
    files = {"train": [], "val": []}
    serial = 1
    for label, wnid in enumerate(WNIDS):
        for i in range(TRAIN_PER_CLASS[label]):
            files["train"].append((f"{wnid}_{100 + i}.JPEG", label, jpeg_bytes(rng, *rng.integers(20, 41, 2))))
        for _ in range(VAL_PER_CLASS):
            files["val"].append((f"ILSVRC2012_val_{serial:08d}.JPEG", label, jpeg_bytes(rng, *rng.integers(20, 41, 2))))
            serial += 1
    return files


@pytest.fixture(scope="module")
def files():
    return tiny_imagenet_files()


@pytest.fixture(scope="module")
def folder(tmp_path_factory, files) -> Path:
    """DIR/train/<wnid>/*.JPEG and DIR/val/<wnid>/*.JPEG, the torchvision ImageFolder layout."""
    root = tmp_path_factory.mktemp("imagenet_folder")
    for split, entries in files.items():
        for name, label, data in entries:
            path = root / split / WNIDS[label] / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    (root / "train" / WNIDS[0] / "notes.txt").write_text("not an image")  # skipped, as ImageFolder does
    return root


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory, files) -> str:
    """A prepared array_record `imagenet2012` written without TensorFlow: the builder's own features
    serialise the examples (in a shuffled order, as TFDS stores them) and its DatasetInfo describes them."""
    import tensorflow_datasets as tfds
    from array_record.python.array_record_module import ArrayRecordWriter
    from tensorflow_datasets.core import file_adapters, naming
    from tensorflow_datasets.core import splits as splits_lib

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    builder = tfds.builder("imagenet2012", data_dir=data_dir)
    features = builder.info.features
    os.makedirs(builder.data_dir)
    infos = []
    for split, tfds_split in (("train", "train"), ("val", "validation")):
        template = naming.ShardedFileTemplate(data_dir=builder.data_dir, dataset_name="imagenet2012",
                                              split=tfds_split, filetype_suffix="array_record")
        writer = ArrayRecordWriter(os.fspath(template.sharded_filepaths(1)[0]), "group_size:1")
        num_bytes = 0
        entries = files[split]
        for k in np.random.default_rng(1).permutation(len(entries)):
            name, label, data = entries[k]
            record = features.serialize_example({"image": data, "label": label, "file_name": name})
            writer.write(record)
            num_bytes += len(record)
        writer.close()
        infos.append(splits_lib.SplitInfo(name=tfds_split, shard_lengths=[len(entries)], num_bytes=num_bytes,
                                          filename_template=template))
    builder.info.set_file_format(file_adapters.FileFormat.ARRAY_RECORD, override=True)
    builder.info.set_splits(splits_lib.SplitDict(infos))
    builder.info.write_to_directory(builder.data_dir)
    return data_dir


def small_transform(**kwargs) -> imagenet.Transform:
    return imagenet.Transform(image_size=kwargs.pop("image_size", 16), **kwargs)


# ------------------------------------------------------------------------------------------------------------
# Folder source


def test_folder_source_reads_the_imagefolder_layout(folder, files):
    reader = imagenet.folder_reader(folder, "train", small_transform(), num_classes=3)
    assert isinstance(reader, ExampleReader)
    assert len(reader) == sum(TRAIN_PER_CLASS) and reader.num_classes == 3
    np.testing.assert_array_equal(reader.labels, np.repeat(np.arange(3), TRAIN_PER_CLASS))
    assert reader.labels.dtype == np.int32
    # Files in sorted order per class, as ImageFolder lists them; the .txt file is not an image.
    expected = sorted((label, name) for name, label, _ in files["train"])
    assert [k.decode() for k in reader.keys] == [name for _, name in expected]
    first = np.asarray(Image.open(io.BytesIO(files["train"][0][2])).convert("RGB"))
    raw = reader.store.load(0)
    np.testing.assert_array_equal(np.asarray(raw), first)
    assert reader.read(0, None).shape == reader.image_shape == (16, 16, 3)
    assert reader.read(0, 7).dtype == np.uint8
    val = imagenet.folder_reader(folder, "val", small_transform(), num_classes=3)
    np.testing.assert_array_equal(val.labels, np.repeat(np.arange(3), VAL_PER_CLASS))
    # PC-DARTS's pre-sampled search folder: train/ and val/ are the weight and architecture subsets.
    weight, arch, _ = imagenet.search_readers(
        {"source": "folder", "dir": str(folder), "presampled": True, "num_classes": 3, "image_size": 16})
    assert (len(weight), len(arch)) == (len(reader), len(val))


def test_folder_source_errors(tmp_path, folder):
    with pytest.raises(DataUnavailableError, match="is not a folder"):
        imagenet.folder_reader(tmp_path / "missing", "train", small_transform())
    only_train = tmp_path / "only_train"
    (only_train / "train" / WNIDS[0]).mkdir(parents=True)
    (only_train / "train" / WNIDS[0] / "a.JPEG").write_bytes(b"")
    with pytest.raises(DataUnavailableError, match="no val/ folder"):
        imagenet.folder_reader(only_train, "val", small_transform(), num_classes=1)
    (only_train / "val").mkdir()
    (only_train / "val" / "ILSVRC2012_val_00000001.JPEG").write_bytes(b"")
    with pytest.raises(DataUnavailableError, match="holds 1 images directly"):
        imagenet.folder_reader(only_train, "val", small_transform(), num_classes=1)
    # The real dataset has 1000 classes: a folder with 3 is an incomplete copy unless data.num_classes says so.
    with pytest.raises(DataUnavailableError, match="has 3 class folders, expected 1000"):
        imagenet.folder_reader(folder, "train", small_transform())
    (only_train / "train" / WNIDS[1]).mkdir()
    with pytest.raises(DataUnavailableError, match="has no images"):
        imagenet.folder_reader(only_train, "train", small_transform(), num_classes=2)
    (only_train / "train" / WNIDS[1] / "b.JPEG").write_bytes(b"")
    (only_train / "val" / WNIDS[2]).mkdir()
    with pytest.raises(DataUnavailableError, match="different class folders"):
        imagenet.folder_reader(only_train, "train", small_transform(), num_classes=2)
    with pytest.raises(UserError, match="needs data.dir"):
        imagenet.load_split({"source": "folder"}, "train", small_transform())


# ------------------------------------------------------------------------------------------------------------
# TFDS source


def test_tfds_source_reads_prepared_array_record(tfds_dir, folder, files, caplog):
    import sys

    caplog.set_level(logging.INFO)
    reader = imagenet.tfds_reader(tfds_dir, "train", small_transform())
    assert "tensorflow" not in sys.modules
    assert len(reader) == sum(TRAIN_PER_CLASS)
    assert any("cached them in" in r.getMessage() for r in caplog.records)
    cache = list(Path(tfds_dir).glob("imagenet2012/*/jnas_imagenet2012_*_train_*_labels.npz"))
    assert len(cache) == 1
    # The records are shuffled; label and image still belong together.
    by_name = {name: (label, data) for name, label, data in files["train"]}
    for index in (0, 5, len(reader) - 1):
        label, data = by_name[reader.keys[index].decode()]
        assert reader.labels[index] == label
        np.testing.assert_array_equal(np.asarray(reader.store.load(index)),
                                      np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    caplog.clear()
    again = imagenet.tfds_reader(tfds_dir, "train", small_transform())
    assert any("from the cache" in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(again.labels, reader.labels)
    # Pickles without its open file handles, and reads the same image in the copy.
    reader.read(0, 3)
    copy = pickle.loads(pickle.dumps(reader))
    assert copy.store._source is None
    np.testing.assert_array_equal(copy.read(0, 3), reader.read(0, 3))
    val = imagenet.tfds_reader(tfds_dir, "val", small_transform())
    assert len(val) == 3 * VAL_PER_CLASS
    # The PC-DARTS subsets pick the same images from TFDS and from the folder (chosen by file name).
    config = {"source": "tfds", "dir": tfds_dir, "image_size": 16, "weight_fraction": 0.25, "arch_fraction": 0.25}
    tfds_weight, tfds_arch, _ = imagenet.search_readers(config)
    folder_weight, folder_arch, _ = imagenet.search_readers(
        {**config, "source": "folder", "dir": str(folder), "num_classes": 3})
    assert sorted(tfds_weight.keys) == sorted(folder_weight.keys)
    assert sorted(tfds_arch.keys) == sorted(folder_arch.keys)
    auto = imagenet.load_split({"source": "auto", "dir": tfds_dir}, "val", small_transform())
    assert auto.source.startswith("tfds:")


def test_tfds_not_prepared_fails_fast_with_the_manual_steps(tmp_path):
    with pytest.raises(DataUnavailableError) as info:
        imagenet.load_split({"source": "tfds", "dir": str(tmp_path)}, "train", small_transform())
    message = str(info.value)
    for needed in ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar", "manual_dir",
                   "--file_format=array_record", "data.source=folder"):
        assert needed in message
    assert not any(tmp_path.iterdir())  # nothing downloaded or prepared
    with pytest.raises(DataUnavailableError, match="No imagenet2012 data found"):
        imagenet.load_split({"source": "auto", "dir": str(tmp_path)}, "train", small_transform())
    with pytest.raises(UserError, match="TFDS imagenet2012 has 1000 classes"):
        imagenet.load_split({"source": "tfds", "dir": str(tmp_path), "num_classes": 3}, "train", small_transform())


# ------------------------------------------------------------------------------------------------------------
# Transforms


def test_random_resized_crop_statistics_and_determinism(folder):
    def crops(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        areas, log_ratios = [], []
        for seed in range(2000):
            top, left, h, w = imagenet.random_resized_crop_params(np.random.default_rng(seed), height, width)
            assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
            areas.append(h * w / (height * width))
            log_ratios.append(math.log(w / h))
        return np.asarray(areas), np.asarray(log_ratios)

    for height, width in ((300, 400), (400, 400)):
        areas, log_ratios = crops(height, width)
        # Rounding the sides to pixels moves the area and the ratio a little past the sampled bounds.
        assert areas.min() >= 0.08 * 0.97 and areas.max() <= 1.0
        assert log_ratios.min() >= math.log(3 / 4) - 0.05 and log_ratios.max() <= math.log(4 / 3) + 0.05
        # Area uniform on [0.08, 1] (mean 0.54) less the large crops that do not fit (about 0.44-0.48 here).
        assert 0.40 < areas.mean() < 0.52
    # Log-uniform ratio: symmetric about 0 on a square image.
    assert abs(log_ratios.mean()) < 0.015
    # An image too elongated for any attempt falls back to the centre crop clamped to ratio 4/3.
    assert imagenet.random_resized_crop_params(np.random.default_rng(0), 10, 1000) == (0, 493, 10, 13)
    assert imagenet.random_resized_crop_params(np.random.default_rng(0), 1000, 10) == (493, 0, 13, 10)

    reader = imagenet.folder_reader(folder, "train", small_transform(color_jitter=imagenet.TRAIN_COLOR_JITTER),
                                    num_classes=3)
    np.testing.assert_array_equal(reader.read(3, 11), reader.read(3, 11))
    assert not np.array_equal(reader.read(3, 11), reader.read(3, 12))
    assert reader.read(3, -5).shape == (16, 16, 3)  # any int64 seed works


def test_color_jitter(folder):
    image = Image.open(next((folder / "train" / WNIDS[1]).iterdir())).convert("RGB")
    pixels = np.asarray(image)
    same = imagenet.color_jitter(image, np.random.default_rng(0), (0.0, 0.0, 0.0, 0.0))
    np.testing.assert_array_equal(np.asarray(same), pixels)
    # Brightness alone scales every pixel by one factor in [0.6, 1.4].
    for seed in range(3):
        out = np.asarray(imagenet.color_jitter(image, np.random.default_rng(seed), (0.4, 0.0, 0.0, 0.0)), float)
        mask = (pixels > 40) & (out < 250)
        factors = out[mask] / pixels[mask]
        assert 0.59 < factors.mean() < 1.41 and factors.std() < 0.02
    # Saturation 0..: a grey image has nothing to saturate; hue shifts leave greys alone too.
    grey = Image.fromarray(np.full((8, 8, 3), 120, np.uint8))
    out = imagenet.color_jitter(grey, np.random.default_rng(1), (0.0, 0.0, 0.4, 0.2))
    np.testing.assert_array_equal(np.asarray(out), np.asarray(grey))
    jittered = imagenet.color_jitter(image, np.random.default_rng(2), imagenet.TRAIN_COLOR_JITTER)
    assert np.asarray(jittered).shape == pixels.shape and not np.array_equal(np.asarray(jittered), pixels)
    # The whole training transform with a full-image crop and no jitter returns the image itself.
    transform = imagenet.Transform(image_size=16, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
    square = Image.fromarray(np.random.default_rng(3).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    np.testing.assert_array_equal(transform.train(square, np.random.default_rng(4)), np.asarray(square))


def test_eval_transform_resizes_and_centre_crops():
    assert imagenet.eval_resize_size(224) == 256
    rows, cols = np.meshgrid(np.arange(256), np.arange(320), indexing="ij")
    pixels = np.stack([rows % 256, cols % 256, (rows + cols) % 256], -1).astype(np.uint8)
    out = imagenet.Transform(image_size=224).eval(Image.fromarray(pixels))
    # Shorter side already 256: no resize; the crop starts at ((256 - 224) / 2, (320 - 224) / 2).
    np.testing.assert_array_equal(out, pixels[16:240, 48:272])
    # A smaller portrait image is resized (shorter side 18 for size 16), then cropped at the centre: a
    # left-right symmetric image stays symmetric.
    half = np.random.default_rng(0).integers(0, 256, (30, 10, 3), dtype=np.uint8)
    symmetric = np.concatenate([half, half[:, ::-1]], axis=1)
    out = imagenet.Transform(image_size=16).eval(Image.fromarray(symmetric))
    assert out.shape == (16, 16, 3)
    np.testing.assert_allclose(out.astype(int), out[:, ::-1].astype(int), atol=1)


def test_transform_rejects_bad_settings():
    with pytest.raises(UserError, match="crop_scale"):
        imagenet.Transform(crop_scale=(0.5, 0.1))
    with pytest.raises(UserError, match="color_jitter"):
        imagenet.Transform(color_jitter=(0.4, 0.4, 0.4, 0.6))


# ------------------------------------------------------------------------------------------------------------
# PC-DARTS subsets


def test_per_class_subsets():
    sizes = (40, 80, 120, 1300, 733)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    keys = np.asarray([f"img_{i:05d}" for i in range(len(labels))], dtype=bytes)
    weight, arch = imagenet.per_class_subsets(labels, 0.1, 0.025, seed=0, keys=keys)
    # round half up: 73.3 -> 73, 18.3 -> 18; 2.0, 3.0, 32.5 -> 33.
    np.testing.assert_array_equal(np.bincount(labels[weight]), [4, 8, 12, 130, 73])
    np.testing.assert_array_equal(np.bincount(labels[arch]), [1, 2, 3, 33, 18])
    assert not set(weight) & set(arch)
    again = imagenet.per_class_subsets(labels, 0.1, 0.025, seed=0, keys=keys)
    np.testing.assert_array_equal(again[0], weight)
    np.testing.assert_array_equal(again[1], arch)
    other = imagenet.per_class_subsets(labels, 0.1, 0.025, seed=1, keys=keys)
    assert not np.array_equal(other[0], weight)
    # The same files stored in another order: the same files are chosen.
    order = np.random.default_rng(5).permutation(len(labels))
    shuffled = imagenet.per_class_subsets(labels[order], 0.1, 0.025, seed=0, keys=keys[order])
    assert sorted(keys[order][shuffled[0]]) == sorted(keys[weight])
    assert sorted(keys[order][shuffled[1]]) == sorted(keys[arch])
    with pytest.raises(UserError, match="sum of at most 1"):
        imagenet.per_class_subsets(labels, 0.8, 0.3)
    with pytest.raises(UserError, match="architecture subset empty"):
        imagenet.per_class_subsets(np.zeros(4, np.int32), 0.5, 0.01)


def test_reader_is_picklable_and_small(folder):
    reader = imagenet.folder_reader(folder, "train", small_transform(color_jitter=(0.4, 0.4, 0.4, 0.2)),
                                    num_classes=3)
    subset = reader.subset(np.arange(0, len(reader), 3))
    copy = pickle.loads(pickle.dumps(subset))
    assert len(copy) == len(subset) and copy.image_shape == subset.image_shape
    assert copy.keys is None  # only the process that draws subsets needs the file names
    np.testing.assert_array_equal(copy.labels, subset.labels)
    np.testing.assert_array_equal(copy.read(2, 99), subset.read(2, 99))
    np.testing.assert_array_equal(copy.read(2, None), subset.read(2, None))
    assert len(pickle.dumps(reader)) < 4096


# ------------------------------------------------------------------------------------------------------------
# The ImageNet search stem


def reference_search_params(C: int, layers: int, K: int, num_classes: int, num_nodes: int, op_names) -> int:
    """Weights of PC-DARTS model_search_imagenet.py Network (ImageNet stem, stem multiplier 3), counted from
    its modules: search BN layers have no affine parameters, preprocess0 (FactorizedReduce or 1x1
    ReLUConvBN) has C_pp * C weights either way, ops work on C / K channels."""
    op_params = {"none": lambda c, s: 0, "max_pool_3x3": lambda c, s: 0, "avg_pool_3x3": lambda c, s: 0,
                 "skip_connect": lambda c, s: 0 if s == 1 else c * c,
                 "sep_conv_3x3": lambda c, s: 2 * (9 * c + c * c), "sep_conv_5x5": lambda c, s: 2 * (25 * c + c * c),
                 "dil_conv_3x3": lambda c, s: 9 * c + c * c, "dil_conv_5x5": lambda c, s: 25 * c + c * c}
    stem = 3 * C
    total = 27 * (stem // 2) + 2 * (stem // 2) + 9 * (stem // 2) * stem + 2 * stem + 9 * stem * stem + 2 * stem
    c_pp, c_p, c = stem, stem, C
    for i in range(layers):
        reduction = i in (layers // 3, 2 * layers // 3)
        c *= 2 if reduction else 1
        total += c_pp * c + c_p * c
        for node in range(num_nodes):
            for j in range(2 + node):
                stride = 2 if reduction and j < 2 else 1
                total += sum(op_params[name](c // K, stride) for name in op_names)
        c_pp, c_p = c_p, num_nodes * c
    return total + c_p * num_classes + num_classes


def test_imagenet_stem_reduces_224_to_28():
    class Stem(nn.Module):
        @nn.compact
        def __call__(self, x):
            return supernet.imagenet_search_stem(x, 12, False, jnp.float32)

    shapes = jax.eval_shape(lambda x: Stem().init_with_output(jax.random.key(0), x)[0],
                            jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
    assert shapes[0].shape == (1, 56, 56, 12) and shapes[1].shape == (1, 28, 28, 12)


@pytest.fixture(scope="module")
def quick_pcdarts():
    config = load_config("pcdarts_imagenet", "quick")
    space = jnas.spaces.get(config.space, **config.space_options)
    return config, space


def test_quick_configs_load():
    for name, method in (("pcdarts_imagenet", "pcdarts"), ("drnas_imagenet", "drnas")):
        full, quick = load_config(name, None), load_config(name, "quick")
        for c in (full, quick):
            assert c.method == method and c.space == "darts" and c.model.stem == "imagenet"
            assert c.data.name == "imagenet2012" and c.data.pipeline == "host"
            assert c.data.normalization == "imagenet" and c.arch_optimizer.grad_clip == 5.0
            assert tuple(c.data.color_jitter) == (0.0, 0.0, 0.0, 0.0)
        assert full.data.image_size == 224 and (full.data.weight_fraction, full.data.arch_fraction) == (0.1, 0.025)
        assert full.optimizer.lr == 0.5 and full.optimizer.warmup_epochs == 5
        assert quick.data.source == "synthetic" and quick.data.workers == 0 and quick.data.image_size == 32
    pcdarts, drnas = load_config("pcdarts_imagenet", None), load_config("drnas_imagenet", None)
    assert (pcdarts.batch_size, pcdarts.model.init_channels, pcdarts.model.num_cells) == (1024, 16, 8)
    assert (pcdarts.model.partial_channels, pcdarts.arch_warmup_epochs) == (2, 35)
    assert (drnas.batch_size, drnas.model.init_channels, drnas.model.num_cells) == (512, 48, 14)
    assert tuple(drnas.method_options.stage_partial_channels) == (6, 3)
    assert "none" not in drnas.space_options.op_names


def numpy_variables(model: nn.Module, *args, **kwargs) -> dict:
    """Variables of the model's shapes filled from numpy: `model.init` compiles an op per random
    initialiser, which takes far longer on a CPU than the forward pass under test."""
    shapes = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, *args, **kwargs))
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda s: rng.normal(0.0, 0.1, s.shape).astype(s.dtype), shapes)


def test_quick_search_readers_and_imagenet_supernet(quick_pcdarts):
    config, space = quick_pcdarts
    weight, arch, evaluation = imagenet.search_readers(config.data)
    assert (len(weight), len(arch)) == (32, 32) and evaluation is arch
    np.testing.assert_array_equal(np.bincount(weight.labels), [8, 8, 8, 8])
    assert not set(weight.keys) & set(arch.keys)
    batch = next(HostLoader(weight).iterate(np.arange(8)[None], np.arange(8, dtype=np.int64)[None]))
    assert batch["image"].shape == (8, 32, 32, 3) and batch["image"].dtype == np.uint8
    eval_batch = next(HostLoader(evaluation).iterate(np.arange(4)[None], None))
    np.testing.assert_array_equal(eval_batch["image"], np.stack([arch.read(i, None) for i in range(4)]))

    model = supernet.build_supernet(space, config.model, imagenet.NUM_CLASSES)
    mixing_weights = {k: jnp.full(shape, 1.0 / shape[1]) for k, shape in space.arch_shape.items()}
    shapes = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, batch["image"].astype(np.float32),
                                               mixing_weights, train=False))
    assert "stem0_conv_1" in shapes["params"] and "stem_conv" not in shapes["params"]
    assert count_params(shapes["params"]) == reference_search_params(
        config.model.init_channels, config.model.num_cells, config.model.partial_channels, imagenet.NUM_CLASSES,
        config.space_options.num_nodes, space.op_names)

    # One training-mode forward pass of a smaller ImageNet-stem supernet on the normalised batch: three
    # cells (reductions at 1 and 2, stride-2 edges, the max-pooled bypass of K=2), 32 -> 4 -> 1 pixels.
    tiny_space = jnas.spaces.get("darts", num_nodes=1, op_names=("max_pool_3x3", "skip_connect", "sep_conv_3x3"))
    tiny = supernet.build_supernet(tiny_space, ml_collections.ConfigDict(
        {"init_channels": 4, "num_cells": 3, "stem": "imagenet", "partial_channels": 2}), 10)
    mean, std = (np.asarray(v, np.float32) for v in imagenet.NORMALIZATION)
    x = (batch["image"].astype(np.float32) / 255.0 - mean) / std
    tiny_weights = {k: jnp.full(shape, 1.0 / shape[1]) for k, shape in tiny_space.arch_shape.items()}
    variables = numpy_variables(tiny, x, tiny_weights, train=False)
    logits, _ = tiny.apply(variables, x, tiny_weights, train=True, mutable=["batch_stats"])
    assert logits.shape == (8, 10) and bool(jnp.all(jnp.isfinite(logits)))


def test_reference_search_params_matches_published_counts():
    darts_ops = jnas.spaces.get("darts").op_names
    # The formula minus the ImageNet stem (conv 3->3C + BN instead) gives the reference CIFAR counts
    # (parameter_counts.json: PC-DARTS K=4 299,578; DARTS 1,930,618).
    for K, expected in ((4, 299_578), (1, 1_930_618)):
        imagenet_stem = 27 * 24 + 48 + 9 * 24 * 48 + 96 + 9 * 48 * 48 + 96
        cifar_stem = 27 * 48 + 96
        cifar = reference_search_params(16, 8, K, 10, 4, darts_ops) - imagenet_stem + cifar_stem
        assert cifar == expected
    # The full-size ImageNet search networks (the model was checked against these: too slow to build here).
    assert reference_search_params(16, 8, 2, 1000, 4, darts_ops) == 956_512  # PC-DARTS
    assert reference_search_params(48, 14, 6, 1000, 4, darts_ops[1:]) == 3_642_896  # DrNAS, first stage


def test_stem_option_is_checked(quick_pcdarts):
    config, _ = quick_pcdarts
    model_config = ml_collections.ConfigDict(dict(config.model))
    model_config.stem = "resnet"
    with pytest.raises(ValueError, match="model.stem='resnet'"):
        supernet.build_supernet(jnas.spaces.get("darts"), model_config, 10)
    model_config.stem = "imagenet"
    with pytest.raises(ValueError, match="NB201"):
        supernet.build_supernet(jnas.spaces.get("nb201"), model_config, 10)


def test_large_batch_warmup_schedules():
    """PC-DARTS scales the scheduled lr of epoch e < 5 by (e + 1) / 5; DrNAS ramps the base lr instead."""
    from jnas import optim

    steps = 3
    cfg = ml_collections.ConfigDict(dict(lr=0.5, min_lr=0.0, epoch_offset=1, warmup_epochs=5,
                                         warmup_mode="scale_schedule"))
    lr = optim.search_weight_schedule(cfg, 50, steps)
    cosine = optim.epoch_cosine_schedule(0.5, 0.0, 50, steps, epoch_offset=1)
    for epoch in range(7):
        for step in (epoch * steps, epoch * steps + steps - 1):
            expected = float(cosine(step)) * ((epoch + 1) / 5 if epoch < 5 else 1.0)
            assert float(lr(step)) == pytest.approx(expected, rel=1e-6)
    cfg.update(dict(epoch_offset=0, warmup_mode="scale_base"))
    lr = optim.search_weight_schedule(cfg, 50, steps)
    assert [float(lr(e * steps)) for e in range(5)] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    assert float(lr(5 * steps)) == pytest.approx(float(optim.epoch_cosine_schedule(0.5, 0.0, 50, steps)(5 * steps)))
    cfg.warmup_mode = "linear"
    with pytest.raises(ValueError, match="scale_schedule"):
        optim.search_weight_schedule(cfg, 50, steps)


@pytest.mark.slow
def test_imagenet_search_runs_on_the_host_pipeline(tmp_path):
    """The quick PC-DARTS ImageNet search, narrowed to compile fast, through jnas.run.main on 4 devices:
    host-read batches, the ImageNet stem, the warm-up of the weights' learning rate, the outputs."""
    import json

    from jnas import optim, run

    config = load_config("pcdarts_imagenet", "quick")
    config.space_options.num_nodes = 1
    config.space_options.op_names = ("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3")
    config.model.init_channels = 4
    config.batch_size = 8
    config.max_steps_per_epoch = 2
    run.main(config, str(tmp_path))
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]
    cosine = optim.epoch_cosine_schedule(config.optimizer.lr, config.optimizer.min_lr, config.num_epochs, 2,
                                         epoch_offset=1)
    # warmup_epochs=2: epoch e trains with the scheduled lr times (e + 1) / 2.
    assert lines[0]["lr"] == pytest.approx(float(cosine(0)) / 2, rel=1e-6)
    assert lines[1]["lr"] == pytest.approx(float(cosine(2)), rel=1e-6)
    assert all(np.isfinite(line["train_loss"]) and 0 <= line["valid_acc"] <= 1 for line in lines)
    genotype = json.loads((tmp_path / "genotype.json").read_text())["genotype"]
    assert genotype.startswith("Genotype(normal=")


def test_imagenet_search_config_errors():
    from jnas import run

    config = load_config("pcdarts_imagenet", "quick")
    config.data.pipeline = "device"
    with pytest.raises(UserError, match="data.pipeline=host"):
        run.validate(config)
    config = load_config("pcdarts_imagenet", "quick")
    config.data.image_size = 48
    with pytest.raises(UserError, match="multiple of 32"):
        run.validate(config)
    config = load_config("pcdarts_imagenet", "quick")
    config.optimizer.warmup_mode = "linear"
    with pytest.raises(UserError, match="warmup_mode"):
        run.validate(config)


def test_imagenet_training_without_data_fails_fast_with_the_manual_steps(tmp_path):
    from jnas import train

    config = load_config("train_imagenet", None)
    config.data.dir = str(tmp_path)
    with pytest.raises(DataUnavailableError, match="ILSVRC2012_img_train.tar"):
        train.run(config, str(tmp_path / "run"))


@pytest.mark.slow
def test_imagenet_training_runs_on_the_host_pipeline(tmp_path):
    """The quick ImageNet training (NetworkImageNet, 224x224 synthetic images) reads its batches through
    the host pipeline and writes its result."""
    import json

    from jnas import train

    config = load_config("train_imagenet", "quick")
    config.num_epochs = 1
    config.max_steps_per_epoch = 2
    train.run(config, str(tmp_path))
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["dataset"] == "imagenet2012" and result["data_source"].startswith("synthetic:train")
    assert result["steps"] == 2 and np.isfinite(result["test_loss"]) and 0 <= result["test_acc"] <= 1
