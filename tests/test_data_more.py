"""jnas.data beyond CIFAR-10: CIFAR-100 through TFDS, ImageNet16-120 from its pickle folder and from TFDS
`imagenet_resized/16x16`, the ImageNet16-120 class map, the NAS-Bench-201 search splits, and the CIFAR-100 /
ImageNet16-120 search configs."""

import importlib
import importlib.resources
import io
import json
import os
import pickle
import re
import sys
import zipfile
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from jnas import data
from jnas.data import imagenet16_classes, sources
from jnas.errors import UserError

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared"
NB201_CIFAR10_SPLIT = SHARED / "data" / "cifar10" / "nb201_cifar-split.txt"


def data_config(**kwargs) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(dict(name="cifar10", source="auto", dir="", synthetic_size=16, image_size=8,
                                            train_portion=0.5, split="train_portion", xvalid_split_file=""))
    config.update(kwargs)
    return config


def chw_rows(images: np.ndarray) -> np.ndarray:
    """NHWC uint8 -> [N, C*H*W], the row layout of every pickle and npz release."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), -1))


def tfds_file(relative: str) -> Path:
    import tensorflow_datasets as tfds

    return Path(str(tfds.core.tfds_path(relative)))


@pytest.fixture
def tfds_prepare_offline(monkeypatch):
    """Let jnas's TFDS download path run here: no TensorFlow or network check, no importlib_resources."""
    if "importlib_resources" not in sys.modules and sources._missing_modules_for_prepare():
        monkeypatch.setitem(sys.modules, "importlib_resources", importlib.resources)
    monkeypatch.setattr(sources, "_missing_modules_for_prepare", lambda: [])
    monkeypatch.setattr(sources, "_probe", lambda url, timeout_s=None: True)
    return monkeypatch


def png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------------
# CIFAR-100 through TFDS (the folder layout is covered in test_data.py).


def test_tfds_cifar100_uses_fine_labels_in_original_order(tmp_path, tfds_prepare_offline):
    """A tiny cifar-100-binary archive (<coarse byte><fine byte><3072 CHW bytes> per record) prepared by the
    real TFDS cifar100 builder through jnas's download path; only file reading and PNG encoding are local."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.image_classification import cifar

    rng = np.random.default_rng(10)
    archive = tmp_path / "archive" / "cifar-100-binary"
    archive.mkdir(parents=True)
    expected = {}
    for split, n in (("train", 9), ("test", 5)):
        images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        fine, coarse = rng.integers(0, 100, n), rng.integers(0, 20, n)
        records = np.concatenate([coarse[:, None], fine[:, None], chw_rows(images)], axis=1).astype(np.uint8)
        (archive / f"{split}.bin").write_bytes(records.tobytes())
        expected[split] = (images, fine)
    (archive / "fine_label_names.txt").write_text("\n".join(f"fine{i}" for i in range(100)))
    (archive / "coarse_label_names.txt").write_text("\n".join(f"coarse{i}" for i in range(20)))

    def load_data_as_png(path, labels_number=1):
        rows = np.frombuffer(Path(path).read_bytes(), np.uint8).reshape(-1, labels_number + 3072)
        for row in rows:
            yield row[:labels_number], png(row[labels_number:].reshape(3, 32, 32).transpose(1, 2, 0))

    patch = tfds_prepare_offline
    patch.setattr(tfds.download.DownloadManager, "download_and_extract", lambda self, url: str(archive.parent))
    patch.setattr(cifar, "_load_data", load_data_as_png)
    tfds_dir = tmp_path / "tensorflow_datasets"
    downloaded = data.load(data_config(name="cifar100", source="tfds", dir=str(tfds_dir)))
    patch.undo()
    dataset = data.load(data_config(name="cifar100", source="auto", dir=str(tfds_dir)))
    for loaded in (downloaded, dataset):
        assert loaded.num_classes == 100 and loaded.original_order
        assert loaded.source == f"tfds:{tfds_dir}"
        for split in ("train", "test"):
            np.testing.assert_array_equal(getattr(loaded, f"{split}_images"), expected[split][0])
            np.testing.assert_array_equal(getattr(loaded, f"{split}_labels"), expected[split][1])


# ------------------------------------------------------------------------------------------------
# ImageNet16-120 from the downsampled-ImageNet pickle folder.


def write_imagenet16_batch(path: Path, images: np.ndarray, labels) -> None:
    """The pickle release's format as AutoDL reads it: str keys, b'data' CHW rows, 1-based labels, a mean."""
    batch = {"data": chw_rows(images), "labels": [int(v) for v in labels],
             "mean": chw_rows(images).mean(axis=0)}
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)


