"""Multi-host input and preemption, on one machine: processes joined by jax.distributed on localhost.

The host pipeline is checked against the device pipeline batch for batch in this process; then a quick
NB201 search runs as two `launch.py` processes of 2 CPU devices each (each reading only its own half of
every global batch) beside the same search in this process on 4 devices. One of the two processes gets
SIGTERM after step 2: both must stop at the same step with one checkpoint, and both resumed must finish
the search this process finished.

Cross-process sums (the gradient's mean over the global batch) go through gloo's all-reduce, whose
order of additions differs from XLA's in-process one, so the two searches agree to float32 rounding,
not bit for bit (measured: losses and accuracies equal, α within 3e-9 after 3 steps).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cloudpickle
import jax
import numpy as np
import pytest

from jnas import loop, parallel
from jnas import run as run_lib
from jnas.data import host_pipeline
from jnas.data import pipeline as data_pipeline
from tests.helpers import REPO, load_config

TIMEOUT = 600
STEPS = 8
# One epoch of 8 steps: 128 synthetic images, 64 train the weights (8 batches of 8), 64 the architecture.
# A checkpoint every 2 steps, kept; a host sync after every step, so a signal is answered at the next one.
SEARCH = {"data.source": "synthetic", "data.synthetic_size": 128, "num_epochs": 1, "max_steps_per_epoch": STEPS,
          "log_every_steps": 1, "checkpoint_every_steps": 2, "keep_checkpoints": 10}
ARCH_TOLERANCE = {"rtol": 1e-5, "atol": 1e-7}


class SeededReader:
    """A reader whose training transform shows the seed: the stored image plus seed % 7."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels, self.image_shape = images, labels.astype(np.int32), images.shape[1:]

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, index: int, seed: int | None) -> np.ndarray:
        return self.images[index] + np.uint8(0 if seed is None else seed % 7)


def small_split(size: int = 40):
    rng = np.random.default_rng(0)
    return rng.integers(0, 200, (size, 4, 4, 3), dtype=np.uint8), rng.integers(0, 10, size).astype(np.int32)


def host_values(batches) -> list[dict[str, np.ndarray]]:
    return [{k: np.asarray(jax.device_get(v)) for k, v in b.items()} for b in batches]


def test_host_split_gives_the_device_split_batches():
    images, labels = small_split()
    mesh = parallel.make_mesh()
    device = data_pipeline.DeviceSplit(images, labels, mesh)
    host = data_pipeline.HostSplit(host_pipeline.ArrayReader(images, labels), mesh)
    assert list(host.local_rows(8)) == list(range(8))  # one process holds every row
    for stream in (data_pipeline.WEIGHT_STREAM, data_pipeline.ARCH_STREAM):
        window = dict(seed=3, epoch=1, batch_size=8, stream=stream)
        # 7 steps over 5 batches per pass: the architecture stream starts its order again.
        ours = host_values(host.epoch_batches(**window, start=0, stop=7))
        theirs = host_values(device.epoch_batches(**window, start=0, stop=7))
        resumed = host_values(host.epoch_batches(**window, start=4, stop=7))
        for a, b in zip(ours, theirs):
            assert a.keys() == b.keys() == {"image", "label"}
            np.testing.assert_array_equal(a["image"], b["image"])
            np.testing.assert_array_equal(a["label"], b["label"])
        for a, b in zip(ours[4:], resumed):
            np.testing.assert_array_equal(a["image"], b["image"])
        batch = host.epoch_batches(**window, start=0, stop=1)
        assert next(batch)["image"].sharding == parallel.batch_sharded(mesh)
    train = host_values(host.epoch_batches(seed=3, epoch=1, batch_size=8, start=0, stop=5))
    arch = host_values(host.epoch_batches(seed=3, epoch=1, batch_size=8, start=0, stop=5,
                                          stream=data_pipeline.ARCH_STREAM))
    assert any((a["label"] != b["label"]).any() for a, b in zip(train, arch))  # streams have their own order
    # Evaluation: the stored order, the last batch padded with example 0 and masked out.
    ours, theirs = host_values(host.eval_batches(16)), host_values(device.eval_batches(16))
    assert len(ours) == 3
    for a, b in zip(ours, theirs):
        for key in ("image", "label", "mask"):
            np.testing.assert_array_equal(a[key], b[key])
    np.testing.assert_array_equal(ours[2]["mask"], np.arange(32, 48) < 40)
    np.testing.assert_array_equal(ours[0]["image"], images[:16])
    assert len(host_values(host.eval_batches(16, max_batches=2))) == 2


