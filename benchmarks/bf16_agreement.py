"""Do bf16 activations search the same architecture as float32? Two searches, compared epoch by epoch.

    python benchmarks/bf16_agreement.py --config=configs/darts_nb201_cifar10.py --data-dir=DIR
    python benchmarks/bf16_agreement.py --config=configs/darts_nb201_cifar10.py --data-dir=DIR \\
        --set=model.init_channels=8 --set=model.num_cells=1 --epochs=3 --steps=100   # a CPU-sized run

Both searches start from the same seed and read the same batches; only `model.dtype` differs (the weights,
BatchNorm statistics, architecture parameters and optimizer states are float32 in both). The table gives,
per epoch, each run's derived genotype and validation accuracy, whether the genotypes agree, and the
largest difference between the two runs' mixing weights (the softmax the genotype is derived from).
Appended to benchmarks/RESULTS.md with the date and the device unless `--no-record`.

`--data-dir` is a folder holding `cifar-10-batches-py` (what `to_cifar_python.py` in the shared data
writes); without it the config's own data source is used.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import pathlib
import sys
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.search_step import apply_overrides, device_description, publish, table  # noqa: E402
from jnas import run as run_lib  # noqa: E402


def load_config(spec: str):
    path_text, _, variants = spec.partition(":")
    path = pathlib.Path(path_text)
    module_spec = importlib.util.spec_from_file_location(path.stem, path if path.is_absolute() else ROOT / path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(variants or None)


def search(config, dtype: str) -> list[dict]:
    config = config.copy_and_resolve_references()
    config.model.dtype = dtype
    with tempfile.TemporaryDirectory(prefix=f"jnas-bf16-{dtype}-") as workdir:
        return run_lib.main(config, workdir)["history"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="configs/<name>.py[:variants]")
    parser.add_argument("--data-dir", default="", help="a folder holding cifar-10-batches-py")
    parser.add_argument("--epochs", type=int, default=None, help="config.num_epochs (default: the config's)")
    parser.add_argument("--steps", type=int, default=None, help="config.max_steps_per_epoch")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config value for both runs, e.g. model.init_channels=8 (repeatable)")
    parser.add_argument("--no-record", action="store_true", help="do not append to benchmarks/RESULTS.md")
    args = parser.parse_args()

    config = load_config(args.config)
    if args.data_dir:
        config.data.source, config.data.dir = "folder", args.data_dir
    if args.epochs is not None:
        config.num_epochs = args.epochs
    if args.steps is not None:
        config.max_steps_per_epoch = args.steps
    settings = apply_overrides(config, args.set)
    runs = {dtype: search(config, dtype) for dtype in ("float32", "bfloat16")}
    score = next(k for k in runs["float32"][0] if k.endswith("_acc") and k != "train_acc")
    rows = []
    for fp32, bf16 in zip(runs["float32"], runs["bfloat16"]):
        difference = max(float(np.abs(np.asarray(fp32["mixing_weights"][k]) - np.asarray(bf16["mixing_weights"][k])).max())
                         for k in fp32["mixing_weights"])
        rows.append({
            "epoch": fp32["epoch"],
            "genotype float32": f"`{fp32['genotype']}`",
            "genotype bfloat16": f"`{bf16['genotype']}`",
            "same": "yes" if fp32["genotype"] == bf16["genotype"] else "**no**",
            "max |Δ mixing weight|": f"{difference:.4f}",
            f"{score} float32 / bfloat16": f"{fp32[score]:.3f} / {bf16[score]:.3f}",
        })
    data = f"{config.data.name} ({config.data.source})"
    publish(f"\n## {datetime.date.today().isoformat()}, bf16 vs float32 search (benchmarks/bf16_agreement.py), "
            f"{device_description()}\n\n`{args.config}`{settings}, {data}, {config.num_epochs} epochs of "
            f"{config.max_steps_per_epoch or 'all'} steps, batch {config.batch_size}\n\n{table(rows)}\n",
            record=not args.no_record)


if __name__ == "__main__":
    main()
