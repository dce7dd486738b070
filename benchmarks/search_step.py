"""Time the search step: ms per step, images/s, compile seconds, peak device memory, GFLOP per step.

    python benchmarks/search_step.py                      # every method at its reference batch and network
    python benchmarks/search_step.py --rows=darts_nb201_cifar10,gdas_nb201_cifar10 --steps=20
    python benchmarks/search_step.py --rows=darts_cifar10@second_order,drnas_cifar10:no_progressive
    python benchmarks/search_step.py --tiny               # a seconds-long smoke run of the script itself

A row is a config name (`configs/<name>.py`), optionally with `:variants` and `@hypergradient`
(first_order, second_order, unrolled, implicit). The batch is the config's (the reference's) unless
`--batch` is given. Progressive DrNAS rows time the first stage. GFLOP/step is XLA's static cost analysis,
which prices a conditional at its dearest branch (GDAS's sampled edges).

Prints a markdown table and appends it, with the date and the device name, to benchmarks/RESULTS.md
(`--no-record` to skip). Data are random CIFAR-shaped images (the step's cost does not depend on them).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import pathlib
import statistics
import sys
import time

import jax
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jnas import data as data_lib  # noqa: E402
from jnas import parallel, search  # noqa: E402

DEFAULT_ROWS = ",".join([
    "darts_nb201_cifar10", "darts_nb201_cifar10@second_order", "darts_nb201_cifar10@unrolled",
    "darts_nb201_cifar10@implicit", "gdas_nb201_cifar10", "drnas_nb201_cifar10", "pcdarts_nb201_cifar10",
    "edas_nb201_cifar10", "sigmoid_nb201_cifar10",
    "darts_cifar10", "darts_cifar10@second_order", "darts_cifar10@unrolled", "darts_cifar10@implicit",
    "pcdarts_cifar10", "gdas_cifar10", "drnas_cifar10", "edas_cifar10", "sigmoid_cifar10",
])


def load_config(row: str):
    """`name[:variants][@hypergradient]` -> (config, label)."""
    spec_text, _, hypergradient = row.partition("@")
    name, _, variants = spec_text.partition(":")
    path = ROOT / "configs" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(variants or None)
    if hypergradient:
        config.hypergradient.kind = hypergradient
    label = f"{config.method} on {config.space}" + (f" ({variants})" if variants else "")
    if config.optimization == "single_level":
        label += ", single level"
    else:
        label += f", {config.hypergradient.kind.replace('_', ' ')}"
    return config, label


def peak_memory_bytes() -> int | None:
    stats = [d.memory_stats() for d in jax.local_devices()]
    peaks = [s.get("peak_bytes_in_use") for s in stats if s]
    return max(peaks) if peaks and None not in peaks else None


def measure(row: str, batch: int | None, steps: int, warmup: int, tiny: bool) -> dict:
    config, label = load_config(row)
    space = config.space
    batch = batch or config.batch_size
    config.batch_size = batch
    config.data.source = "synthetic"
    config.data.synthetic_size = max(2 * batch, 256)
    config.arch_warmup_epochs = 0  # time the whole bi-level step
    if tiny:
        k = max(config.model.partial_channels, *config.method_options.get("stage_partial_channels", (1,)))
        config.model.init_channels = 4 * k
        config.model.num_cells = 1 if space == "nb201" else 3
        if space == "darts":
            config.space_options.num_nodes = 2
        config.data.image_size = 8
    mesh = parallel.make_mesh()
    parallel.check_batch_size(batch, mesh)
    dataset = data_lib.load(config.data)
    s = search.build(config, dataset.num_classes, steps_per_epoch=1000)
    state = jax.device_put(search.init_state(s, jax.random.PRNGKey(0), dataset.train_images.shape[1:]),
                           parallel.replicated(mesh))
    train = search.DeviceSplit(dataset.train_images, dataset.train_labels, mesh)
    valid = search.DeviceSplit(dataset.test_images, dataset.test_labels, mesh)
    index = np.arange(batch)
    train_batch, valid_batch = train.batch(index), valid.batch(index)

    step = search.make_step(s, mesh)
    start = time.perf_counter()
    compiled = step.lower(state, train_batch, valid_batch).compile()
    compile_seconds = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = (cost or {}).get("flops")

    for _ in range(warmup):
        state, metrics = compiled(state, train_batch, valid_batch)
    jax.block_until_ready(state)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = compiled(state, train_batch, valid_batch)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - start)
    ms = 1000 * statistics.median(times)
    peak = peak_memory_bytes()
    return {
        "workload": label + (" (tiny)" if tiny else ""),
        "batch": batch,
        "ms/step": f"{ms:.1f}",
        "images/s": f"{batch / (ms / 1000):.0f}",
        "compile s": f"{compile_seconds:.1f}",
        "peak memory": f"{peak / 2**30:.2f} GiB" if peak else "n/a",
        "GFLOP/step": f"{flops / 1e9:.1f}" if flops else "n/a",
    }


def table(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default=DEFAULT_ROWS,
                        help="comma-separated config[:variants][@hypergradient] rows")
    parser.add_argument("--batch", type=int, default=None, help="global batch (default: each config's)")
    parser.add_argument("--steps", type=int, default=50, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--tiny", action="store_true", help="tiny networks on 8x8 images: checks the script")
    parser.add_argument("--no-record", action="store_true", help="do not append to benchmarks/RESULTS.md")
    args = parser.parse_args()

    rows = []
    for row in args.rows.split(","):
        rows.append(measure(row, args.batch, args.steps, args.warmup, args.tiny))
        print(table(rows[-1:]), flush=True)
    devices = jax.devices()
    device = f"{len(devices)} x {devices[0].device_kind} ({devices[0].platform})"
    text = (f"\n## {datetime.date.today().isoformat()}, {device}, jax {jax.__version__}, "
            f"median of {args.steps} steps after {args.warmup} warm-up\n\n{table(rows)}\n")
    print(text)
    if not args.no_record:
        with open(ROOT / "benchmarks" / "RESULTS.md", "a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
