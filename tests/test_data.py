"""jnas.data: the three sources, the search split, normalisation constants and on-device augmentation."""

import importlib.resources
import io
import os
import pickle
import socket
import sys
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jnas import data
from jnas.data import sources
from jnas.errors import UserError
from tests.helpers import real_cifar10_root

SHARED = Path(__file__).resolve().parents[2] / "shared"
CIFAR10_SHARED = SHARED / "data" / "cifar10"


def data_config(**kwargs) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(
        dict(name="cifar10", source="auto", dir="", synthetic_size=16, image_size=8))
    config.update(kwargs)
    return config


# ------------------------------------------------------------------------------------------------
# A tiny CIFAR python folder written in the real layout.


def write_batch(path: Path, images: np.ndarray, labels, label_key: bytes = b"labels",
                extra: dict | None = None) -> None:
    """The format of the original archive and of to_cifar_python.py: CHW rows, labels as a list."""
    batch = {b"data": np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), -1)),
             label_key: [int(v) for v in labels], **(extra or {})}
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)


def random_images(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


@pytest.fixture
def tiny_cifar10(tmp_path):
    """(root, train_images, train_labels, test_images, test_labels) with 3 images per batch file."""
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    train_x, train_y = random_images(rng, 15), rng.integers(0, 10, 15)
    for k in range(5):
        write_batch(folder / f"data_batch_{k + 1}", train_x[3 * k:3 * k + 3], train_y[3 * k:3 * k + 3])
    test_x, test_y = random_images(rng, 4), rng.integers(0, 10, 4)
    write_batch(folder / "test_batch", test_x, test_y)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [b"airplane"] * 10}, f)
    return tmp_path, train_x, train_y, test_x, test_y


@pytest.mark.parametrize("point_at", ["parent", "folder"])
def test_folder_source_reads_both_dir_conventions(tiny_cifar10, point_at):
    root, train_x, train_y, test_x, test_y = tiny_cifar10
    data_dir = root if point_at == "parent" else root / "cifar-10-batches-py"
    dataset = data.load(data_config(source="folder", dir=str(data_dir)))
    assert dataset.name == "cifar10" and dataset.num_classes == 10
    assert dataset.source == f"folder:{(root / 'cifar-10-batches-py').resolve()}"
    assert dataset.train_images.dtype == np.uint8 and dataset.train_labels.dtype == np.int32
    np.testing.assert_array_equal(dataset.train_images, train_x)
    np.testing.assert_array_equal(dataset.train_labels, train_y)
    np.testing.assert_array_equal(dataset.test_images, test_x)
    np.testing.assert_array_equal(dataset.test_labels, test_y)


def test_folder_source_reads_cifar100_layout(tmp_path):
    rng = np.random.default_rng(2)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    train_x, train_y = random_images(rng, 6), np.array([0, 99, 5, 42, 7, 63])
    test_x, test_y = random_images(rng, 2), np.array([98, 1])
    for name, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
        write_batch(folder / name, x, y, label_key=b"fine_labels", extra={b"coarse_labels": [0] * len(y)})
    dataset = data.load(data_config(name="cifar100", source="folder", dir=str(tmp_path)))
    assert dataset.num_classes == 100
    np.testing.assert_array_equal(dataset.train_images, train_x)
    np.testing.assert_array_equal(dataset.train_labels, train_y)
    np.testing.assert_array_equal(dataset.test_images, test_x)
    np.testing.assert_array_equal(dataset.test_labels, test_y)


def test_folder_source_missing_file_is_named(tiny_cifar10):
    root = tiny_cifar10[0]
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(data.DataUnavailableError, match="data_batch_3"):
        data.load(data_config(source="folder", dir=str(root)))


def test_folder_source_missing_folder_says_what_is_expected(tmp_path):
    with pytest.raises(data.DataUnavailableError, match="cifar-10-batches-py"):
        data.load(data_config(source="folder", dir=str(tmp_path / "nowhere")))


def test_folder_source_malformed_files_are_named(tiny_cifar10):
    root = tiny_cifar10[0]
    folder = root / "cifar-10-batches-py"
    config = data_config(source="folder", dir=str(root))
    (folder / "test_batch").write_bytes(b"not a pickle at all")
    with pytest.raises(UserError, match=r"test_batch.*expected a pickled dict"):
        data.load(config)
    write_batch(folder / "test_batch", np.zeros((2, 16, 16, 3), np.uint8), [0, 1])  # 16x16, not 32x32
    with pytest.raises(UserError, match=r"test_batch: b'data' is uint8 \(2, 768\)"):
        data.load(config)
    write_batch(folder / "test_batch", np.zeros((2, 32, 32, 3), np.uint8), [0, 10])
    with pytest.raises(UserError, match=r"test_batch: labels span \[0, 10\]"):
        data.load(config)


