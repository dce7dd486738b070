"""Shared test helpers: tiny configs and the location of ../shared."""

from __future__ import annotations

import importlib.util
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