@pytest.fixture
def tiny_imagenet16(tmp_path):
    """(root, expected train (images, labels), expected test (images, labels)) for a folder of 10 train
    batches and val_data whose labels cross the 120 boundary; batch 7 keeps nothing."""
    rng = np.random.default_rng(11)
    folder = tmp_path / "ImageNet16"
    folder.mkdir()
    boundary = np.array([1, 120, 121, 1000, 60, 2])

    def batch(n: int, kept_nothing: bool = False) -> tuple[np.ndarray, np.ndarray]:
        images = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
        labels = rng.integers(121, 1001, n) if kept_nothing else np.concatenate(
            [boundary, rng.integers(1, 1001, n - len(boundary))])
        return images, rng.permutation(labels)

    def expected(parts):
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        keep = (labels >= 1) & (labels <= 120)  # AutoDL: `if 1 <= L <= use_num_of_class_only`
        return images[keep], labels[keep] - 1

    train_parts = [batch(8, kept_nothing=(i == 7)) for i in range(1, 11)]
    for i, (images, labels) in enumerate(train_parts, start=1):
        write_imagenet16_batch(folder / f"train_data_batch_{i}", images, labels)
    test_part = batch(12)
    write_imagenet16_batch(folder / "val_data", *test_part)
    return tmp_path, expected(train_parts), expected([test_part])


@pytest.mark.parametrize("point_at", ["parent", "folder"])
def test_imagenet16_folder_keeps_120_classes_shifts_labels_and_reshapes(tiny_imagenet16, point_at):
    root, (train_x, train_y), (test_x, test_y) = tiny_imagenet16
    data_dir = root if point_at == "parent" else root / "ImageNet16"
    dataset = data.load(data_config(name="imagenet16_120", source="folder", dir=str(data_dir)))
    assert dataset.name == "imagenet16_120" and dataset.num_classes == 120 and dataset.original_order
    assert dataset.source == f"folder:{(root / 'ImageNet16').resolve()}"
    assert dataset.train_images.dtype == np.uint8 and dataset.train_labels.dtype == np.int32
    assert dataset.image_shape == (16, 16, 3)
    np.testing.assert_array_equal(dataset.train_images, train_x)
    np.testing.assert_array_equal(dataset.train_labels, train_y)
    np.testing.assert_array_equal(dataset.test_images, test_x)
    np.testing.assert_array_equal(dataset.test_labels, test_y)
    assert {0, 119} <= set(dataset.train_labels.tolist()) and dataset.train_labels.max() == 119
    # CHW rows: byte c * 256 + y * 16 + x of a row is pixel (y, x) of channel c.
    with open(root / "ImageNet16" / "val_data", "rb") as f:
        val = pickle.load(f)
    row = val["data"][np.flatnonzero(np.asarray(val["labels"]) <= 120)[0]]
    for y, x, c in ((3, 5, 2), (15, 0, 1), (0, 15, 0)):
        assert dataset.test_images[0, y, x, c] == row[c * 256 + y * 16 + x]


def test_imagenet16_folder_accepts_drnas_lowercase_name(tiny_imagenet16):
    root, (train_x, _), _ = tiny_imagenet16
    (root / "ImageNet16").rename(root / "imagenet16")
    dataset = data.load(data_config(name="imagenet16_120", source="auto", dir=str(root)))
    assert dataset.source == f"folder:{(root / 'imagenet16').resolve()}"
    np.testing.assert_array_equal(dataset.train_images, train_x)