class _Exploit:
    """Unpickling this would create a directory: the loader must refuse the global instead."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.makedirs, (str(self.marker),)


def test_folder_source_refuses_pickled_code(tiny_cifar10):
    root = tiny_cifar10[0]
    marker = root / "code_ran"
    with open(root / "cifar-10-batches-py" / "data_batch_1", "wb") as f:
        pickle.dump({b"data": _Exploit(marker), b"labels": []}, f)
    with pytest.raises(UserError, match=r"data_batch_1.*refusing global"):
        data.load(data_config(source="folder", dir=str(root)))
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------
# The real CIFAR-10 copy in /work/shared, converted once to the python layout.


@pytest.fixture(scope="module")
def real_cifar10_dir() -> Path:
    return real_cifar10_root()


@pytest.fixture(scope="module")
def real_cifar10(real_cifar10_dir) -> data.Dataset:
    return data.load(data_config(source="folder", dir=str(real_cifar10_dir)))


def test_real_cifar10_through_folder(real_cifar10):
    dataset = real_cifar10
    assert dataset.train_images.shape == (50_000, 32, 32, 3)
    assert dataset.test_images.shape == (10_000, 32, 32, 3)
    np.testing.assert_array_equal(np.bincount(dataset.train_labels, minlength=10), [5000] * 10)
    np.testing.assert_array_equal(np.bincount(dataset.test_labels, minlength=10), [1000] * 10)
    lossless = np.load(CIFAR10_SHARED / "cifar10_lossless_subset.npz", allow_pickle=False)
    first = lossless["x_train_first4000"][0].astype(np.float64)
    # The folder holds the JPEG (q75) copy: equal to the original up to compression error (MAE ~6).
    assert np.abs(dataset.train_images[0] - first).mean() < 20
    np.testing.assert_array_equal(dataset.train_labels[:4000], lossless["y_train_first4000"])


def test_real_cifar10_through_auto(real_cifar10_dir, real_cifar10):
    dataset = data.load(data_config(source="auto", dir=str(real_cifar10_dir / "cifar-10-batches-py")))
    assert dataset.source == real_cifar10.source
    np.testing.assert_array_equal(dataset.train_labels, real_cifar10.train_labels)
    np.testing.assert_array_equal(dataset.test_images[-5:], real_cifar10.test_images[-5:])


def test_search_split_on_real_cifar10(real_cifar10):
    (weight_x, weight_y), (arch_x, arch_y) = data.search_split(real_cifar10, 0.5)
    assert len(weight_x) == len(weight_y) == len(arch_x) == len(arch_y) == 25_000
    np.testing.assert_array_equal(weight_x, real_cifar10.train_images[:25_000])
    np.testing.assert_array_equal(arch_y, real_cifar10.train_labels[25_000:])


# ------------------------------------------------------------------------------------------------
# TFDS: the offline failure, and reading prepared array_record data without TensorFlow.


def closed_local_url() -> str:
    """A URL whose port nothing listens on: connecting is refused at once and never leaves the machine."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/cifar-10-binary.tar.gz"


@pytest.fixture
def offline_downloads(monkeypatch):
    """Point the download probe at a closed local port, and make any real download attempt fail the test."""
    import tensorflow_datasets as tfds

    spec = sources.DATASETS["cifar10"]
    monkeypatch.setitem(sources.DATASETS, "cifar10",
                        sources.dataclasses.replace(spec, download_url=closed_local_url()))

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted although the probe failed")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_download)


def test_tfds_without_prepared_data_fails_fast_and_names_the_fix(tmp_path, offline_downloads):
    start = time.perf_counter()
    with pytest.raises(data.DataUnavailableError) as error:
        data.load(data_config(source="tfds", dir=str(tmp_path)))
    assert time.perf_counter() - start < 10
    message = str(error.value)
    assert f"no prepared TFDS data for cifar10 under {tmp_path}" in message
    assert "data.source=folder" in message and "data.source=synthetic" in message
    assert "--file_format=array_record" in message
    if sources._missing_modules_for_prepare():  # this environment: TensorFlow is not installed
        assert "cannot prepare data without TensorFlow" in message


def test_tfds_with_tensorflow_but_no_network_fails_within_the_probe_timeout(tmp_path, offline_downloads,
                                                                            monkeypatch):
    monkeypatch.setattr(sources, "_missing_modules_for_prepare", lambda: [])
    start = time.perf_counter()
    with pytest.raises(data.DataUnavailableError, match=r"no network: could not connect .* 127\.0\.0\.1"):
        data.load(data_config(source="tfds", dir=str(tmp_path)))
    assert time.perf_counter() - start < 10


