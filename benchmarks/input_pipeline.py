"""Images per second delivered by the ImageNet host input pipeline, and how it scales with grain workers.

    python benchmarks/input_pipeline.py                         # 1024 JPEGs, batch 32, workers 0,1,2,4
    python benchmarks/input_pipeline.py --images=4096 --workers=0,4,8,16 --batch=128
    python benchmarks/input_pipeline.py --tiny --no-record      # a seconds-long smoke run of the script

Writes `--images` synthetic JPEGs (quality 90, 500x375 or 375x500 like typical ImageNet photos, about
90 KB each: smooth colour fields plus noise, so they compress like photographs rather than like pure noise)
in the ImageFolder layout (train/<wnid>/*.JPEG, 10 classes) into a temporary folder, then reads them through
`jnas.data.host_pipeline.HostLoader` with `jnas.data.imagenet`'s transforms at `--size`:
- "train": RandomResizedCrop + ColorJitter(0.4, 0.4, 0.4, 0.2), the evaluation-network training transform;
- "search": RandomResizedCrop alone (the PC-DARTS / DrNAS search scripts use no colour jitter);
- "eval": resize the shorter side to 256, centre crop 224.
For each transform and worker count it reports the steady-state images/s (over `--epochs` passes of all the
images, each starting its workers anew as an epoch does, counting the batches after every worker has delivered
its first one) and that start-up time (grain spawns its worker processes, which import jnas). The decode and
transforms cost what they cost in a real run; the only difference is that the files come from the page cache.

Prints a markdown table and appends it, with the date and this machine's CPU count, to benchmarks/RESULTS.md
(`--no-record` to skip).
"""

from __future__ import annotations

import argparse
import datetime
import io
import os
import pathlib
import platform
import resource
import sys
import tempfile
import time

import numpy as np
import PIL
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jnas.data import imagenet  # noqa: E402
from jnas.data.host_pipeline import HostLoader  # noqa: E402

WNIDS = ("n01440764", "n01443537", "n01484850", "n01491361", "n01494475", "n01496331", "n01498041",
         "n01514668", "n01514859", "n01518878")
TRANSFORMS = {
    "train": imagenet.TRAIN_COLOR_JITTER,
    "search": imagenet.NO_COLOR_JITTER,
    "eval": None,
}


