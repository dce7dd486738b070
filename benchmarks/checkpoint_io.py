"""Time checkpoints: state size, save (blocking the loop, and until committed), restore; epoch overhead.

    python benchmarks/checkpoint_io.py                    # both parts, appended to benchmarks/RESULTS.md
    python benchmarks/checkpoint_io.py --cpu-devices=4    # simulate 4 devices on a CPU host
    python benchmarks/checkpoint_io.py --unpacked         # also save every array as its own orbax item
    python benchmarks/checkpoint_io.py --search=darts_cifar10 --image-size=8 --fast-compile --skip-io
    python benchmarks/checkpoint_io.py --tiny --no-record # a smoke run of the script itself

Part 1 saves and restores whole states at their reference sizes the way the loops do (`jnas.search`
packs the state into one array per dtype; `jnas.train` reuses that): the DARTS-space search state (8 cells,
C=16, 4 nodes, method darts: weights, BatchNorm statistics, α, SGD momentum and Adam's moments), the
NAS-Bench-201 search state (N=5, C=16) and the DARTS_V2 training state (20 cells, C=36, auxiliary head).
The states have the real layout (from `jax.eval_shape` of the init) and random float32 values: orbax
compresses with zstd, and trained weights and optimizer moments compress about as little as random
numbers, where a fresh init's zero moments would flatter the figures. "save, blocking" is what the loop
waits for (device-to-host copy, packing, starting orbax's background write); "save, committed" adds the
background write until the checkpoint is final on disk; "restore, arrays" reads the newest checkpoint
back onto the mesh; "restore, resumed run" is what a resumed run waits for in `_restore` (that plus
rebuilding the network and tracing the state's shapes). Medians over `--repeats` saves after a warm-up.

Part 2 runs a short real search (the config's network; `--batch`, `--steps` per epoch, `--image-size`
synthetic images, which change the step's cost but not the state's size) with its checkpoint at every epoch
end and with saving switched off, alternately `--runs` times each so that a change in the machine's load
hits both alike, and compares the time from the start of one epoch to the start of the next (steps,
evaluation, metrics line, the checkpoint, and the background write competing with the next steps),
skipping each run's first (compiling) epoch. `--fast-compile` lowers XLA's CPU code-generation effort (as
tests/conftest.py does): a DARTS-space search step compiles in minutes instead of many, runs slower, and
writes its checkpoints exactly as fast.
"""

from __future__ import annotations

import argparse
import os
import sys

# The device count must be fixed before JAX starts.
if __name__ == "__main__":
    _early = argparse.ArgumentParser(add_help=False)
    _early.add_argument("--cpu-devices", type=int, default=0)
    _early.add_argument("--fast-compile", action="store_true")
    _known = _early.parse_known_args()[0]
    _flags = os.environ.get("XLA_FLAGS", "")
    if _known.cpu_devices > 0:
        _flags += f" --xla_force_host_platform_device_count={_known.cpu_devices}"
    if _known.fast_compile:
        _flags += " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    os.environ["XLA_FLAGS"] = _flags.strip()

import datetime  # noqa: E402
import importlib.util  # noqa: E402
import logging  # noqa: E402
import pathlib  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jnas import checkpoint as checkpoint_lib  # noqa: E402
from jnas import data as data_lib  # noqa: E402
from jnas import genotypes, loop, parallel, search, train  # noqa: E402

IMAGE_SHAPE = (32, 32, 3)
STEPS_PER_EPOCH = 390  # only recorded in the checkpoint (25k images in batches of 64)


def load_config(name: str, variant: str | None = None):
    path = ROOT / "configs" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


def _random_like(shapes, seed: int, mesh):
    """Arrays of `shapes` (ShapeDtypeStructs) replicated over `mesh`: random floats, zero integers."""
    rng = np.random.default_rng(seed)

    def fill(leaf):
        if np.issubdtype(leaf.dtype, np.inexact):
            value = rng.standard_normal(leaf.shape).astype(leaf.dtype)
        else:
            value = np.zeros(leaf.shape, leaf.dtype)
        return parallel.put_replicated(value, mesh)

    return jax.tree.map(fill, shapes)