def test_auto_without_any_data_lists_every_place(tmp_path, offline_downloads, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    with pytest.raises(data.DataUnavailableError) as error:
        data.load(data_config(source="auto"))
    message = str(error.value)
    for place in (tmp_path / "tfds", tmp_path / "data", tmp_path.parent / "data"):
        assert str(place) in message
    assert "TFDS download into" in message and "data.source=folder" in message


def test_probe_is_local_and_bounded():
    assert not sources._probe(closed_local_url(), timeout_s=1.0)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        assert sources._probe(f"http://127.0.0.1:{server.getsockname()[1]}/", timeout_s=1.0)


def write_cifar10_binary(folder: Path, rng: np.random.Generator) -> dict:
    """The cifar-10-batches-bin archive layout that the TFDS builder reads: <label byte><3072 CHW bytes>."""
    folder.mkdir(parents=True)
    splits = {}
    train_files = [f"data_batch_{i}.bin" for i in range(1, 6)]
    for name, files in (("train", train_files), ("test", ["test_batch.bin"])):
        images, labels = random_images(rng, 4 * len(files)), rng.integers(0, 10, 4 * len(files))
        for k, file in enumerate(files):
            rows = images[4 * k:4 * k + 4].transpose(0, 3, 1, 2).reshape(4, -1)
            records = np.concatenate([labels[4 * k:4 * k + 4, None], rows], axis=1).astype(np.uint8)
            (folder / file).write_bytes(records.tobytes())
        splits[name] = (images, labels)
    (folder / "batches.meta.txt").write_text("\n".join(f"class{i}" for i in range(10)))
    return splits


@pytest.fixture(scope="module")
def prepared_tfds(tmp_path_factory):
    """A tiny cifar10 prepared by jnas's own TFDS download path, with the parts that need TensorFlow or
    network replaced: the archive is a local folder, and images reach tfds already PNG-encoded."""
    import tensorflow_datasets as tfds
    from PIL import Image
    from tensorflow_datasets.image_classification import cifar

    root = tmp_path_factory.mktemp("tfds")
    expected = write_cifar10_binary(root / "archive" / "cifar-10-batches-bin", np.random.default_rng(3))

    def load_data_as_png(path, labels_number=1):
        records = np.frombuffer(Path(path).read_bytes(), np.uint8).reshape(-1, labels_number + 3072)
        for record in records:
            png = io.BytesIO()
            Image.fromarray(record[labels_number:].reshape(3, 32, 32).transpose(1, 2, 0)).save(png, "PNG")
            yield record[:labels_number], png.getvalue()

    with pytest.MonkeyPatch.context() as patch:
        if "importlib_resources" not in sys.modules and sources._missing_modules_for_prepare():
            patch.setitem(sys.modules, "importlib_resources", importlib.resources)
        patch.setattr(sources, "_missing_modules_for_prepare", lambda: [])
        patch.setattr(sources, "_probe", lambda url, timeout_s=None: True)
        patch.setattr(tfds.download.DownloadManager, "download_and_extract",
                      lambda self, url: str(root / "archive"))
        patch.setattr(cifar, "_load_data", load_data_as_png)
        downloaded = data.load(data_config(source="tfds", dir=str(root / "tensorflow_datasets")))
    return root / "tensorflow_datasets", expected, downloaded


def test_tfds_reads_prepared_array_record_data_in_original_order(prepared_tfds):
    import tensorflow_datasets as tfds

    tfds_dir, expected, downloaded = prepared_tfds
    raw_train = tfds.data_source("cifar10", data_dir=str(tfds_dir), download=False, split="train")
    raw_labels = np.array([raw_train[i]["label"] for i in range(len(raw_train))])
    assert not np.array_equal(raw_labels, expected["train"][1]), "tfds stores records shuffled"
    for source in ("tfds", "auto"):
        dataset = data.load(data_config(source=source, dir=str(tfds_dir)))
        assert dataset.source == f"tfds:{tfds_dir}"
        for split in ("train", "test"):
            np.testing.assert_array_equal(getattr(dataset, f"{split}_images"), expected[split][0])
            np.testing.assert_array_equal(getattr(dataset, f"{split}_labels"), expected[split][1])
    np.testing.assert_array_equal(downloaded.train_images, expected["train"][0])


# ------------------------------------------------------------------------------------------------
# Synthetic data, the split and normalisation.


def test_synthetic_is_deterministic_and_sized_by_the_config():
    config = data_config(name="cifar100", source="synthetic", synthetic_size=12, image_size=8)
    first, second = data.load(config), data.load(config)
    assert first.train_images.shape == first.test_images.shape == (12, 8, 8, 3)
    assert first.train_images.dtype == np.uint8 and first.num_classes == 100
    assert first.source.startswith("synthetic:")
    assert 0 <= first.train_labels.min() and first.train_labels.max() < 100
    np.testing.assert_array_equal(first.train_images, second.train_images)
    np.testing.assert_array_equal(first.test_labels, second.test_labels)
    assert not np.array_equal(first.train_images, first.test_images)


@pytest.mark.parametrize("size, weights", [(16, 8), (7, 3)])
def test_search_split_sizes_and_disjointness(size, weights):
    dataset = data.load(data_config(source="synthetic", synthetic_size=size))
    (weight_x, weight_y), (arch_x, arch_y) = data.search_split(dataset, 0.5)
    assert len(weight_x) == len(weight_y) == weights and len(arch_x) == len(arch_y) == size - weights
    assert not np.shares_memory(weight_x, arch_x)
    np.testing.assert_array_equal(np.concatenate([weight_x, arch_x]), dataset.train_images)
    np.testing.assert_array_equal(np.concatenate([weight_y, arch_y]), dataset.train_labels)
    with pytest.raises(UserError, match="train_portion"):
        data.search_split(dataset, 1.0)


def test_normalization_constants():
    mean, std = data.normalization("cifar10", "darts")
    np.testing.assert_allclose(mean, [0.4914, 0.4822, 0.4465])
    np.testing.assert_allclose(std, [0.2470, 0.2435, 0.2616])
    mean, std = data.normalization("cifar100", "nb201")
    np.testing.assert_allclose(mean * 255, [129.3, 124.1, 112.4], rtol=1e-6)
    np.testing.assert_allclose(std * 255, [68.2, 65.4, 70.4], rtol=1e-6)
    assert mean.dtype == np.float32
    with pytest.raises(UserError, match="darts, nb201"):
        data.normalization("cifar10", "imagenet")


def test_bad_names_are_user_errors():
    with pytest.raises(UserError, match="cifar10, cifar100"):
        data.load(data_config(name="mnist"))
    with pytest.raises(UserError, match="auto, tfds, folder, synthetic"):
        data.load(data_config(source="hub"))


# ------------------------------------------------------------------------------------------------
# Augmentation.

PAD = 2


@pytest.fixture(scope="module")
def aug_inputs():
    images = np.random.default_rng(4).integers(0, 256, (8, 8, 8, 3), dtype=np.uint8)
    mean, std = data.normalization("cifar10", "darts")
    return images, mean, std


@pytest.fixture(scope="module")
def augment_fn(aug_inputs):
    _, mean, std = aug_inputs
    return jax.jit(lambda key, x: data.augment(key, x, mean, std, pad=PAD, flip=True))


def test_augment_shape_dtype_and_identity_without_randomness(aug_inputs, augment_fn):
    images, mean, std = aug_inputs
    out = augment_fn(jax.random.key(0), images)
    assert out.shape == images.shape and out.dtype == np.float32
    plain = data.augment(jax.random.key(0), images, mean, std, pad=0, flip=False)
    np.testing.assert_array_equal(np.asarray(plain), np.asarray(data.normalize(images, mean, std)))


def test_augment_crops_are_shifts_of_the_zero_padded_image(aug_inputs, augment_fn):
    images, mean, std = aug_inputs
    out = np.asarray(augment_fn(jax.random.key(1), images))
    padded = np.pad(images, ((0, 0), (PAD, PAD), (PAD, PAD), (0, 0)))  # zeros before normalisation
    draws = set()
    for i in range(len(images)):
        matches = []
        for dy in range(2 * PAD + 1):
            for dx in range(2 * PAD + 1):
                crop = padded[i, dy:dy + 8, dx:dx + 8]
                for flipped in (False, True):
                    candidate = np.asarray(data.normalize(crop[:, ::-1] if flipped else crop, mean, std))
                    if np.allclose(candidate, out[i], atol=1e-6):
                        matches.append((dy, dx, flipped))
        assert matches, f"image {i} is not a crop (with or without flip) of its padded original"
        draws.add(matches[0])
    assert len(draws) > 1, "every image got the same crop and flip"
    assert any(m[2] for m in draws) and any(m[:2] != (PAD, PAD) for m in draws)


def test_augment_is_a_function_of_the_key(aug_inputs, augment_fn):
    images = aug_inputs[0]
    first = np.asarray(augment_fn(jax.random.key(2), images))
    np.testing.assert_array_equal(first, np.asarray(augment_fn(jax.random.key(2), images)))
    assert not np.array_equal(first, np.asarray(augment_fn(jax.random.key(3), images)))


def test_augment_does_not_depend_on_sharding(aug_inputs, augment_fn):
    images = aug_inputs[0]
    assert len(jax.devices()) == 4
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharded = jax.device_put(images, NamedSharding(mesh, PartitionSpec("data")))
    key = jax.random.key(5)
    np.testing.assert_array_equal(np.asarray(augment_fn(key, sharded)), np.asarray(augment_fn(key, images)))
