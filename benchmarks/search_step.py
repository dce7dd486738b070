"""Time the search step: ms per step, images/s, compile seconds, peak device memory, GFLOP per step.

    python benchmarks/search_step.py                      # every method at its reference batch and network
    python benchmarks/search_step.py --rows=darts_nb201_cifar10,gdas_nb201_cifar10 --steps=20
    python benchmarks/search_step.py --rows=darts_cifar10@second_order,drnas_cifar10:no_progressive
    python benchmarks/search_step.py --tiny               # a seconds-long smoke run of the script itself
    python benchmarks/search_step.py --compile-only       # compile time, XLA cost and memory; no steps run
    python benchmarks/search_step.py --fuse-edges         # the fused supernet edges (config.model.fuse_edges)
    python benchmarks/search_step.py --set=model.scan_cells=true --set=model.remat=true

A row is a config name (`configs/<name>.py`), optionally with `:variants` and `@hypergradient`
(first_order, second_order, unrolled, implicit). The batch is the config's (the reference's) unless
`--batch` is given. Progressive DrNAS rows time the first stage. GFLOP/step is XLA's static cost analysis,
which prices a conditional at its dearest branch (GDAS's sampled edges), and GB/step its bytes accessed.
The floor is the larger of GFLOP / peak FLOP/s and GB / memory bandwidth for the devices in `PEAKS` (their
data sheets; fp32 rows use the fp32 non-tensor-core rate, bf16 rows the dense bf16 rate); "XLA memory" is the
compiled step's arguments + outputs + temporaries - aliased (donated) bytes per device, known before running.
"convs" counts the convolutions in the compiled program (XLA convolutions, or cuDNN calls on a GPU) and
"fusions" its fused kernels: on a GPU each is a kernel launch, which is what bounds a supernet step there.
XLA's analysis counts a loop body once, so with `model.scan_cells` the GFLOP, GB, convs and fusions cover
one cell per scanned run (marked *, and no floor is given).

Prints a markdown table and appends it, with the date and the device name, to benchmarks/RESULTS.md
(`--no-record` to skip). Data are random CIFAR-shaped images (the step's cost does not depend on them).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
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
from jnas.data import pipeline as data_pipeline  # noqa: E402

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


# Per-device data-sheet peaks: (fp32 FLOP/s without tensor cores, dense bf16 FLOP/s, memory bytes/s).
PEAKS = {
    "NVIDIA H100 80GB HBM3": (67e12, 989e12, 3.35e12),
    "NVIDIA H200": (67e12, 989e12, 4.8e12),
    "NVIDIA A100-SXM4-80GB": (19.5e12, 312e12, 2.04e12),
}


def floor_seconds(device_kind: str, dtype: str, flops: float | None, bytes_accessed: float | None,
                  num_devices: int) -> float | None:
    """The roofline lower bound of one step spread over `num_devices` identical devices, if their peaks
    are known."""
    peak = PEAKS.get(device_kind)
    if peak is None or not flops:
        return None
    compute = flops / (peak[1] if dtype == "bfloat16" else peak[0])
    memory = (bytes_accessed or 0.0) / peak[2]
    return max(compute, memory) / num_devices


def peak_memory_bytes() -> int | None:
    stats = [d.memory_stats() for d in jax.local_devices()]
    peaks = [s.get("peak_bytes_in_use") for s in stats if s]
    return max(peaks) if peaks and None not in peaks else None


def kernel_counts(hlo_text: str) -> tuple[int, int]:
    """(convolutions, fusions) in a compiled program's HLO text."""
    convolutions = hlo_text.count(" convolution(") + hlo_text.count('custom_call_target="__cudnn$conv')
    return convolutions, hlo_text.count(" fusion(")