class Workload:
    """A state of reference shapes, and how the loop that owns it packs, saves and restores it."""

    def __init__(self, label: str, kind: str, config, mesh):
        self.label, self.kind, self.config, self.mesh = label, kind, config, mesh
        if kind == "search":
            self.built = search.build(config, 10, STEPS_PER_EPOCH)
            self.shapes = jax.eval_shape(lambda: search.init_state(self.built, jax.random.PRNGKey(0), IMAGE_SHAPE))
        else:
            genotype = genotypes.resolve(config.genotype, config.space)
            self.built = train.build(config, genotype, 10, STEPS_PER_EPOCH)
            self.shapes = jax.eval_shape(lambda: train.init_state(self.built, jax.random.PRNGKey(0), IMAGE_SHAPE))
        self.state = _random_like(self.shapes, 0, mesh)

    @property
    def num_arrays(self) -> int:
        return len(jax.tree.leaves(self.shapes))

    @property
    def megabytes(self) -> float:
        return sum(np.dtype(x.dtype).itemsize * int(np.prod(x.shape)) for x in jax.tree.leaves(self.shapes)) / 1e6

    def extra(self, step: int, host) -> dict:
        extra = {"epoch": step, "position": 0, "steps_per_epoch": STEPS_PER_EPOCH, "history": [],
                 "epoch_metrics": {}, "epoch_seconds": 0.0, "state_layout": loop.layout_digest(host)}
        if self.kind == "search":
            extra.update(stage=0, op_mask=None)
        return extra

    def save(self, ckpt: checkpoint_lib.Checkpointer, step: int, packed: bool) -> None:
        """What the loop's `save` does (jnas.loop.EpochLoop.save)."""
        host = jax.device_get(self.state)
        if packed:
            ckpt.save(step, loop.pack_state(host, self.mesh), self.extra(step, host))
        else:
            ckpt.save(step, self.state, self.extra(step, host))

    def restore_arrays(self, ckpt: checkpoint_lib.Checkpointer, packed: bool):
        sharding = parallel.replicated(self.mesh)
        if not packed:
            template = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), self.shapes)
            return ckpt.restore_latest(template)[0]
        packed = ckpt.restore_latest(loop.packed_template(self.shapes, self.mesh))[0]
        return loop.unpack_state(packed, self.shapes, self.mesh)

    def restore_resumed(self, ckpt: checkpoint_lib.Checkpointer):
        """The loop's own `_restore`: traces the state's shapes (a search also rebuilds its network), then reads."""
        if self.kind == "search":
            return search._restore(ckpt, self.config, 10, STEPS_PER_EPOCH, IMAGE_SHAPE, self.mesh)[1]
        return train._restore(ckpt, self.built, IMAGE_SHAPE, STEPS_PER_EPOCH, self.mesh)[0]


def workloads(mesh, tiny: bool) -> list[Workload]:
    darts = load_config("darts_cifar10")
    nb201 = load_config("darts_nb201_cifar10")
    trained = load_config("train_cifar10")
    if tiny:
        darts.model.num_cells, darts.space_options.num_nodes, darts.model.init_channels = 3, 2, 4
        nb201.model.num_cells, nb201.model.init_channels = 1, 4
        trained.model.num_cells, trained.model.init_channels = 3, 4
    return [
        Workload(f"DARTS-space search ({darts.model.num_cells} cells, C={darts.model.init_channels}, "
                 f"{darts.space_options.num_nodes} nodes, {darts.method})", "search", darts, mesh),
        Workload(f"NB201 search (N={nb201.model.num_cells}, C={nb201.model.init_channels}, {nb201.method})",
                 "search", nb201, mesh),
        Workload(f"training {trained.genotype} ({trained.model.num_cells} cells, C={trained.model.init_channels}, "
                 "auxiliary head)", "train", trained, mesh),
    ]