def test_imagenet16_folder_errors_name_the_file(tiny_imagenet16):
    root = tiny_imagenet16[0]
    folder = root / "ImageNet16"
    config = data_config(name="imagenet16_120", source="folder", dir=str(root))
    write_imagenet16_batch(folder / "val_data", np.zeros((2, 16, 16, 3), np.uint8), [0, 5])
    with pytest.raises(UserError, match=r"val_data: labels span \[0, 5\].*\[1, 1001\)"):
        data.load(config)
    write_imagenet16_batch(folder / "val_data", np.zeros((2, 32, 32, 3), np.uint8), [1, 5])
    with pytest.raises(UserError, match=r"val_data: b'data' is uint8 \(2, 3072\)"):
        data.load(config)
    (folder / "train_data_batch_10").unlink()
    with pytest.raises(data.DataUnavailableError, match="train_data_batch_10"):
        data.load(config)
    with pytest.raises(data.DataUnavailableError, match=r"ImageNet16.*Imagenet16_train\.zip"):
        data.load(data_config(name="imagenet16_120", source="folder", dir=str(root / "nowhere")))


# ------------------------------------------------------------------------------------------------
# ImageNet16-120 from TFDS imagenet_resized/16x16.


@pytest.fixture(scope="module")
def prepared_imagenet_resized(tmp_path_factory):
    """imagenet_resized/16x16 prepared by the real TFDS builder (its `label - 1`, CHW -> HWC and label names)
    through jnas's download path, from tiny npz zips in the release's layout. Local replacements: the
    download (local zips), archive reading (zipfile instead of tf.io.gfile) and PNG encoding (Pillow)."""
    import tensorflow_datasets as tfds

    root = tmp_path_factory.mktemp("imagenet_resized")
    rng = np.random.default_rng(12)
    zips, expected = {}, {}
    for split, zip_name, members in (
            ("train", "Imagenet16_train_npz.zip", ("train_data_batch_1.npz", "train_data_batch_2.npz")),
            ("validation", "Imagenet16_val_npz.zip", ("val_data.npz",))):
        images, labels = [], []
        with zipfile.ZipFile(root / zip_name, "w") as archive:
            for member in members:
                x = rng.integers(0, 256, (20, 16, 16, 3), dtype=np.uint8)
                y = np.concatenate([[1, 120, 121, 1000], rng.integers(1, 1001, 16)])  # 1-based
                buffer = io.BytesIO()
                np.savez(buffer, data=chw_rows(x), labels=y)
                archive.writestr(f"{zip_name[:-8]}/{member}", buffer.getvalue())
                images.append(x)
                labels.append(y)
        zips[zip_name] = str(root / zip_name)
        expected[split] = (np.concatenate(images), np.concatenate(labels))

    builder_cls = tfds.builder_cls("imagenet_resized")
    generate = builder_cls._generate_examples

    def generate_png(self, archive):
        for key, record in generate(self, archive):
            yield key, {**record, "image": png(record["image"])}

    def iter_zip(self, path):
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                with archive.open(info) as f:
                    yield info.filename, f

    with pytest.MonkeyPatch.context() as patch:
        if "importlib_resources" not in sys.modules and sources._missing_modules_for_prepare():
            patch.setitem(sys.modules, "importlib_resources", importlib.resources)
        patch.setattr(sources, "_missing_modules_for_prepare", lambda: [])
        patch.setattr(sources, "_probe", lambda url, timeout_s=None: True)
        patch.setattr(tfds.download.DownloadManager, "download",
                      lambda self, urls: [zips[os.path.basename(u)] for u in urls])
        patch.setattr(tfds.download.DownloadManager, "iter_archive", iter_zip)
        patch.setattr(builder_cls, "_generate_examples", generate_png)
        downloaded = data.load(data_config(name="imagenet16_120", source="tfds",
                                           dir=str(root / "tensorflow_datasets")))
    return root / "tensorflow_datasets", expected, downloaded


def sorted_pairs(images: np.ndarray, labels: np.ndarray) -> list[tuple[bytes, int]]:
    return sorted((image.tobytes(), int(label)) for image, label in zip(images, labels))


