"""NAS-Bench-201 ground-truth lookup: the real table (when /work/shared is present) and a tiny table."""

import csv
import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from jnas.benchmarks import nb201
from jnas.errors import UserError
from jnas.spaces import get

REPO = Path(__file__).resolve().parents[1]
TABLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "nb201" / "nb201_200ep.csv.gz"

ALL_SKIP = "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"
# The cifar10_test (and cifar10_valid_valid) optimum, index 6111, per the data README.
BEST = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|"
# Differs from BEST only on edge 3<-2; a near-tie (index 9930), so a lookup that ignored an edge would show.
RUNNER_UP = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"


@pytest.fixture(scope="module")
def table():
    if not TABLE.is_file():
        pytest.skip(f"NB201 table not found at {TABLE} (the repository's ../shared/data/nb201)")
    return nb201.load_table(TABLE)


def test_real_table_shape(table):
    assert len(table) == 15625
    assert list(table.indices) == list(range(15625))


def test_all_skip_cell(table):
    row = table.lookup(ALL_SKIP)
    assert row["index"] == 1835
    assert row["cifar10_test"] == pytest.approx(54.30, abs=0.01)
    assert row["cifar10_valid_valid"] == pytest.approx(39.77, abs=0.01)
    assert isinstance(row["index"], int) and isinstance(row["cifar10_test"], float)


def test_best_cell(table):
    row = table.lookup(BEST)
    assert row["index"] == 6111
    assert row["arch_str"] == BEST
    assert row["cifar10_test"] == pytest.approx(94.37, abs=0.01)
    assert float(table.values[:, table.numeric_columns.index("cifar10_test")].max()) == row["cifar10_test"]
    runner_up = table.lookup(RUNNER_UP)
    assert runner_up["index"] == 9930
    assert runner_up["cifar10_test"] == pytest.approx(94.3633, abs=1e-3)


def test_equivalent_spellings_and_genotype(table):
    reordered = ("  |nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|"
                 "+|nor_conv_1x1~2|skip_connect~0|nor_conv_3x3~1|  \n")
    assert table.lookup(reordered) == table.lookup(BEST)
    genotype = get("nb201").parse(BEST)
    assert table.lookup(genotype) == table.lookup(BEST)


def test_summary(table):
    row = table.lookup(BEST)
    result = nb201.summary(row)
    assert set(result) == {"nb201_" + name for name in nb201.SUMMARY_COLUMNS}
    assert result["nb201_cifar10_test"] == row["cifar10_test"]
    assert result["nb201_cifar10_valid"] == row["cifar10_valid_valid"]
    with pytest.raises(UserError, match="cifar10_test"):
        nb201.summary({"index": 0})


def test_malformed_arch(table):
    with pytest.raises(UserError, match="unknown NB201 op 'conv_9x9'"):
        table.lookup("|conv_9x9~0|+|none~0|none~1|+|none~0|none~1|none~2|")
    with pytest.raises(UserError, match="node groups"):
        table.lookup("|none~0|")
    with pytest.raises(UserError, match="NB201Genotype"):
        table.lookup(42)


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        nb201.load_table(tmp_path / "nope.csv.gz")


def _write_tiny_table(path, rows, header=None, compress=True):
    header = header or ["index", "arch_str", *nb201.SUMMARY_COLUMNS.values(), "unique_str"]
    opener = gzip.open if compress else open
    with opener(path, "wt", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _tiny_rows():
    archs = [
        "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|",
        ALL_SKIP,
        "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|",
    ]
    return [[i, arch, *(10.0 * i + k for k in range(6)), f"u{i}"] for i, arch in enumerate(archs)]


def test_tiny_table(tmp_path):
    table = nb201.load_table(_write_tiny_table(tmp_path / "tiny.csv.gz", _tiny_rows()))
    assert len(table) == 3
    row = table.lookup(" |skip_connect~0|+|skip_connect~1|skip_connect~0|+|skip_connect~2|skip_connect~0|"
                       "skip_connect~1|")
    assert row == {
        "index": 1, "arch_str": ALL_SKIP, "cifar10_valid_valid": 10.0, "cifar10_test": 11.0,
        "cifar100_valid": 12.0, "cifar100_test": 13.0, "imagenet16_120_valid": 14.0,
        "imagenet16_120_test": 15.0, "unique_str": "u1"}
    assert nb201.summary(row)["nb201_imagenet16_120_test"] == 15.0
    with pytest.raises(UserError, match="not in the table"):
        table.lookup(BEST)


def test_load_is_cached(tmp_path):
    path = _write_tiny_table(tmp_path / "cached.csv.gz", _tiny_rows())
    first = nb201.load_table(path)
    # A different spelling of the same file resolves to the same cache entry.
    assert nb201.load_table(tmp_path / "." / "cached.csv.gz") is first
    assert nb201.load_table(str(path)) is first


def test_bad_files(tmp_path):
    plain = _write_tiny_table(tmp_path / "plain.csv.gz", _tiny_rows(), compress=False)
    with pytest.raises(UserError, match=r"plain\.csv\.gz.*gzip"):
        nb201.load_table(plain)
    header = ["index", "arch_str", "cifar10_test"]
    narrow = _write_tiny_table(tmp_path / "narrow.csv.gz", [[0, ALL_SKIP, 1.0]], header=header)
    with pytest.raises(UserError, match=r"narrow\.csv\.gz lacks the columns \['cifar10_valid_valid'"):
        nb201.load_table(narrow)
    rows = _tiny_rows()
    rows[2][1] = rows[1][1]
    with pytest.raises(UserError, match="more than once"):
        nb201.load_table(_write_tiny_table(tmp_path / "dup.csv.gz", rows))


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "jnas.benchmarks.nb201", *args], cwd=REPO, capture_output=True, text=True,
        timeout=60)


def test_cli(tmp_path):
    # The tiny table keeps the subprocess fast and runs without /work/shared.
    path = _write_tiny_table(tmp_path / "cli.csv.gz", _tiny_rows())
    ok = _cli("--table", str(path), ALL_SKIP)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["cifar10_test"] == 11.0
    bad = _cli("--table", str(path), "|skip_connect~0|")
    assert bad.returncode == 2
    assert bad.stderr.startswith("error:") and "node groups" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_cli_real_table(table):
    result = _cli("--table", str(TABLE), BEST)
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout)
    assert row["index"] == 6111 and row["cifar10_test"] == pytest.approx(94.37, abs=0.01)