def measure_io(workload: Workload, repeats: int, packed: bool) -> dict:
    folder = tempfile.mkdtemp(prefix="jnas-ckpt-bench-")
    try:
        blocking, committed = [], []
        with checkpoint_lib.Checkpointer(folder, keep=2) as ckpt:
            for step in range(repeats + 1):  # the first save warms up orbax and the transfers
                start = time.perf_counter()
                workload.save(ckpt, step, packed)
                saved = time.perf_counter()
                ckpt.wait()
                done = time.perf_counter()
                if step > 0:
                    blocking.append(saved - start)
                    committed.append(done - start)
        on_disk = sum(f.stat().st_size for f in pathlib.Path(folder, "checkpoints", str(repeats)).rglob("*")
                      if f.is_file())
        arrays, resumed = [], []
        for _ in range(repeats):
            with checkpoint_lib.Checkpointer(folder, keep=2) as ckpt:
                start = time.perf_counter()
                jax.block_until_ready(workload.restore_arrays(ckpt, packed))
                arrays.append(time.perf_counter() - start)
            if packed:
                with checkpoint_lib.Checkpointer(folder, keep=2) as ckpt:
                    start = time.perf_counter()
                    jax.block_until_ready(workload.restore_resumed(ckpt))
                    resumed.append(time.perf_counter() - start)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "state": workload.label,
        "layout": "packed per dtype" if packed else "one orbax array per leaf",
        "arrays": workload.num_arrays,
        "MB": f"{workload.megabytes:.1f}",
        "MB on disk": f"{on_disk / 1e6:.1f}",
        "save, blocking s": f"{statistics.median(blocking):.3f}",
        "save, committed s": f"{statistics.median(committed):.3f}",
        "restore, arrays s": f"{statistics.median(arrays):.3f}",
        "restore, resumed run s": f"{statistics.median(resumed):.3f}" if resumed else "n/a",
    }


def measure_epochs(name: str, epochs: int, steps: int, batch: int, image_size: int, runs: int,
                   tiny: bool) -> list[dict]:
    """Epoch-to-epoch seconds of a short search with and without its epoch-end checkpoints."""
    config = load_config(name)
    config.num_epochs, config.max_steps_per_epoch, config.batch_size = epochs, steps, batch
    config.eval_batches = 1
    config.arch_warmup_epochs = 0
    config.data.source = "synthetic"
    config.data.synthetic_size = 2 * steps * batch
    config.data.image_size = image_size
    if tiny:
        config.model.num_cells, config.model.init_channels, config.data.image_size = 1, 4, 8
        if config.space == "darts":
            config.model.num_cells, config.space_options.num_nodes = 3, 2
    dataset = data_lib.load(config.data)
    seconds = {True: [], False: []}
    saves = []
    original_run_epoch, original_save = search._run_epoch, loop.EpochLoop.save
    for checkpointing in (True, False) * runs:
        starts = []

        def timed_epoch(*args, **kwargs):
            starts.append(time.perf_counter())
            return original_run_epoch(*args, **kwargs)

        def timed_save(loop, *args, **kwargs):
            if checkpointing:
                start = time.perf_counter()
                original_save(loop, *args, **kwargs)
                saves.append(time.perf_counter() - start)

        search._run_epoch, loop.EpochLoop.save = timed_epoch, timed_save
        workdir = tempfile.mkdtemp(prefix="jnas-ckpt-epochs-")
        try:
            search.run(config, workdir, dataset)
        finally:
            search._run_epoch, loop.EpochLoop.save = original_run_epoch, original_save
            shutil.rmtree(workdir, ignore_errors=True)
        # Epoch k's time: from its start to the next epoch's (its steps, evaluation, line and checkpoint).
        seconds[checkpointing].extend(np.diff(starts)[1:].tolist())
        print(f"checkpointing={checkpointing}: epochs {np.round(np.diff(starts), 3).tolist()} s", flush=True)
    cells = (f"{config.model.num_cells} cells/stage" if config.space == "nb201" else
             f"{config.model.num_cells} cells, {config.space_options.num_nodes} nodes")
    label = (f"{config.method} on {config.space} (C={config.model.init_channels}, {cells}), batch {batch}, "
             f"{config.data.image_size}x{config.data.image_size} images, {steps} steps/epoch")
    with_ckpt, without = np.median(seconds[True]), np.median(seconds[False])
    return [{
        "search": label,
        "epoch checkpoint": "yes" if checkpointing else "no",
        "epochs timed": len(seconds[checkpointing]),
        "s/epoch median (min, max)": (f"{np.median(seconds[checkpointing]):.3f} ({min(seconds[checkpointing]):.3f}, "
                                      f"{max(seconds[checkpointing]):.3f})"),
        "save, blocking s (median)": f"{np.median(saves):.3f}" if checkpointing else "n/a",
        "overhead s/epoch (medians)": f"{with_ckpt - without:+.3f}" if checkpointing else "",
    } for checkpointing in (True, False)]