@pytest.mark.slow  # grain's workers start Python processes
def test_host_loader_seeds_and_workers():
    """Each example's seed reaches its reader; grain's worker processes return the same rows, in order."""
    images, labels = small_split()
    reader = SeededReader(images, labels)
    split = data_pipeline.HostSplit(reader, parallel.make_mesh())
    window = dict(seed=5, epoch=2, batch_size=8, stream=data_pipeline.ARCH_STREAM)
    index = split.epoch_index(**window, start=1, stop=4)
    seeds = data_pipeline.example_seeds(5, 0, data_pipeline.ARCH_STREAM, 2, np.arange(1, 4), 8)
    # A function of (seed, salt, stream, epoch, step, column): the same whatever window asked for it.
    np.testing.assert_array_equal(
        seeds, data_pipeline.example_seeds(5, 0, data_pipeline.ARCH_STREAM, 2, np.arange(4), 8)[1:])
    assert not np.array_equal(seeds, data_pipeline.example_seeds(5, 1, data_pipeline.ARCH_STREAM, 2,
                                                                 np.arange(1, 4), 8))
    batches = host_values(split.epoch_batches(**window, start=1, stop=4))
    for batch, rows, row_seeds in zip(batches, index, seeds):
        expected = [reader.read(int(i), int(s)) for i, s in zip(rows, row_seeds)]
        np.testing.assert_array_equal(batch["image"], np.stack(expected))
        np.testing.assert_array_equal(batch["label"], labels[rows])
    in_process = list(host_pipeline.HostLoader(reader).iterate(index, seeds))
    # The reader's class goes to the workers by value: importing this module there would cost seconds.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        in_workers = list(host_pipeline.HostLoader(reader, workers=2, prefetch=1).iterate(index, seeds))
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert len(in_workers) == len(in_process) == 3
    for a, b in zip(in_process, in_workers):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    with pytest.raises(ValueError, match="reader holds 40 examples"):
        host_pipeline.HostLoader(reader).iterate(np.full((1, 8), 40), None)


def test_pipeline_config_is_checked():
    config = load_config("darts_nb201_cifar10")
    data_pipeline.check_config(config.data)
    assert (config.data.pipeline, config.data.workers) == ("device", 0)
    for key, value, message in (("pipeline", "gpu", "config.data.pipeline='gpu' is not one of: device, host"),
                                ("workers", -1, "config.data.workers=-1 must be an int >= 0"),
                                ("workers", 2, "config.data.workers=2 needs config.data.pipeline=host")):
        bad = load_config("darts_nb201_cifar10")
        bad.data[key] = value
        with pytest.raises(ValueError, match=re.escape(message)):
            data_pipeline.check_config(bad.data)


# -- two launch.py processes --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def two_device_env(port: int, process_id: int) -> dict[str, str]:
    """This environment, for process `process_id` of 2 with 2 CPU devices each."""
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", ""))
    return {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "2",
            "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count=2",
            "JAX_COORDINATOR_ADDRESS": f"localhost:{port}", "JNAS_NUM_PROCESSES": "2",
            "JNAS_PROCESS_ID": str(process_id)}


class Pair:
    """launch.py as processes 0 and 1 of one run on `workdir`; their output goes to files beside it."""

    def __init__(self, workdir: Path, tag: str):
        port = free_port()
        args = [sys.executable, str(REPO / "launch.py"), f"--workdir={workdir}",
                "--config=configs/darts_nb201_cifar10.py:quick", "--config.data.pipeline=host",
                *(f"--config.{k}={v}" for k, v in SEARCH.items())]
        self.logs = [workdir.parent / f"{tag}.{i}.log" for i in range(2)]
        self.processes = []
        for i, log in enumerate(self.logs):
            with open(log, "w") as out:
                self.processes.append(subprocess.Popen(args, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                                       env=two_device_env(port, i)))

    def wait(self) -> "Pair":
        self.returncodes = [p.wait(timeout=TIMEOUT) for p in self.processes]
        self.outputs = [log.read_text() for log in self.logs]
        return self

    def signal_after(self, text: str, process_id: int, signum: int) -> threading.Thread:
        """Send `signum` to process `process_id` once process 0 has logged `text`; `error` says if it could not."""

        def watch():
            deadline = time.monotonic() + TIMEOUT
            while text not in self.logs[0].read_text():
                if any(p.poll() is not None for p in self.processes) or time.monotonic() > deadline:
                    watcher.error = f"no {text!r} before exit or timeout:\n{self.logs[0].read_text()[-3000:]}"
                    return
                time.sleep(0.02)
            self.processes[process_id].send_signal(signum)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.error = None
        watcher.start()
        return watcher