def photo_like_jpeg(rng: np.random.Generator, quality: int = 90) -> bytes:
    """A 500x375 (or portrait) JPEG that compresses like a photograph: low- and mid-frequency colour plus noise."""
    width, height = (500, 375) if rng.random() < 0.7 else (375, 500)
    low = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    mid = Image.fromarray(rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)).resize(
        (width, height), Image.BILINEAR)
    pixels = 0.7 * np.asarray(low, np.float32) + 0.3 * np.asarray(mid, np.float32)
    pixels = np.clip(pixels + rng.normal(0.0, 16.0, pixels.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def write_folder(root: pathlib.Path, num_images: int, seed: int = 0) -> float:
    """`num_images` JPEGs in root/train/<wnid>/ (and one per class in root/val/); returns the mean size in KB."""
    rng = np.random.default_rng(seed)
    total = 0
    for i in range(num_images):
        wnid = WNIDS[i % len(WNIDS)]
        data = photo_like_jpeg(rng)
        total += len(data)
        path = root / "train" / wnid / f"{wnid}_{i}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    for wnid in WNIDS:
        (root / "val" / wnid).mkdir(parents=True, exist_ok=True)
        (root / "val" / wnid / f"{wnid}_val.JPEG").write_bytes(photo_like_jpeg(rng))
    return total / num_images / 1e3


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (grain's workers, once joined)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(root: pathlib.Path, transform_name: str, size: int, workers: int, batch: int, epochs: int,
            prefetch: int) -> dict:
    jitter = TRANSFORMS[transform_name]
    transform = imagenet.Transform(image_size=size, color_jitter=jitter or imagenet.NO_COLOR_JITTER)
    reader = imagenet.folder_reader(root, "train", transform, num_classes=len(WNIDS))
    steps = len(reader) // batch
    loader = HostLoader(reader, workers=workers, prefetch=prefetch)
    first_batch_s, steady_images, steady_s = [], 0, 0.0
    cpu_start = cpu_seconds()
    for epoch in range(epochs):
        order = np.random.default_rng(epoch).permutation(len(reader))[: steps * batch].reshape(steps, batch)
        seeds = None if jitter is None else np.arange(order.size, dtype=np.int64).reshape(order.shape) + epoch
        start = time.perf_counter()
        iterator = loader.iterate(order, seeds)
        # Worker w's first row carries its start-up, so the steady state begins after one row per worker.
        for _ in range(max(1, workers)):
            next(iterator)
        first = time.perf_counter()
        first_batch_s.append(first - start)
        for row in iterator:
            assert row["image"].shape == (batch, size, size, 3)
            steady_images += batch
        steady_s += time.perf_counter() - first
    cpu_ms_per_image = 1e3 * (cpu_seconds() - cpu_start) / (epochs * steps * batch)
    return {"cpu_ms_per_image": cpu_ms_per_image,"transform": transform_name, "workers": workers, "batch": batch,
            "images_per_s": steady_images / steady_s if steady_s else float("nan"),
            "ms_per_batch": 1e3 * steady_s / max(1, steady_images // batch),
            "first_batch_s": float(np.mean(first_batch_s))}


def table(rows: list[dict]) -> str:
    base = {r["transform"]: r["images_per_s"] for r in rows if r["workers"] == 0}
    lines = ["| transform | workers | batch | images/s | ms/batch | vs 0 workers | start-up (s) | CPU ms/image |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        speedup = r["images_per_s"] / base[r["transform"]] if r["transform"] in base else float("nan")
        lines.append(f"| {r['transform']} | {r['workers']} | {r['batch']} | {r['images_per_s']:.0f} | "
                     f"{r['ms_per_batch']:.0f} | {speedup:.2f}x | {r['first_batch_s']:.2f} | "
                     f"{r['cpu_ms_per_image']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1024, help="synthetic JPEGs to write")
    parser.add_argument("--batch", type=int, default=32, help="images per row (one process's share of a batch)")
    parser.add_argument("--workers", default="0,1,2,4", help="comma-separated grain worker counts")
    parser.add_argument("--transforms", default="train,search,eval", help=f"any of {', '.join(TRANSFORMS)}")
    parser.add_argument("--size", type=int, default=224, help="output side")
    parser.add_argument("--epochs", type=int, default=1, help="passes over the images per measurement")
    parser.add_argument("--prefetch", type=int, default=2, help="rows each worker keeps ready")
    parser.add_argument("--tiny", action="store_true", help="64 images, batch 16, workers 0,1: smoke test")
    parser.add_argument("--no-record", action="store_true", help="do not append to benchmarks/RESULTS.md")
    args = parser.parse_args()
    if args.tiny:
        args.images, args.batch, args.workers, args.epochs = 64, 16, "0,1", 1
    workers = [int(w) for w in args.workers.split(",")]
    transforms = [t for t in args.transforms.split(",") if t]
    unknown = set(transforms) - set(TRANSFORMS)
    if unknown:
        parser.error(f"unknown transforms {sorted(unknown)}; use {', '.join(TRANSFORMS)}")
    if args.images < args.batch * (max(workers) + 2):
        parser.error(f"--images={args.images} must hold at least {max(workers) + 2} batches of {args.batch}")

    load_before = os.getloadavg()[0]  # other programs on the machine take cores from the workers
    with tempfile.TemporaryDirectory(prefix="jnas_input_pipeline_") as tmp:
        root = pathlib.Path(tmp)
        start = time.perf_counter()
        kb = write_folder(root, args.images)
        print(f"wrote {args.images} JPEGs ({kb:.0f} KB each on average) in {time.perf_counter() - start:.1f} s",
              flush=True)
        rows = []
        for name in transforms:
            for w in workers:
                rows.append(measure(root, name, args.size, w, args.batch, args.epochs, args.prefetch))
                r = rows[-1]
                print(f"{name:6s} workers={w}: {r['images_per_s']:.0f} images/s, start-up "
                      f"{r['first_batch_s']:.2f} s", flush=True)
    cpus = os.cpu_count()
    heading = (f"\n## {datetime.date.today().isoformat()}, ImageNet input pipeline (benchmarks/input_pipeline.py), "
               f"{cpus} CPU cores ({platform.machine()}), Pillow {PIL.__version__}\n\n"
               f"{args.images} synthetic {kb:.0f} KB JPEGs (500x375, quality 90) read from the page cache, "
               f"output {args.size}x{args.size}, {args.epochs} pass(es) per row; images/s counts the batches after "
               "each worker's first; \"start-up\" is the time to those first batches (grain spawns its workers, "
               "which import jnas); \"CPU ms/image\" is the CPU time of the pass (all processes, start-up "
               "included) per image, which does not depend on what else runs on the machine: one core delivers "
               "about 1000 / (CPU ms/image) images per second at 0 workers. 1-minute load average "
               f"{load_before:.1f} before the run, {os.getloadavg()[0]:.1f} after it (the workers share the cores "
               "with everything else).\n")
    text = heading + "\n" + table(rows) + "\n"
    print(text)
    if not args.no_record:
        with open(ROOT / "benchmarks" / "RESULTS.md", "a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