def table(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def machine() -> str:
    devices = jax.devices()
    kind = devices[0].device_kind
    simulated = " (simulated with --xla_force_host_platform_device_count)" if (
        devices[0].platform == "cpu" and len(devices) > 1) else ""
    cpu = platform.processor() or platform.machine()
    return f"{len(devices)} x {kind}{simulated}, {os.cpu_count()} CPU cores ({cpu}), JAX {jax.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-devices", type=int, default=0,
                        help="simulate this many devices on a CPU host (0: the machine's devices)")
    parser.add_argument("--repeats", type=int, default=3, help="timed saves and restores per state (median)")
    parser.add_argument("--unpacked", action="store_true", help="also time saving every array on its own")
    parser.add_argument("--search", default="darts_nb201_cifar10", help="config of the timed short search")
    parser.add_argument("--epochs", type=int, default=5, help="epochs of the short search (the first is not timed)")
    parser.add_argument("--steps", type=int, default=4, help="steps per epoch of the short search")
    parser.add_argument("--batch", type=int, default=16, help="global batch of the short search")
    parser.add_argument("--image-size", type=int, default=32, help="synthetic image side of the short search")
    parser.add_argument("--runs", type=int, default=2, help="short searches with and without checkpoints, each")
    parser.add_argument("--fast-compile", action="store_true",
                        help="lower XLA's CPU code-generation effort (compiles faster, runs slower)")
    parser.add_argument("--skip-io", action="store_true", help="only part 2")
    parser.add_argument("--skip-epochs", action="store_true", help="only part 1")
    parser.add_argument("--tiny", action="store_true", help="tiny networks: checks the script in seconds")
    parser.add_argument("--no-record", action="store_true", help="do not append to benchmarks/RESULTS.md")
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.WARNING)
    if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        # The two short searches compile the same programs; only their first epochs (not timed) differ.
        jax.config.update("jax_compilation_cache_dir", os.path.join(tempfile.gettempdir(), "jnas-bench-xla-cache"))

    mesh = parallel.make_mesh()
    io_rows = []
    for workload in [] if args.skip_io else workloads(mesh, args.tiny):
        for packed in (True, False) if args.unpacked else (True,):
            io_rows.append(measure_io(workload, args.repeats, packed))
            print(table(io_rows[-1:]), flush=True)
    epoch_rows = [] if args.skip_epochs else measure_epochs(args.search, args.epochs, args.steps, args.batch,
                                                            args.image_size, args.runs, args.tiny)

    heading = (f"## {datetime.date.today().isoformat()}: checkpoint I/O, {machine()}"
               + (" (tiny)" if args.tiny else ""))
    text = f"\n{heading}\n\n`python benchmarks/checkpoint_io.py {' '.join(sys.argv[1:])}`\n"
    if io_rows:
        text += f"\n{table(io_rows)}\n"
    if epoch_rows:
        text += "\nEpoch-to-epoch time of a short search, with and without its epoch-end checkpoint:\n\n"
        text += f"{table(epoch_rows)}\n"
    print(text)
    if not args.no_record:
        with open(ROOT / "benchmarks" / "RESULTS.md", "a", encoding="utf-8") as f:
            f.write(text)


if __name__ == "__main__":
    main()
