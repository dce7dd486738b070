"""Shared test helpers: tiny configs and the location of ../shared."""

from __future__ import annotations

import fcntl
import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import ml_collections
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def load_config(name: str, variant: str | None = "quick") -> ml_collections.ConfigDict:
    """`configs/<name>.py` through its `get_config`, as launch.py loads it."""
    spec = importlib.util.spec_from_file_location(name, REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


def tiny(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Synthetic 8x8 data, batch 8: small enough that compiling a step takes seconds on 2 cores."""
    config.data.source = "synthetic"
    config.data.image_size = 8
    config.data.synthetic_size = 64
    config.batch_size = 8
    return config


def shared_or_skip(relative: str) -> Path:
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"{path} is absent: the shared data folder exists only beside the project's checkout")
    return path


CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]


def real_cifar10_root() -> Path:
    """A folder holding the shared CIFAR-10 copy in the cifar-10-batches-py layout (skips without it).

    Written once per machine (about 15 s) into $JNAS_TEST_CACHE or the temporary directory, under a file
    lock, so the test workers and test modules that need it share one conversion.
    """
    script = shared_or_skip("data/cifar10/to_cifar_python.py")
    root = Path(os.environ.get("JNAS_TEST_CACHE") or Path(tempfile.gettempdir()) / "jnas-test-cache") / "cifar10-python"
    root.mkdir(parents=True, exist_ok=True)
    folder = root / "cifar-10-batches-py"
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not all((folder / name).is_file() for name in CIFAR10_FILES):
            subprocess.run([sys.executable, str(script), str(root)], check=True, capture_output=True)
    return root