def test_tfds_imagenet_resized_maps_onto_the_120_classes(prepared_imagenet_resized):
    tfds_dir, expected, downloaded = prepared_imagenet_resized
    dataset = data.load(data_config(name="imagenet16_120", source="auto", dir=str(tfds_dir)))
    for loaded in (downloaded, dataset):
        assert loaded.num_classes == 120 and loaded.image_shape == (16, 16, 3)
        assert loaded.source == f"tfds:{tfds_dir} (TFDS stored order)" and not loaded.original_order
        for split, name in (("train", "train"), ("validation", "test")):
            images, labels = expected[split]
            keep = labels <= 120
            got_images, got_labels = getattr(loaded, f"{name}_images"), getattr(loaded, f"{name}_labels")
            assert got_labels.dtype == np.int32 and len(got_labels) == keep.sum()
            # TFDS keeps no example ids for imagenet_resized, so compare as multisets.
            assert sorted_pairs(got_images, got_labels) == sorted_pairs(images[keep], labels[keep] - 1)
    assert {0, 119} <= set(dataset.train_labels.tolist())


def test_nb201_xvalid_refuses_data_without_the_original_order(prepared_imagenet_resized, tmp_path):
    dataset = prepared_imagenet_resized[2]
    split_file = tmp_path / "imagenet-16-120-test-split.txt"
    n = len(dataset.test_labels)
    split_file.write_text(json.dumps({"xvalid": ["int", [str(i) for i in range(0, n, 2)]],
                                      "xtest": ["int", [str(i) for i in range(1, n, 2)]]}))
    with pytest.raises(UserError, match="not in the original order.*data.source=folder"):
        data.search_split_for(dataset, data_config(name="imagenet16_120", split="nb201_xvalid",
                                                   xvalid_split_file=str(split_file)))
    (weight_x, _), (arch_x, _) = data.search_split_for(dataset, data_config(name="imagenet16_120"))
    assert len(weight_x) + len(arch_x) == len(dataset.train_labels)


# ------------------------------------------------------------------------------------------------
# The ImageNet16-120 class map.


def test_imagenet16_wnids_are_the_first_120_map_clsloc_classes():
    wnids = imagenet16_classes.WNIDS
    assert len(wnids) == len(set(wnids)) == imagenet16_classes.NUM_CLASSES == 120
    assert all(re.fullmatch(r"n\d{8}", w) for w in wnids)
    # map_clsloc.txt begins "n02119789 1 kit_fox", "n02100735 2 English_setter", "n02110185 3 Siberian_husky".
    assert wnids[:3] == ("n02119789", "n02100735", "n02110185")
    resized = tfds_file("image_classification/imagenet_resized_labels.txt").read_text().split()
    assert len(resized) == 1000 and tuple(resized[:120]) == wnids
    # The TFDS list keeps map_clsloc order beyond the first classes too: Imagenet32_Scripts' utils.py gives
    # ILSVRC2012_val_00000001..3 the labels 490, 361, 171; TFDS imagenet2012 names those images' classes.
    val_wnids = tfds_file("datasets/imagenet2012/validation_labels.txt").read_text().split()[:3]
    assert [resized[k - 1] for k in (490, 361, 171)] == val_wnids


def test_imagenet16_label_map_goes_through_wordnet_ids():
    resized = tfds_file("image_classification/imagenet_resized_labels.txt").read_text().split()
    table = imagenet16_classes.label_map(resized)
    np.testing.assert_array_equal(table[:120], np.arange(120))
    assert (table[120:] == -1).all()
    # TFDS imagenet2012 numbers the classes by sorted WordNet ID: kit fox 278, English setter 212, Siberian
    # husky 250 there (as in Keras' imagenet_class_index.json).
    sorted_wnids = tfds_file("datasets/imagenet2012/labels.txt").read_text().split()
    table = imagenet16_classes.label_map(sorted_wnids)
    assert table[278] == 0 and table[212] == 1 and table[250] == 2
    assert sorted(table[table >= 0].tolist()) == list(range(120))
    with pytest.raises(ValueError, match=r"1 of the 120 classes \(n02397096\) are not among"):
        imagenet16_classes.label_map(resized[:119] + resized[120:])