def apply_overrides(config, overrides: list[str]) -> str:
    """`key=value` settings (values parsed as JSON, else kept as text) applied to `config`; their label."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected key=value, e.g. --set=model.scan_cells=true")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node[part]
        if leaf not in node:
            raise SystemExit(f"--set {item!r}: the config has no key {key!r}")
        node[leaf] = value
    return "".join(f", {item}" for item in overrides)


def measure(row: str, batch: int | None, steps: int, warmup: int, tiny: bool, compile_only: bool = False,
            dtype: str | None = None, fuse_edges: bool | None = None, overrides: list[str] = ()) -> dict:
    config, label = load_config(row)
    label += apply_overrides(config, list(overrides))
    if dtype:
        config.model.dtype = dtype
    if config.model.dtype != "float32":
        label += f", {config.model.dtype} activations"
    if fuse_edges is not None:
        config.model.fuse_edges = fuse_edges
    if config.model.get("fuse_edges", False):
        label += ", fused edges"
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
    train = data_pipeline.DeviceSplit(dataset.train_images, dataset.train_labels, mesh)
    valid = data_pipeline.DeviceSplit(dataset.test_images, dataset.test_labels, mesh)
    index = np.arange(batch)
    train_batch, valid_batch = train.batch(index), valid.batch(index)

    step = search.make_step(s, mesh)
    start = time.perf_counter()
    compiled = step.lower(state, train_batch, valid_batch).compile()
    compile_seconds = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = (cost or {}).get("flops")
    bytes_accessed = (cost or {}).get("bytes accessed")
    memory = compiled.memory_analysis()
    convolutions, fusions = kernel_counts(compiled.as_text())
    xla_bytes = None if memory is None else (memory.argument_size_in_bytes + memory.output_size_in_bytes
                                             + memory.temp_size_in_bytes - memory.alias_size_in_bytes)
    device = jax.devices()[0]
    floor = floor_seconds(device.device_kind, config.model.dtype, flops, bytes_accessed, mesh.size)
    looped = "*" if config.model.scan_cells else ""  # XLA counts each loop body once
    if looped:
        floor = None
    row = {
        "workload": label + (" (tiny)" if tiny else ""),
        "batch": batch,
        "compile s": f"{compile_seconds:.1f}",
        "GFLOP/step": f"{flops / 1e9:.1f}{looped}" if flops else "n/a",
        "GB/step": f"{bytes_accessed / 1e9:.2f}{looped}" if bytes_accessed else "n/a",
        "floor ms": f"{1000 * floor:.2f}" if floor else "n/a",
        "XLA memory": _size(xla_bytes),
        "convs": f"{convolutions}{looped}",
        "fusions": f"{fusions}{looped}",
    }
    if compile_only:
        return row

    for _ in range(warmup):
        state, metrics = compiled(state, train_batch, valid_batch)
    jax.block_until_ready(state)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = compiled(state, train_batch, valid_batch)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    peak = peak_memory_bytes()
    return {
        **row,
        "ms/step (median, min, max)": f"{1000 * median:.1f} ({1000 * min(times):.1f}, {1000 * max(times):.1f})",
        "images/s": f"{batch / median:.0f}",
        "TFLOP/s": f"{flops / median / 1e12:.2f}" if flops and not looped else "n/a",
        "peak memory": _size(peak),
    }


def _size(num_bytes: int | None) -> str:
    if not num_bytes:
        return "n/a"
    return f"{num_bytes / 2**30:.2f} GiB" if num_bytes >= 2**30 else f"{num_bytes / 2**20:.1f} MiB"


def table(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def device_description() -> str:
    """The devices and JAX version, for a results heading: "4 x NVIDIA H100 80GB HBM3 (gpu), jax 0.10.2"."""
    devices = jax.devices()
    return f"{len(devices)} x {devices[0].device_kind} ({devices[0].platform}), jax {jax.__version__}"


def publish(text: str, record: bool) -> None:
    """Print a results section and, with `record`, append it to benchmarks/RESULTS.md."""
    print(text)
    if record:
        with open(ROOT / "benchmarks" / "RESULTS.md", "a") as f:
            f.write(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default=DEFAULT_ROWS,
                        help="comma-separated config[:variants][@hypergradient] rows")
    parser.add_argument("--batch", type=int, default=None, help="global batch (default: each config's)")
    parser.add_argument("--steps", type=int, default=50, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--tiny", action="store_true", help="tiny networks on 8x8 images: checks the script")
    parser.add_argument("--compile-only", action="store_true",
                        help="compile each step and report XLA's cost and memory analysis without running it")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                        help="activation dtype (config.model.dtype; default: each config's)")
    parser.add_argument("--fuse-edges", action=argparse.BooleanOptionalAction, default=None,
                        help="config.model.fuse_edges (default: each config's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config value for every row, e.g. model.scan_cells=true (repeatable)")
    parser.add_argument("--no-record", action="store_true", help="do not append to benchmarks/RESULTS.md")
    args = parser.parse_args()

    rows = []
    for row in args.rows.split(","):
        rows.append(measure(row, args.batch, args.steps, args.warmup, args.tiny, args.compile_only, args.dtype,
                            args.fuse_edges, args.set))
        print(table(rows[-1:]), flush=True)
    how = ("compile and XLA analysis only" if args.compile_only
           else f"median of {args.steps} steps after {args.warmup} warm-up")
    publish(f"\n## {datetime.date.today().isoformat()}, {device_description()}, {how}\n\n{table(rows)}\n",
            record=not args.no_record)


if __name__ == "__main__":
    main()
