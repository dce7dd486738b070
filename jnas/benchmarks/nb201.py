"""NAS-Bench-201 ground truth: the accuracies of all 15,625 cells, looked up by architecture.

The table is `nb201_200ep.csv.gz` from /work/shared/data/nb201 (see its README for the columns and their
sources): one row per cell with `index`, `arch_str` and the 200-epoch accuracies in %.

    table = load_table("…/nb201_200ep.csv.gz")
    row = table.lookup(genotype)          # or any spelling `jnas.spaces.get("nb201").parse` accepts
    summary(row)                          # {"nb201_cifar10_valid": ..., "nb201_cifar10_test": ..., ...}

Command line:

    python -m jnas.benchmarks.nb201 --table nb201_200ep.csv.gz '|nor_conv_3x3~0|+|...|+|...|'
"""

from __future__ import annotations

import argparse
import csv
import functools
import gzip
import json
import os
import sys
import zlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from jnas.errors import UserError
from jnas.spaces.nb201 import NB201Genotype, NB201Space

# Reported during a search: the NB201 paper's "valid"/"test" pairs per dataset. CIFAR-10 "valid" is the
# cifar10-valid model on the held-out train half; CIFAR-10 "test" is the model trained on all 50k images.
SUMMARY_COLUMNS: dict[str, str] = {
    "cifar10_valid": "cifar10_valid_valid",
    "cifar10_test": "cifar10_test",
    "cifar100_valid": "cifar100_valid",
    "cifar100_test": "cifar100_test",
    "imagenet16_120_valid": "imagenet16_120_valid",
    "imagenet16_120_test": "imagenet16_120_test",
}
SUMMARY_PREFIX = "nb201_"
REQUIRED_COLUMNS: tuple[str, ...] = ("index", "arch_str", *SUMMARY_COLUMNS.values())

_SPACE = NB201Space()


class NB201Table:
    """An in-memory NB201 table: numeric columns as one float64 array, rows found by canonical arch string.

    Build it with `load_table`; the constructor takes already-parsed columns.
    """

    def __init__(
        self,
        path: Path,
        indices: np.ndarray,
        arch_strs: Sequence[str],
        numeric_columns: Sequence[str],
        values: np.ndarray,
        text_columns: dict[str, list[str]],
    ):
        self.path = path
        self.indices = indices
        self.arch_strs = tuple(arch_strs)
        self.numeric_columns = tuple(numeric_columns)
        self.values = values
        self.text_columns = text_columns
        self._row_of = {arch: row for row, arch in enumerate(self.arch_strs)}

    def __len__(self) -> int:
        return len(self.arch_strs)

    @property
    def columns(self) -> tuple[str, ...]:
        return ("index", "arch_str", *self.numeric_columns, *self.text_columns)

    def canonical(self, arch: str | NB201Genotype) -> str:
        """The AutoDL string of `arch` (a genotype or any string the NB201 parser accepts)."""
        if isinstance(arch, NB201Genotype):
            return arch.to_string()
        if isinstance(arch, str):
            try:
                return _SPACE.parse(arch).to_string()
            except ValueError as e:
                raise UserError(f"not a valid NB201 architecture: {e}") from None
        raise UserError(
            f"an NB201 architecture must be a string like '|nor_conv_3x3~0|+|...|+|...|' or an "
            f"NB201Genotype, got {type(arch).__name__}")

    def lookup(self, arch: str | NB201Genotype) -> dict[str, Any]:
        """The row of `arch`: "index" (int), "arch_str" (canonical), every numeric column as a float, and
        any text columns (e.g. NATS-Bench's "unique_str") as strings."""
        arch_str = self.canonical(arch)
        row = self._row_of.get(arch_str)
        if row is None:
            raise UserError(
                f"architecture {arch_str!r} is well-formed but not in the table {self.path} "
                f"({len(self)} rows); NAS-Bench-201 covers the 4-node cells with the ops "
                f"{', '.join(_SPACE.op_names)}")
        result: dict[str, Any] = {"index": int(self.indices[row]), "arch_str": arch_str}
        result.update(
            (name, float(value)) for name, value in zip(self.numeric_columns, self.values[row]))
        result.update((name, column[row]) for name, column in self.text_columns.items())
        return result

    def __repr__(self) -> str:
        return f"NB201Table({str(self.path)!r}, rows={len(self)})"