def metrics(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def checkpoint_steps(workdir: Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def step_metrics(workdir: Path, step: int) -> dict[str, list]:
    """The metrics of the steps of the epoch up to checkpoint `step`, as that checkpoint holds them."""
    return json.loads((workdir / "checkpoints" / str(step) / "extra" / "metadata").read_text())["epoch_metrics"]



def assert_same_epochs(ours: list[dict], theirs: list[dict]) -> None:
    assert [m["epoch"] for m in ours] == [m["epoch"] for m in theirs]
    for a, b in zip(ours, theirs):
        assert a["genotype"] == b["genotype"]
        for key in ("train_loss", "train_acc", "valid_loss", "valid_acc", "grad_norm", "arch_grad_norm"):
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5, err_msg=key)
        for key in a["mixing_weights"]:
            np.testing.assert_allclose(a["mixing_weights"][key], b["mixing_weights"][key], **ARCH_TOLERANCE)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The two-process search, SIGTERM to process 1 once process 0 has saved step 2; the same search in
    this process meanwhile (4 devices, device pipeline); then both processes started again.

    One two-process start compiles for about 40 s on 2 cores (process 1 never finds its programs in the
    persistent cache, see `parallel.start_together`), so the runs are shared by the tests below and the
    uninterrupted two-process part is the steps before the signal.
    """
    root = tmp_path_factory.mktemp("multiprocess")
    workdir = root / "pair"
    killed = Pair(workdir, "killed")
    watcher = killed.signal_after("checkpoint of step 2 started", 1, signal.SIGTERM)
    config = load_config("darts_nb201_cifar10")
    for key, value in SEARCH.items():
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node[part]
        node[leaf] = value
    run_lib.main(config, str(root / "reference"))
    watcher.join(TIMEOUT)
    assert watcher.error is None, watcher.error
    killed.wait()
    stopped_at = checkpoint_steps(workdir)
    finished = (workdir / "genotype.json").exists()
    resumed = Pair(workdir, "resumed").wait()
    return {"reference": root / "reference", "workdir": workdir, "killed": killed, "resumed": resumed,
            "stopped_at": stopped_at, "finished_when_killed": finished}


@pytest.mark.slow
def test_two_processes_search_as_one_process_with_the_same_global_batch(runs):
    # One mesh over both processes' devices, each process reading half of every batch.
    assert all(", 4 devices" in output for output in runs["killed"].outputs)
    # Steps 1 and 2 ran uninterrupted in both processes.
    ours, theirs = step_metrics(runs["workdir"], 2), step_metrics(runs["reference"], 2)
    for key in ("train_loss", "train_acc", "grad_norm", "arch_grad_norm"):
        np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-5, err_msg=key)


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_the_same_step(runs):
    killed = runs["killed"]
    for i, output in enumerate(killed.outputs):
        assert killed.returncodes[i] == loop.EXIT_PREEMPTED == 75, output[-3000:]
        assert "Traceback" not in output
    steps = [int(re.search(r"stopped by SIGTERM after step (\d+)", out).group(1)) for out in killed.outputs]
    # Process 0 never got the signal: it stopped because process 1 had.
    assert "SIGTERM: stopping after the current step" not in killed.outputs[0]
    assert steps[0] == steps[1] and 2 < steps[0] < STEPS
    assert runs["stopped_at"][-1] == steps[0]  # one checkpoint of that step, mid-epoch
    assert len(step_metrics(runs["workdir"], steps[0])["train_loss"]) == steps[0]
    assert not runs["finished_when_killed"]


@pytest.mark.slow
def test_both_processes_resumed_finish_the_search(runs):
    resumed, workdir = runs["resumed"], runs["workdir"]
    assert resumed.returncodes == [0, 0], [out[-3000:] for out in resumed.outputs]
    step = runs["stopped_at"][-1]
    assert all(f"resuming {workdir} at step {step}" in out for out in resumed.outputs)
    assert_same_epochs(metrics(workdir), metrics(runs["reference"]))  # the epoch once, from both runs' steps
    ours, theirs = (json.loads((w / "genotype.json").read_text()) for w in (workdir, runs["reference"]))
    assert ours["genotype"] == theirs["genotype"]
    for key in theirs["arch_params"]:
        np.testing.assert_allclose(ours["arch_params"][key], theirs["arch_params"][key], **ARCH_TOLERANCE)
