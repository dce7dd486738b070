"""launch.py end to end: every quick config writes every output; bad input fails fast and clearly."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO, real_cifar10_root, shared_or_skip

OUTPUTS = ("config.json", "metrics.jsonl", "genotype.json", "plots/mixing_weights.png")
METRIC_KEYS = {"epoch", "step", "lr", "train_loss", "train_acc", "valid_loss", "valid_acc", "genotype",
               "seconds", "images_per_second"}


def launch(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "launch.py"), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO)})


def check_outputs(workdir, space: str) -> list[dict]:
    for name in OUTPUTS:
        assert (workdir / name).is_file(), f"{name} missing; workdir has {sorted(os.listdir(workdir))}"
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2]
    for m in lines:
        assert METRIC_KEYS <= set(m), METRIC_KEYS - set(m)
    record = json.loads((workdir / "genotype.json").read_text())
    assert record["space"] == space and record["method"] == "darts"
    assert record["genotype"] == lines[-1]["genotype"]
    keys = {"nb201": {"cell"}, "darts": {"normal", "reduce"}}[space]
    assert set(record["arch_params"]) == keys == set(record["mixing_weights"])
    assert (workdir / "plots/mixing_weights.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return lines


@pytest.mark.slow
@pytest.mark.parametrize("name,space,extra", [
    ("darts_nb201_cifar10", "nb201", ()),
    # One node per cell (2 edges instead of 5): the same code and outputs, less to compile.
    ("darts_cifar10", "darts", ("--config.space_options.num_nodes=1",)),
])
def test_quick_config_on_synthetic_data(tmp_path, name, space, extra):
    result = launch(f"--config=configs/{name}.py:quick", "--config.data.source=synthetic",
                    f"--workdir={tmp_path}", *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = check_outputs(tmp_path, space)
    assert "compile_seconds" in lines[0]
    assert json.loads((tmp_path / "config.json").read_text())["data"]["source"] == "synthetic"


@pytest.fixture(scope="session")
def cifar10_folder():
    return real_cifar10_root()


@pytest.mark.slow
def test_quick_search_on_real_cifar10_with_benchmark_lookup(tmp_path, cifar10_folder):
    table = shared_or_skip("data/nb201/nb201_200ep.csv.gz")
    result = launch("--config=configs/darts_nb201_cifar10.py:quick", "--config.data.source=folder",
                    f"--config.data.dir={cifar10_folder}", f"--config.benchmark.nb201_table={table}",
                    f"--workdir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "cifar-10-batches-py" in result.stderr
    lines = check_outputs(tmp_path, "nb201")
    # Every epoch reports the benchmark accuracy of its own genotype, and genotype.json the final one.
    from jnas.benchmarks import nb201

    rows = nb201.load_table(str(table))
    for line in lines:
        assert line["nb201_cifar10_test"] == pytest.approx(rows.lookup(line["genotype"])["cifar10_test"])
    record = json.loads((tmp_path / "genotype.json").read_text())
    assert record["benchmark"]["nb201_cifar10_test"] == lines[-1]["nb201_cifar10_test"]


@pytest.mark.parametrize("override,expected", [
    ("--config.method=dartz", "unknown method 'dartz'"),
    ("--config.space=nasbench", "nasbench"),
    ("--config.batch_size=6", "multiple of the number of devices"),
    ("--config.data.source=ftp", "data.source"),
    ("--config.num_epochs=0", "num_epochs"),
    ("--config.optimizer.lr=-1", "optimizer.lr"),
    ("--config.data.train_portion=1.5", "train_portion"),
    ("--config.hypergradient.kind=third_order", "hypergradient.kind"),
    ("--config.data.image_size=10", "image_size"),
    ("--config.benchmark.nb201_table=/nonexistent/nb201.csv.gz", "nb201_table"),
    ("--config.data.name=mnist", "data.name"),
    ("--config.model.partial_channels=3", "must divide config.model.init_channels=4"),
    ("--config.arch_optimizer.lr=inf", "config.arch_optimizer.lr=inf must be positive and finite"),
    ("--config.seed=-1", "config.seed=-1 must be >= 0"),
    ("--config.data.image_size=0", "image_size"),
    ("--config.resume=sometimes", "config.resume='sometimes' is not one of: auto, force, never"),
    ("--config.nan_policy=ignore", "config.nan_policy='ignore' is not one of: stop, skip_step"),
    ("--config.keep_checkpoints=0", "keep_checkpoints"),
    ("--config.checkpoint_every_steps=-1", "checkpoint_every_steps"),
])
def test_bad_config_values_fail_fast_without_traceback(tmp_path, override, expected):
    result = launch("--config=configs/darts_cifar10.py:quick", "--config.data.source=synthetic",
                    f"--workdir={tmp_path}", override, timeout=120)
    assert result.returncode != 0
    assert expected in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "metrics.jsonl").exists()


def test_misspelt_key_and_unknown_variant_are_errors(tmp_path):
    result = launch("--config=configs/darts_cifar10.py:quick", "--config.batchsize=8", f"--workdir={tmp_path}",
                    timeout=120)
    assert result.returncode != 0 and "batchsize" in result.stderr
    result = launch("--config=configs/darts_cifar10.py:quik", f"--workdir={tmp_path}", timeout=120)
    assert result.returncode != 0 and "quik" in result.stderr and "quick" in result.stderr


def test_missing_data_folder_names_the_fix(tmp_path):
    result = launch("--config=configs/darts_cifar10.py:quick", "--config.data.source=folder",
                    f"--config.data.dir={tmp_path / 'nowhere'}", f"--workdir={tmp_path / 'w'}", timeout=120)
    assert result.returncode != 0
    assert "nowhere" in result.stderr and "Traceback" not in result.stderr


def test_incomplete_or_misshapen_data_folder_names_the_file(tmp_path):
    import pickle

    import numpy as np

    incomplete = tmp_path / "incomplete" / "cifar-10-batches-py"
    incomplete.mkdir(parents=True)
    misshapen = tmp_path / "misshapen" / "cifar-10-batches-py"
    misshapen.mkdir(parents=True)
    with open(misshapen / "data_batch_1", "wb") as f:
        pickle.dump({b"data": np.zeros((10, 100), np.uint8), b"labels": [0] * 10}, f)
    for folder, expected in ((incomplete, "missing"), (misshapen, "(10, 100)")):
        result = launch("--config=configs/darts_cifar10.py:quick", "--config.data.source=folder",
                        f"--config.data.dir={folder.parent}", f"--workdir={tmp_path / 'w'}", timeout=120)
        assert result.returncode != 0
        assert expected in result.stderr and "data_batch_1" in result.stderr, result.stderr[-2000:]
        assert "Traceback" not in result.stderr and not (tmp_path / "w" / "config.json").exists()
