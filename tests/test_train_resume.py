"""Training runs are as safe as searches: a run killed by SIGTERM mid-epoch resumes bit for bit, and an
exploding learning rate stops the run or has its faulty steps skipped (jnas.train with the search's
checkpointing, signal handling and NaN guard).

Tiny NB201 networks (one cell per stage, C=4) on synthetic 8x8 images. The runs whose exit status and
messages matter are `launch.py` subprocesses, each overlapping with a run in this process; compiled
programs come from JAX's persistent cache, which the subprocesses share (tests/conftest.py).
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import jax
import numpy as np
import pytest

from jnas import loop
from jnas import run as run_lib
# The search's resume tests' launch.py runner and readers of workdirs.
from tests.test_resume import (TIMEOUT, Launch, captured_logs, checkpoint_extra, checkpoint_steps, flags,
                               quick_config)

pytestmark = pytest.mark.slow

CONFIG = "train_nb201_cifar10"
# 256 training images in batches of 8: epochs of 32 steps; a checkpoint every 12 steps and at epoch ends.
# The signal comes once step 36 (4 steps into epoch 2) is saved, so the killed run has one epoch line in
# its history and a mid-epoch position; the 28 steps left in the epoch give the signal time to land.
STEPS_PER_EPOCH = 32
RESUMABLE = {"data.synthetic_size": 256, "max_steps_per_epoch": STEPS_PER_EPOCH, "checkpoint_every_steps": 12}
SIGNAL_AFTER = 36
# SGD moves the weights by lr x gradient: with lr 1e20, step 1's update is finite but makes weights of
# ~1e20, whose BatchNorm variance (~1e40) overflows float32 in step 2. Every later step overflows the same
# way from the same step-1 weights.
EXPLODING = {"optimizer.lr": 1e20, "num_epochs": 1, "checkpoint_every_steps": 1}
TIMING_KEYS = ("seconds", "images_per_second", "compile_seconds")


def metrics(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def without_timing(lines: list[dict]) -> list[dict]:
    return [{k: v for k, v in line.items() if k not in TIMING_KEYS} for line in lines]


def train_here(config, workdir: Path) -> tuple[dict, str]:
    """The training run in this process, as launch.py runs it: (what it returns, its log)."""
    with captured_logs() as messages:
        out = run_lib.main(config, str(workdir))
    return out, "\n".join(messages)


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """launch.py gets SIGTERM inside epoch 2 while the same training runs here uninterrupted; then the
    killed run is resumed here."""
    root = tmp_path_factory.mktemp("train_resume")
    victim = Launch(root / "killed", *flags(CONFIG, RESUMABLE))
    watcher = victim.signal_after(f"checkpoint of step {SIGNAL_AFTER} started", signal.SIGTERM)
    config = quick_config(CONFIG, RESUMABLE)
    reference, _ = train_here(config, root / "reference")
    watcher.join(TIMEOUT)
    assert watcher.error is None, watcher.error
    victim.wait()
    resumed_dir = root / "resumed"
    shutil.copytree(victim.workdir, resumed_dir)
    resumed, log = train_here(config, resumed_dir)
    return {"root": root, "victim": victim, "reference": reference, "resumed": resumed, "log": log}


def test_sigterm_mid_epoch_saves_the_current_step_and_exits_75(killed):
    victim = killed["victim"]
    assert victim.returncode == loop.EXIT_PREEMPTED == 75, victim.output[-3000:]
    assert "Traceback" not in victim.output
    newest = checkpoint_steps(victim.workdir)[-1]
    assert f"stopped by SIGTERM after step {newest}" in victim.output
    extra = checkpoint_extra(victim.workdir, newest)
    # Inside epoch 2: the checkpoint holds the position in the data order and the epoch's metrics so far.
    assert extra["epoch"] == 1 and SIGNAL_AFTER - STEPS_PER_EPOCH < extra["position"] < STEPS_PER_EPOCH
    assert newest == STEPS_PER_EPOCH + extra["position"]
    assert len(extra["epoch_metrics"]["train_loss"]) == extra["position"]
    # Epoch 1's line is in the checkpoint and was flushed to metrics.jsonl; nothing of epoch 2 is.
    assert [line["epoch"] for line in extra["history"]] == [1] == [line["epoch"] for line in metrics(victim.workdir)]
    assert not (victim.workdir / "result.json").exists()


def test_resumed_training_equals_the_uninterrupted_one_bit_for_bit(killed):
    reference, resumed, resumed_dir = killed["reference"], killed["resumed"], killed["root"] / "resumed"
    newest = checkpoint_steps(killed["victim"].workdir)[-1]
    assert f"resuming {resumed_dir} at step {newest}" in killed["log"]
    for key in ("test_acc", "test_loss", "train_acc", "train_loss", "steps", "epochs"):
        assert resumed[key] == reference[key], key

    def result(workdir: Path) -> dict:
        return {k: v for k, v in json.loads((workdir / "result.json").read_text()).items() if k != "seconds"}

    assert result(resumed_dir) == result(killed["root"] / "reference")
    # Every metric of both epochs (epoch 2's means include the steps before the signal), each epoch once.
    assert without_timing(metrics(resumed_dir)) == without_timing(metrics(killed["root"] / "reference"))
    assert [line["epoch"] for line in metrics(resumed_dir)] == [1, 2]
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed["state"]),
                 jax.device_get(reference["state"]))
    assert checkpoint_steps(resumed_dir)[-1] == 2 * STEPS_PER_EPOCH


def test_exploding_learning_rate_stops_or_skips_the_faulty_steps(tmp_path):
    # "stop" in launch.py (its exit status and message), "skip_step" here, at the same time.
    stop = Launch(tmp_path / "stop", *flags(CONFIG, EXPLODING))
    skipped, _ = train_here(quick_config(CONFIG, {**EXPLODING, "nan_policy": "skip_step"}), tmp_path / "skip")
    stop.wait()

    assert stop.returncode == 1, stop.output[-3000:]
    assert "Traceback" not in stop.output
    assert "non-finite train_loss=nan, grad_norm=nan, parameters" in stop.output
    assert "in step 2 (epoch 1, its step 2 of 4)" in stop.output and "nan_policy=skip_step" in stop.output
    # The checkpoint of step 1, from before the fault, is kept; the faulty state is never saved.
    assert checkpoint_steps(stop.workdir) == [1] and "newest checkpoint (step 1 in" in stop.output
    assert not (stop.workdir / "result.json").exists()

    [line] = metrics(tmp_path / "skip")
    assert line["skipped_steps"] == 3 == skipped["skipped_steps"]  # step 1 is fine; every later one overflows
    assert np.isfinite(line["train_loss"]) and np.isfinite(line["grad_norm"])  # means over the kept step
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(skipped["state"]))
               if np.issubdtype(x.dtype, np.inexact))
    assert int(skipped["state"]["step"]) == 4  # skipped steps still advance the schedule and data order
