"""Never lose a search: a run killed by SIGTERM resumes bit for bit; damaged checkpoints, config changes
and numerical faults are handled as documented.

Searches use the quick NB201 configs on synthetic data. The run that gets the signal, and the runs whose
exit status and messages matter, are `launch.py` subprocesses; the others run in this process (no start-up
cost), overlapping with a subprocess where they can. Compiled programs come from JAX's persistent cache
(tests/conftest.py), which subprocesses and this process share.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from jnas import loop
from jnas import run as run_lib
from tests.helpers import REPO, load_config

pytestmark = pytest.mark.slow

TIMEOUT = 600
# DARTS: 128 weight images in batches of 8, so epochs of 16 steps; a checkpoint every 4 steps and at
# epoch ends. The signal comes after step 4; the rest of the epoch leaves it time to land inside it.
STEPS_PER_EPOCH = 16
RESUMABLE = {"data.source": "synthetic", "data.synthetic_size": 256, "max_steps_per_epoch": STEPS_PER_EPOCH,
             "checkpoint_every_steps": 4}
# The architecture's Adam moves α by about its lr per step, so 3e38 overflows float32 in step 2: that
# step's gradient holds the decay term 1e-3·α ≈ 3e35, whose square makes Adam's second moment infinite.
EXPLODING = {"data.source": "synthetic", "arch_optimizer.lr": 3e38, "num_epochs": 1}


def quick_config(name: str, overrides: dict, variant: str = "quick") -> ml_collections.ConfigDict:
    config = load_config(name, variant)
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node[part]
        node[leaf] = value
    return config


def flags(name: str, overrides: dict, variant: str = "quick") -> list[str]:
    """The launch.py arguments of `quick_config(name, overrides, variant)`."""
    return [f"--config=configs/{name}.py:{variant}"] + [f"--config.{k}={v}" for k, v in overrides.items()]


class Launch:
    """launch.py running in the background; stdout and stderr go to a file beside the workdir."""

    def __init__(self, workdir: Path, *args: str):
        self.workdir = workdir
        self.log = workdir.parent / f"{workdir.name}.log"
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(REPO / "launch.py"), f"--workdir={workdir}", *args], cwd=REPO,
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO)})

    def wait(self) -> "Launch":
        self.returncode = self.process.wait(timeout=TIMEOUT)
        self.output = self.log.read_text()
        return self

    def signal_after(self, text: str, signum: int) -> threading.Thread:
        """Send `signum` as soon as `text` is in the output, from a thread; its `error` says if it could not."""

        def watch():
            deadline = time.monotonic() + TIMEOUT
            while text not in self.log.read_text():
                if self.process.poll() is not None or time.monotonic() > deadline:
                    watcher.error = f"no {text!r} before exit or timeout:\n{self.log.read_text()[-3000:]}"
                    return
                time.sleep(0.02)
            self.process.send_signal(signum)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.error = None
        watcher.start()
        return watcher


@contextlib.contextmanager
def captured_logs():
    """The messages logged in this process inside the block (what launch.py would print)."""
    messages: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: messages.append(record.getMessage())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield messages
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def run_here(config: ml_collections.ConfigDict, workdir: Path) -> str:
    """The search run in this process, as launch.py runs it; returns its log."""
    with captured_logs() as messages:
        run_lib.main(config, str(workdir))
    return "\n".join(messages)


def genotype(workdir: Path) -> dict:
    return json.loads((workdir / "genotype.json").read_text())


def metrics(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def checkpoint_steps(workdir: Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def checkpoint_extra(workdir: Path, step: int) -> dict:
    return json.loads((workdir / "checkpoints" / str(step) / "extra" / "metadata").read_text())


def assert_same_search(resumed: Path, reference: Path) -> None:
    """Bit for bit: the JSON floats are the exact decimal forms of the float32 values."""
    ours, theirs = genotype(resumed), genotype(reference)
    for key in ("genotype", "arch_params", "op_mask"):
        assert ours.get(key) == theirs.get(key), key
    ours, theirs = metrics(resumed), metrics(reference)
    epochs = [m["epoch"] for m in theirs]
    assert [m["epoch"] for m in ours] == epochs == list(range(1, len(epochs) + 1))  # each epoch once
    for key in ("lr", "train_loss", "train_acc", "valid_loss", "valid_acc", "grad_norm", "genotype"):
        assert [m[key] for m in ours] == [m[key] for m in theirs], key


def truncate_arrays(step_dir: Path) -> None:
    files = [f for f in (step_dir / "state").rglob("*") if f.is_file() and f.parent.name == "d"]
    assert files, f"no array files under {step_dir}"
    for f in files:
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


@pytest.fixture(scope="module")
def darts(tmp_path_factory):
    """DARTS on NB201: launch.py gets SIGTERM inside its first epoch while the same search runs here
    uninterrupted; then the killed run is resumed here."""
    root = tmp_path_factory.mktemp("darts")
    victim = Launch(root / "killed", *flags("darts_nb201_cifar10", RESUMABLE))
    # Logged once the step-4 state is copied to host: the loop is then at step 4 or 5 of 16.
    watcher = victim.signal_after("checkpoint of step 4 started", signal.SIGTERM)
    config = quick_config("darts_nb201_cifar10", RESUMABLE)
    run_here(config, root / "reference")
    watcher.join(TIMEOUT)
    assert watcher.error is None, watcher.error
    victim.wait()
    resumed = root / "resumed"
    shutil.copytree(victim.workdir, resumed)
    # log_every_steps only steers the run: changing it needs no resume=force, nor changes any result.
    config.log_every_steps = 3
    log = run_here(config, resumed)
    return {"reference": root / "reference", "victim": victim, "resumed": resumed, "log": log}


def test_sigterm_saves_the_current_step_and_exits_with_the_preempted_status(darts):
    victim = darts["victim"]
    assert victim.returncode == loop.EXIT_PREEMPTED == 75, victim.output[-3000:]
    assert "Traceback" not in victim.output
    newest = checkpoint_steps(victim.workdir)[-1]
    assert f"stopped by SIGTERM after step {newest}" in victim.output
    extra = checkpoint_extra(victim.workdir, newest)
    # Mid-epoch: the checkpoint holds the position in the data order and the epoch's metrics so far.
    assert extra["epoch"] == 0 and 4 < extra["position"] == newest < STEPS_PER_EPOCH
    assert len(extra["epoch_metrics"]["train_loss"]) == newest
    assert extra["history"] == [] and metrics(victim.workdir) == []
    assert not (victim.workdir / "genotype.json").exists()


def test_resumed_run_equals_the_uninterrupted_one_bit_for_bit(darts):
    newest = checkpoint_steps(darts["victim"].workdir)[-1]
    assert f"resuming {darts['resumed']} at step {newest}" in darts["log"]
    assert_same_search(darts["resumed"], darts["reference"])
    assert checkpoint_steps(darts["resumed"])[-1] == 2 * STEPS_PER_EPOCH


@pytest.fixture(scope="module")
def drnas(tmp_path_factory):
    """Progressive DrNAS (a sampling method; 2 stages of 2 epochs of 2 steps, a checkpoint per epoch): an
    uninterrupted run, then a copy of it with its last checkpoint damaged beside an unfinished write,
    resumed from inside stage 2 (the checkpoint's K, pruned ops and widened shapes)."""
    root = tmp_path_factory.mktemp("drnas")
    config = quick_config("drnas_nb201_cifar10", {"data.source": "synthetic", "keep_checkpoints": 10},
                          "progressive,quick")
    reference, damaged = root / "reference", root / "damaged"
    run_here(config, reference)
    assert checkpoint_steps(reference) == [2, 4, 6, 8]
    shutil.copytree(reference, damaged)
    (damaged / "genotype.json").unlink()
    truncate_arrays(damaged / "checkpoints" / "8")
    shutil.copytree(damaged / "checkpoints" / "6",
                    damaged / "checkpoints" / "9.orbax-checkpoint-tmp-1700000000000000")
    return {"reference": reference, "damaged": damaged, "log": run_here(config, damaged)}


# Reading the damaged array makes orbax abandon its other pending reads, whose callbacks then find their
# event loop closed: noise from orbax's internals (as in tests/test_checkpoint.py), not an error.
damaged_read_noise = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@damaged_read_noise
def test_damaged_newest_checkpoint_is_skipped_with_a_warning(drnas):
    damaged, log = drnas["damaged"], drnas["log"]
    assert "unfinished checkpoint writes" in log
    assert "checkpoint step 8 in" in log and "unreadable" in log
    assert (damaged / "checkpoints" / "8.corrupt").is_dir()  # kept for inspection
    assert f"resuming {damaged} at step 6" in log


@damaged_read_noise
def test_progressive_run_resumes_inside_a_later_stage_bit_for_bit(drnas):
    assert checkpoint_extra(drnas["reference"], 6)["stage"] == 1
    # metrics.jsonl held all 4 epochs: the one computed again is not duplicated.
    assert_same_search(drnas["damaged"], drnas["reference"])


def test_a_different_config_is_refused_unless_forced(darts, tmp_path):
    reference = darts["reference"]
    workdirs = {name: tmp_path / name for name in ("refused", "never", "forced", "misfit")}
    for workdir in workdirs.values():
        shutil.copytree(reference, workdir)
    args = flags("darts_nb201_cifar10", RESUMABLE)
    refused, never, forced, misfit = [launch.wait() for launch in (
        Launch(workdirs["refused"], *args, "--config.eval_batches=1", "--config.seed=3"),
        Launch(workdirs["never"], *args, "--config.resume=never"),
        Launch(workdirs["forced"], *args, "--config.eval_batches=1", "--config.resume=force"),
        Launch(workdirs["misfit"], *args, "--config.model.init_channels=8", "--config.resume=force"))]
    recorded = (reference / "config.json").read_text()

    assert refused.returncode == 1 and "Traceback" not in refused.output
    assert "eval_batches: 2 there, 1 now" in refused.output and "seed: 0 there, 3 now" in refused.output
    assert "--config.resume=force" in refused.output
    assert (workdirs["refused"] / "config.json").read_text() == recorded

    assert never.returncode == 1 and "config.resume=never" in never.output and "Traceback" not in never.output

    assert forced.returncode == 0, forced.output[-3000:]
    assert "config.resume=force" in forced.output and "eval_batches: 2 there, 1 now" in forced.output
    assert json.loads((workdirs["forced"] / "config.json").read_text())["eval_batches"] == 1
    # The finished run's last checkpoint is restored and nothing is computed again.
    assert genotype(workdirs["forced"]) == genotype(reference)
    assert metrics(workdirs["forced"]) == metrics(reference)

    # Forced onto a state of other shapes: a clear error, and the checkpoints stay as they were.
    assert misfit.returncode == 1 and "Traceback" not in misfit.output
    assert "do not fit this config" in misfit.output and "give a fresh --workdir" in misfit.output
    assert checkpoint_steps(workdirs["misfit"]) == checkpoint_steps(reference)


def test_exploding_learning_rate_stops_or_skips_the_faulty_steps(tmp_path):
    # "stop" in launch.py (its exit status and message), "skip_step" here, at the same time.
    stop = Launch(tmp_path / "stop", *flags("darts_nb201_cifar10", {**EXPLODING, "checkpoint_every_steps": 1}))
    skip = tmp_path / "skip"
    run_here(quick_config("darts_nb201_cifar10", {**EXPLODING, "nan_policy": "skip_step"}), skip)
    stop.wait()

    assert stop.returncode == 1, stop.output[-3000:]
    assert "Traceback" not in stop.output
    assert "non-finite architecture optimizer state in step 2 (epoch 1, its step 2 of 4)" in stop.output
    assert "nan_policy=skip_step" in stop.output
    # The checkpoint of step 1, from before the fault, is kept; the faulty state is never saved.
    assert checkpoint_steps(stop.workdir) == [1] and "newest checkpoint (step 1 in" in stop.output
    assert not (stop.workdir / "genotype.json").exists()

    [line] = metrics(skip)
    assert line["skipped_steps"] == 3  # step 1 is fine; every later one overflows the same way
    assert np.isfinite(line["train_loss"]) and np.isfinite(line["grad_norm"])
    assert all(np.isfinite(np.asarray(v)).all() for v in genotype(skip)["arch_params"].values())


STOP_SIGNALS_SCRIPT = """
import os, signal, time
from jnas.checkpoint import StopSignals

before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
with StopSignals() as signals:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.05)
    assert signals.requested(sync=True) and signals.signum == signal.SIGINT
assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
print("first signal: stop requested, handlers restored", flush=True)
with StopSignals():
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)
print("not reached", flush=True)
"""


def test_second_signal_exits_at_once_and_handlers_are_restored():
    result = subprocess.run([sys.executable, "-c", STOP_SIGNALS_SCRIPT], cwd=REPO, capture_output=True, text=True,
                            timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert "handlers restored" in result.stdout, result.stderr[-2000:]
    assert result.returncode == 128 + signal.SIGTERM and "not reached" not in result.stdout
    assert "SIGTERM again: exiting now" in result.stderr