def summary(row: dict[str, Any]) -> dict[str, float]:
    """The `SUMMARY_COLUMNS` of a `lookup` row, keyed "nb201_<name>" (e.g. "nb201_cifar10_test")."""
    missing = [column for column in SUMMARY_COLUMNS.values() if column not in row]
    if missing:
        raise UserError(
            f"the NB201 row lacks the summary columns {missing}; pass a row from NB201Table.lookup of a "
            f"table with the columns {list(SUMMARY_COLUMNS.values())}")
    return {SUMMARY_PREFIX + name: float(row[column]) for name, column in SUMMARY_COLUMNS.items()}


def load_table(path: str | os.PathLike) -> NB201Table:
    """Reads an NB201 table (gzip CSV); each file is read once per process (cached by resolved path)."""
    return _load_resolved(Path(path).expanduser().resolve())


@functools.lru_cache(maxsize=None)
def _load_resolved(path: Path) -> NB201Table:
    expected = (
        f"a gzip-compressed CSV with a header row holding at least the columns {', '.join(REQUIRED_COLUMNS)} "
        f"(e.g. /work/shared/data/nb201/nb201_200ep.csv.gz)")
    if not path.is_file():
        raise UserError(f"NB201 table {path} does not exist or is not a file; expected {expected}")
    try:
        with gzip.open(path, "rt", newline="", encoding="utf-8") as f:
            records = list(csv.reader(f))
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"cannot read NB201 table {path} ({e}); expected {expected}") from None
    if not records:
        raise UserError(f"NB201 table {path} is empty; expected {expected}")
    header, records = records[0], records[1:]
    missing = [column for column in REQUIRED_COLUMNS if column not in header]
    if missing:
        raise UserError(f"NB201 table {path} lacks the columns {missing}; expected {expected}")
    if len(set(header)) != len(header):
        raise UserError(f"NB201 table {path} has repeated column names in its header {header}")
    if not records:
        raise UserError(f"NB201 table {path} has a header but no rows; expected {expected}")
    for line, record in enumerate(records, start=2):
        if len(record) != len(header):
            raise UserError(
                f"NB201 table {path} line {line} has {len(record)} fields, the header has {len(header)}")

    columns = {name: [record[k] for record in records] for k, name in enumerate(header)}
    try:
        indices = np.array([int(value) for value in columns.pop("index")], np.int64)
    except ValueError as e:
        raise UserError(f"NB201 table {path} has a non-integer 'index' value ({e})") from None
    raw_arch_strs = columns.pop("arch_str")
    arch_strs = []
    for line, arch in enumerate(raw_arch_strs, start=2):
        try:
            arch_strs.append(_SPACE.parse(arch).to_string())
        except ValueError as e:
            raise UserError(f"NB201 table {path} line {line}: bad arch_str ({e})") from None
    if len(set(arch_strs)) != len(arch_strs):
        raise UserError(f"NB201 table {path} lists some architectures more than once; each must be unique")

    # Columns whose every value parses as a float are numeric; the rest (NATS's unique_str) stay text.
    numeric, text = {}, {}
    for name, column in columns.items():
        try:
            numeric[name] = np.array([float(value) for value in column], np.float64)
        except ValueError:
            if name in REQUIRED_COLUMNS:
                raise UserError(
                    f"NB201 table {path} column {name!r} holds non-numeric values; it must hold "
                    f"accuracies in %") from None
            text[name] = column
    values = np.stack(list(numeric.values()), axis=1)
    return NB201Table(path, indices, arch_strs, list(numeric), values, text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jnas.benchmarks.nb201",
        description="Print the NAS-Bench-201 ground-truth row of one architecture as JSON.")
    parser.add_argument("--table", required=True, help="the table, e.g. nb201_200ep.csv.gz")
    parser.add_argument("arch", help="an NB201 architecture string, e.g. '|nor_conv_3x3~0|+|...|+|...|'")
    args = parser.parse_args(argv)
    try:
        row = load_table(args.table).lookup(args.arch)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(row, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