def test_imagenet16_spec_and_synthetic_data():
    spec = data.get_spec("imagenet16_120")
    assert (spec.num_train, spec.num_test, spec.image_shape, spec.crop_padding) == (151_700, 6_000, (16, 16, 3), 2)
    assert data.get_spec("cifar100").crop_padding == 4
    for scheme in ("darts", "nb201"):
        mean, std = data.normalization("imagenet16_120", scheme)
        np.testing.assert_allclose(mean * 255, [122.68, 116.66, 104.01], rtol=1e-6)
        np.testing.assert_allclose(std * 255, [63.22, 61.26, 65.09], rtol=1e-6)
    dataset = data.load(dict(name="imagenet16_120", source="synthetic", synthetic_size=240))
    assert dataset.image_shape == (16, 16, 3) and dataset.num_classes == 120
    np.testing.assert_array_equal(np.bincount(dataset.train_labels, minlength=120), [2] * 120)


# ------------------------------------------------------------------------------------------------
# Search splits.


def fake_dataset(name: str, num_train: int, num_test: int) -> data.Dataset:
    """1x1 images whose pixel and label encode their index, so a split can be checked exactly."""
    def split(n: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
        index = np.arange(n) + offset
        return (index % 251).astype(np.uint8).reshape(n, 1, 1, 1).repeat(3, axis=-1), index.astype(np.int32)

    return data.Dataset(name, *split(num_train, 0), *split(num_test, 10 ** 6), num_classes=10, source="fake")


def write_split(path: Path, **indices) -> str:
    path.write_text(json.dumps({k: ["int", [str(i) for i in v]] for k, v in indices.items()}))
    return str(path)


def test_train_portion_split_is_the_darts_split():
    dataset = fake_dataset("cifar100", 10, 4)
    (weight_x, weight_y), (arch_x, arch_y) = data.search_split_for(dataset, data_config(name="cifar100"))
    np.testing.assert_array_equal(weight_y, np.arange(5))
    np.testing.assert_array_equal(arch_y, np.arange(5, 10))
    (weight_x, weight_y), _ = data.search_split_for(dataset, {"name": "cifar100", "train_portion": 0.3})
    np.testing.assert_array_equal(weight_y, np.arange(3))  # no data.split: the DrNAS/DARTS default


@pytest.mark.parametrize("name", ["cifar100", "imagenet16_120"])
def test_nb201_xvalid_trains_weights_on_train_and_alpha_on_the_xvalid_test_half(tmp_path, name):
    dataset = fake_dataset(name, 12, 8)
    xvalid, xtest = [1, 3, 4, 5], [0, 2, 6, 7]
    path = write_split(tmp_path / data.get_spec(name).nb201_split_file, xvalid=xvalid, xtest=xtest)
    config = data_config(name=name, split="nb201_xvalid", xvalid_split_file=path)
    data.check_split_config(config)
    (weight_x, weight_y), (arch_x, arch_y) = data.search_split_for(dataset, config)
    np.testing.assert_array_equal(weight_y, dataset.train_labels)
    np.testing.assert_array_equal(weight_x, dataset.train_images)
    np.testing.assert_array_equal(arch_y, dataset.test_labels[xvalid])
    np.testing.assert_array_equal(arch_x, dataset.test_images[xvalid])


def test_nb201_xvalid_on_cifar10_uses_nb201s_25k_halves_of_the_train_set():
    if not NB201_CIFAR10_SPLIT.is_file():
        pytest.skip(f"no NB201 CIFAR-10 split file at {NB201_CIFAR10_SPLIT} "
                    "(the repository's ../shared is absent)")
    dataset = fake_dataset("cifar10", 50_000, 10)
    config = data_config(split="nb201_xvalid", xvalid_split_file=str(NB201_CIFAR10_SPLIT))
    (_, weight_y), (_, arch_y) = data.search_split_for(dataset, config)
    assert len(weight_y) == len(arch_y) == 25_000
    # The file's first indices (AutoDL configs/nas-benchmark/cifar-split.txt): train 0, 5, 7, 11, ...
    np.testing.assert_array_equal(weight_y[:4], [0, 5, 7, 11])
    assert not set(weight_y.tolist()) & set(arch_y.tolist())


def test_split_errors_say_what_to_do(tmp_path):
    dataset = fake_dataset("cifar100", 12, 8)
    with pytest.raises(UserError, match="unknown data.split 'random'.*train_portion, nb201_xvalid"):
        data.check_split_config(data_config(name="cifar100", split="random"))
    with pytest.raises(UserError, match="data.xvalid_split_file.*cifar100-test-split.txt.*train_portion"):
        data.search_split_for(dataset, data_config(name="cifar100", split="nb201_xvalid"))
    with pytest.raises(UserError, match="is not a file"):
        data.check_split_config(data_config(name="cifar100", split="nb201_xvalid",
                                            xvalid_split_file=str(tmp_path / "missing.txt")))
    with pytest.raises(UserError, match=r"train_portion=1.0 must be in \(0, 1\)"):
        data.check_split_config(data_config(name="cifar100", train_portion=1.0))

    def split_with(**indices):
        path = write_split(tmp_path / "split.txt", **indices)
        return data.search_split_for(dataset, data_config(name="cifar100", split="nb201_xvalid",
                                                          xvalid_split_file=path))

    with pytest.raises(UserError, match="has keys train, valid.*has xvalid and xtest"):
        split_with(train=[0], valid=[1])  # a CIFAR-10 file given for CIFAR-100
    with pytest.raises(UserError, match=r"index each of the 8 test images .* exactly once"):
        split_with(xvalid=[0, 1, 2, 3], xtest=[3, 4, 5, 6])  # overlap, and 7 missing
    with pytest.raises(UserError, match="index each of the 8 test images"):
        split_with(xvalid=list(range(0, 5000, 2)), xtest=list(range(1, 5000, 2)))  # the real file, fake data
    (tmp_path / "split.txt").write_text("{not json")
    with pytest.raises(UserError, match="cannot read the NAS-Bench-201 split file"):
        data.search_split_for(dataset, data_config(name="cifar100", split="nb201_xvalid",
                                                   xvalid_split_file=str(tmp_path / "split.txt")))


# ------------------------------------------------------------------------------------------------
# Configs.

CONFIGS = ["drnas_nb201_cifar100", "gdas_nb201_cifar100", "drnas_nb201_imagenet16", "gdas_nb201_imagenet16"]


@pytest.mark.parametrize("module", CONFIGS)
def test_configs_validate_and_quick_runs_on_synthetic_data(module, monkeypatch):
    from jnas import run

    monkeypatch.syspath_prepend(str(REPO))  # config files import `configs.common`, as launch.py loads them
    config_module = importlib.import_module(f"configs.{module}")
    full = config_module.get_config()
    dataset_name = "cifar100" if module.endswith("cifar100") else "imagenet16_120"
    assert full.data.name == dataset_name and full.space == "nb201"
    assert full.method == module.split("_")[0]
    if module.startswith("drnas"):
        run.validate(full)
        # DrNAS: a 50/50 split of the dataset's own training set, DARTS constants (DrNAS 201-space).
        assert full.data.split == "train_portion" and full.data.train_portion == 0.5
        assert full.data.normalization == "darts"
        assert full.num_epochs == 100 and full.seed == 2
        data.check_split_config(full.data)
    else:
        # GDAS with AutoDL's protocol: α on the x-valid half of the test set, from the user's split file.
        assert (full.data.split, full.data.normalization) == ("nb201_xvalid", "nb201")
        assert full.num_epochs == 250
        with pytest.raises(UserError, match=data.get_spec(dataset_name).nb201_split_file):
            data.check_split_config(full.data)
        with pytest.raises(UserError, match="data.xvalid_split_file"):  # before anything is loaded
            run.validate(full)
    if dataset_name == "imagenet16_120":
        assert full.data.image_size == 16
    quick = config_module.get_config("quick")
    quick.data.source = "synthetic"
    run.validate(quick)
    dataset = data.load(quick.data)
    (weight_x, weight_y), (arch_x, _) = data.search_split_for(dataset, quick.data)
    assert dataset.num_classes == data.get_spec(dataset_name).num_classes
    assert weight_x.shape[1:] == (quick.data.image_size, quick.data.image_size, 3)
    assert len(weight_y) >= quick.batch_size and len(arch_x) >= quick.batch_size
