"""Run reporting: metrics.jsonl, a console progress line, mixing-weight plots, atomic JSON files and
multi-seed reports.

Nothing here imports jax: values from jax are converted through `numpy.asarray`, which also works for jax
arrays. In a multi-host run only process 0 should write; that choice is the caller's.

    plot_mixing_weight_history(workdir / "metrics.jsonl", space, workdir / "plots" / "mixing_weights")
    python -m jnas.report RUN_DIR... [--out report.md] [--ddof 0|1]

The report groups runs by (method, space, dataset) and lays out, per group, the NAS-Bench-201 columns of
methods.md §7.6 (CIFAR-10, CIFAR-100, ImageNet16-120, valid and test) as mean ± std over runs. The std is the
population std (ddof=0) by default: AutoDL's NATS-Bench table script (exps/NATS-Bench/draw-table.py) prints
`np.std` of the per-run accuracies, i.e. ddof=0; `--ddof 1` gives the sample std.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import sys
import tempfile
import time
from typing import Any, Callable, Mapping, Sequence, TextIO

import numpy as np


def to_json_value(value: Any) -> Any:
    """`value` with numpy/jax scalars and arrays turned into Python numbers and lists, recursively.

    0-d arrays become bool/int/float, larger arrays nested lists, mappings dicts with str keys, tuples and
    sets lists. Non-finite floats stay NaN/inf (Python's json writes and reads them).
    """
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, Mapping):
        return {str(k): to_json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_json_value(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (np.generic, np.ndarray)) or hasattr(value, "__array__"):
        array = np.asarray(value)
        if array.ndim:
            return [to_json_value(v) for v in array]
        if array.dtype.kind == "b":
            return bool(array)
        if array.dtype.kind in "iu":
            return int(array)
        if array.dtype.kind in "US":
            return str(array)
        # Floats, including bfloat16 (whose numpy kind is 'V').
        return float(array)
    raise TypeError(f"cannot convert {value!r} (type {type(value).__name__}) to JSON")


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """Writes `obj` as JSON atomically: a temporary file in the same folder, then `os.replace`.

    A reader never sees a half-written file, even if the process is killed while writing.
    """
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    text = json.dumps(to_json_value(obj), indent=indent) + "\n"
    fd, tmp_path = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


class MetricsWriter:
    """Appends one JSON object per line to a metrics.jsonl file and flushes after every record.

    `path` is the file; an existing directory means `<path>/metrics.jsonl`. Opening appends, so a resumed
    run continues the same file.

        with MetricsWriter(workdir) as metrics:
            metrics.write({"epoch": 3, "step": 1170}, train_loss=loss, valid_acc=acc)
    """

    def __init__(self, path: str | os.PathLike):
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "metrics.jsonl")
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.path = path
        self._file: TextIO | None = open(path, "a", encoding="utf-8")

    def write(self, record: Mapping[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
        """Writes `record` merged with `fields` (fields win) as one line; returns what was written."""
        if self._file is None:
            raise ValueError(f"MetricsWriter({self.path!r}) is closed")
        merged = dict(record or {})
        merged.update(fields)
        converted = to_json_value(merged)
        self._file.write(json.dumps(converted) + "\n")
        self._file.flush()
        return converted

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl file (or of `<path>/metrics.jsonl` for a directory)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.jsonl")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _format_duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(round(seconds))))


def _format_scalar(value: Any) -> str:
    try:
        number = float(np.asarray(value))
    except (TypeError, ValueError):
        return str(value)
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    return f"{number:.4g}"


class ProgressLine:
    """A compact console progress line: step/total, steps/s, images/s, ETA and a few scalars.

    The rate excludes compile time. It is measured from a reference point (clock time, step):
      * `start(step)` sets it explicitly; call it right after the first (compiling) step has finished, with
        that step's count;
      * otherwise the first `update` sets it, i.e. timing starts at the first completed step, which is the
        one that compiled.
    The rate is the average since the reference point. Until a later point exists the line says "warming
    up" instead of a rate.

    `update(step, **scalars)`: `step` is the number of steps completed so far (global, so a resumed run shows
    its true position). A line is printed at most every `every_seconds` (the first update and the last step
    always print). Scalars are converted to host numbers only when a line is printed, so passing device
    arrays costs a device-to-host transfer only every `every_seconds`.

    On a TTY the line is redrawn in place with '\\r'; otherwise (log files) each line ends with a newline and
    contains no '\\r'.
    """

    def __init__(
        self,
        total_steps: int,
        every_seconds: float = 10.0,
        stream: TextIO | None = None,
        batch_size: int | None = None,
        desc: str = "",
        clock: Callable[[], float] = time.monotonic,
    ):
        if total_steps < 1:
            raise ValueError(f"total_steps must be positive, got {total_steps}")
        self.total_steps = int(total_steps)
        self.every_seconds = float(every_seconds)
        self.stream = sys.stderr if stream is None else stream
        self.batch_size = batch_size
        self.desc = desc
        self._clock = clock
        self._is_tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._created = clock()
        self._start: tuple[float, int] | None = None
        self._last: tuple[float, int] | None = None
        self._last_print: float | None = None
        self._line_width = 0
        self._open_line = False

    def start(self, step: int = 0) -> None:
        """Starts the rate clock now, with `step` steps already completed."""
        now = self._clock()
        self._start = (now, int(step))
        self._last = (now, int(step))

    @property
    def steps_per_second(self) -> float | None:
        """Steps per second since the reference point; None before two points exist."""
        if self._start is None or self._last is None:
            return None
        (t0, s0), (t1, s1) = self._start, self._last
        if t1 <= t0 or s1 <= s0:
            return None
        return (s1 - s0) / (t1 - t0)

    def update(self, step: int, force: bool = False, **scalars: Any) -> str | None:
        """Records that `step` steps are done; prints and returns the line when it is time to."""
        now = self._clock()
        step = int(step)
        if self._start is None:
            self._start = (now, step)
        self._last = (now, step)
        due = (force or self._last_print is None or step >= self.total_steps
               or now - self._last_print >= self.every_seconds)
        if not due:
            return None
        self._last_print = now
        line = self.format_line(step, scalars)
        self._emit(line, final=step >= self.total_steps)
        return line

    def format_line(self, step: int, scalars: Mapping[str, Any]) -> str:
        prefix = f"[{self.desc}] " if self.desc else ""
        parts = [f"{prefix}step {step}/{self.total_steps} ({100.0 * step / self.total_steps:.1f}%)"]
        rate = self.steps_per_second
        if rate is None:
            elapsed = self._clock() - self._created
            parts.append(f"warming up ({_format_duration(elapsed)} since created)")
        else:
            parts.append(f"{rate:.2f} steps/s")
            if self.batch_size:
                parts.append(f"{rate * self.batch_size:.0f} img/s")
            remaining = max(self.total_steps - step, 0) / rate
            parts.append(f"ETA {_format_duration(remaining)}")
        if scalars:
            parts.append(" ".join(f"{k} {_format_scalar(v)}" for k, v in scalars.items()))
        return " | ".join(parts)

    def _emit(self, line: str, final: bool) -> None:
        if self._is_tty:
            padding = " " * max(self._line_width - len(line), 0)
            self.stream.write("\r" + line + padding + ("\n" if final else ""))
            self._line_width = 0 if final else len(line)
            self._open_line = not final
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Ends a line left open on a TTY, so that later output starts on a fresh line."""
        if self._open_line:
            self.stream.write("\n")
            self.stream.flush()
            self._open_line = False
            self._line_width = 0

    def __enter__(self) -> ProgressLine:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def plot_mixing_weights(
    mixing_weights: Mapping[str, Any], space: Any, path: str | os.PathLike, title: str = ""
) -> None:
    """Saves a heat map PNG of the mixing weights: one panel per arch key, edges by ops, values annotated.

    Uses matplotlib's object API with the Agg canvas, so it never touches pyplot's global backend or figure
    state. The colour scale is [0, 1] when all weights lie there (softmax, one-hot) so that plots of
    successive epochs compare; otherwise it spans the data.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = [k for k in space.arch_shape if k in mixing_weights]
    missing = sorted(set(space.arch_shape) - set(mixing_weights))
    if missing:
        raise ValueError(f"mixing weights lack the key(s) {missing} of space {space.name!r}")
    arrays = {k: np.asarray(mixing_weights[k]).astype(np.float32) for k in keys}
    for key, array in arrays.items():
        if array.shape != tuple(space.arch_shape[key]):
            raise ValueError(
                f"mixing weights[{key!r}] have shape {array.shape}, space {space.name!r} expects "
                f"{tuple(space.arch_shape[key])}")
    labels = getattr(space, "edge_labels", None) or tuple(f"{i}<-{j}" for i, j in space.edges)
    finite = np.concatenate([a[np.isfinite(a)].ravel() for a in arrays.values()] + [np.zeros(0, np.float32)])
    if finite.size and (finite.min() < 0 or finite.max() > 1):
        vmin, vmax = float(finite.min()), float(finite.max())
    else:
        vmin, vmax = 0.0, 1.0
    if math.isclose(vmin, vmax):
        vmax = vmin + 1.0

    num_edges = max(a.shape[0] for a in arrays.values())
    num_ops = max(a.shape[1] for a in arrays.values())
    panel_width = 0.6 * num_ops + 1.8
    height = 0.38 * num_edges + 2.2
    figure = Figure(figsize=(panel_width * len(keys) + 0.8, height), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(keys), squeeze=False)[0]
    image = None
    for ax, key in zip(axes, keys):
        array = arrays[key]
        image = ax.imshow(array, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
        ax.set_title(key)
        ax.set_xticks(range(array.shape[1]), labels=space.op_names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(array.shape[0]), labels=labels, fontsize=8)
        for row in range(array.shape[0]):
            for col in range(array.shape[1]):
                value = array[row, col]
                bright = np.isfinite(value) and (value - vmin) / (vmax - vmin) > 0.6
                ax.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=6,
                        color="black" if bright else "white")
    if image is not None:
        figure.colorbar(image, ax=list(axes), shrink=0.8)
    if title:
        figure.suptitle(title, fontsize=9, wrap=True)
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    figure.savefig(path, format="png", dpi=100)


# ----------------------------------------------------------------------------------------------------------
# Mixing-weight history (from the "mixing_weights" of the epoch lines of metrics.jsonl).

_FIGURE_FORMATS = ("png", "svg")


def mixing_weight_history(
    metrics: str | os.PathLike | Sequence[Mapping[str, Any]], space: Any
) -> tuple[list[int], dict[str, np.ndarray]]:
    """(epochs, {cell type: array [epochs, edges, ops]}) from the lines of a metrics.jsonl that carry
    "mixing_weights" ({cell type: [[...]]}, rows = space.edges, columns = space.op_names).

    `metrics` is a metrics.jsonl path (or its folder) or the already-read records. Lines without the key
    (step lines, older runs) are skipped; a repeated epoch keeps its last line. The epoch of a line is its
    "epoch" field, else its position among the lines that have mixing weights (1-based).
    """
    records = read_metrics(metrics) if isinstance(metrics, (str, os.PathLike)) else list(metrics)
    by_epoch: dict[int, Mapping[str, Any]] = {}
    for position, record in enumerate(r for r in records if "mixing_weights" in r):
        epoch = record.get("epoch", position + 1)
        by_epoch[int(epoch)] = record["mixing_weights"]
    if not by_epoch:
        raise ValueError(
            "no metrics line has 'mixing_weights'; the search writes them on each epoch line ({cell type: "
            "[[...]]}), so this run predates that or the path is not a search's metrics.jsonl")
    epochs = sorted(by_epoch)
    history = {}
    for key, shape in space.arch_shape.items():
        arrays = []
        for epoch in epochs:
            weights = by_epoch[epoch]
            if key not in weights:
                raise ValueError(
                    f"the mixing_weights of epoch {epoch} lack the key {key!r} of space {space.name!r} "
                    f"(they have {sorted(weights)}); was the run made in another space?")
            array = np.asarray(weights[key], np.float64)
            if array.shape != tuple(shape):
                raise ValueError(
                    f"the mixing_weights[{key!r}] of epoch {epoch} have shape {array.shape}, space "
                    f"{space.name!r} expects {tuple(shape)} (rows = edges, columns = ops); check the "
                    f"space options (num_nodes, op_names) against the run's config.json")
            arrays.append(array)
        history[key] = np.stack(arrays)
    return epochs, history


def _color_range(arrays: Sequence[np.ndarray]) -> tuple[float, float]:
    """[0, 1] when every finite weight lies there (softmax, one-hot), so panels compare; else the data range."""
    finite = np.concatenate([a[np.isfinite(a)].ravel() for a in arrays] + [np.zeros(0)])
    if finite.size and (finite.min() < 0 or finite.max() > 1):
        vmin, vmax = float(finite.min()), float(finite.max())
    else:
        vmin, vmax = 0.0, 1.0
    if math.isclose(vmin, vmax):
        vmax = vmin + 1.0
    return vmin, vmax


def _save_figure(figure: Any, out_prefix: str, formats: Sequence[str]) -> list[str]:
    from matplotlib import rc_context

    os.makedirs(os.path.dirname(out_prefix) or ".", exist_ok=True)
    paths = []
    # Text stays text in SVGs; a fixed hash salt and no date make the files depend only on the data.
    with rc_context({"svg.fonttype": "none", "svg.hashsalt": "jnas"}):
        for fmt in formats:
            path = f"{out_prefix}.{fmt}"
            figure.savefig(path, format=fmt, dpi=100, metadata={"Date": None} if fmt == "svg" else None)
            paths.append(path)
    return paths


def plot_mixing_weight_history(
    metrics: str | os.PathLike | Sequence[Mapping[str, Any]],
    space: Any,
    out_prefix: str | os.PathLike,
    epochs: Sequence[int] | None = None,
    max_panels: int = 6,
    skip_none: bool | None = None,
    formats: Sequence[str] = _FIGURE_FORMATS,
) -> list[str]:
    """Plots how the mixing weights evolved over a search; returns the paths written.

    `<out_prefix>_epochs.<fmt>`: heat maps as small multiples, one row per cell type and one column per
    shown epoch; each panel is edges (rows, `space.edge_labels`) by ops (columns, `space.op_names`), on one
    colour scale. Shown: `epochs`, or at most `max_panels` epochs evenly spaced from the first to the last.

    `<out_prefix>_strongest.<fmt>`: one column per cell type. Top: per edge, the weight of its strongest op
    at every epoch (the legend names each edge's strongest op at the last epoch). Bottom: which op is the
    strongest, edges by epochs, one colour per op, so switches and collapse (e.g. to skip_connect) show.
    "Strongest" follows the space's derivation: `none` is skipped in the DARTS space (quark0's rule) and
    counts in NB201 (AutoDL's argmax); `skip_none` overrides that.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    unknown = [f for f in formats if f not in _FIGURE_FORMATS]
    if unknown or not formats:
        raise ValueError(f"formats must be a non-empty subset of {list(_FIGURE_FORMATS)}, got {list(formats)}")
    if max_panels < 1:
        raise ValueError(f"max_panels must be at least 1, got {max_panels}")
    all_epochs, history = mixing_weight_history(metrics, space)
    if epochs is None:
        count = min(len(all_epochs), max_panels)
        shown = sorted({all_epochs[int(round(i))] for i in np.linspace(0, len(all_epochs) - 1, count)})
    else:
        missing = sorted(set(epochs) - set(all_epochs))
        if missing or not epochs:
            raise ValueError(
                f"epochs {missing or list(epochs)} are not in the metrics; the epochs with mixing weights are "
                f"{all_epochs[0]}..{all_epochs[-1]} ({len(all_epochs)} lines)")
        shown = sorted(set(epochs))
    keys = list(history)
    op_names = tuple(space.op_names)
    edge_labels = tuple(getattr(space, "edge_labels", None) or (f"{i}<-{j}" for i, j in space.edges))
    out_prefix = os.fspath(out_prefix)
    vmin, vmax = _color_range(list(history.values()))
    paths = []

    # Small multiples of heat maps.
    num_edges, num_ops = next(iter(history.values())).shape[1:]
    panel_w, panel_h = 0.28 * num_ops + 0.4, 0.2 * num_edges + 0.5
    figure = Figure(figsize=(panel_w * len(shown) + 2.2, panel_h * len(keys) + 1.4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(keys), len(shown), squeeze=False)
    image = None
    for row, key in enumerate(keys):
        for col, epoch in enumerate(shown):
            ax = axes[row, col]
            image = ax.imshow(history[key][all_epochs.index(epoch)], cmap="viridis", vmin=vmin, vmax=vmax,
                              aspect="auto", interpolation="nearest")
            if row == 0:
                ax.set_title(f"epoch {epoch}", fontsize=9)
            # Tick labels only on the outer panels: the others share them, and text dominates drawing time.
            if row == len(keys) - 1:
                ax.set_xticks(range(num_ops), labels=op_names, rotation=60, ha="right", fontsize=7)
            else:
                ax.set_xticks([])
            if col == 0:
                ax.set_yticks(range(num_edges), labels=edge_labels, fontsize=7)
                ax.set_ylabel(f"{key}: edge", fontsize=8)
            else:
                ax.set_yticks([])
            ax.tick_params(length=0)
    figure.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="mixing weight")
    figure.suptitle(f"{space.name}: mixing weights over epochs (ops by edges)", fontsize=10)
    paths += _save_figure(figure, f"{out_prefix}_epochs", formats)

    # Strongest op per edge over time.
    if skip_none is None:
        skip_none = space.name == "darts"
    candidates = [k for k, op in enumerate(op_names) if not (skip_none and op == "none")] or list(range(num_ops))
    op_colors = [f"C{k % 10}" for k in range(num_ops)]
    figure = Figure(figsize=(6.2 * len(keys), 3.0 + 0.16 * num_edges + 2.0), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, len(keys), squeeze=False, height_ratios=(1.3, 1.0))
    edge_colors = [_edge_color(i, num_edges) for i in range(num_edges)]
    for col, key in enumerate(keys):
        weights = history[key][:, :, candidates]  # [epochs, edges, candidate ops]
        strongest = np.asarray(candidates)[np.argmax(weights, axis=-1)]  # op index, [epochs, edges]
        strength = np.max(weights, axis=-1)
        ax = axes[0, col]
        for edge in range(num_edges):
            ax.plot(all_epochs, strength[:, edge], color=edge_colors[edge], linewidth=1.2,
                    marker="o" if len(all_epochs) <= 30 else None, markersize=2.5,
                    label=f"{edge_labels[edge]}: {op_names[strongest[-1, edge]]}")
        ax.set_title(f"{key}: weight of each edge's strongest op", fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.set_ylabel("weight", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0,
                  title="edge: op at the end", title_fontsize=6)
        ax = axes[1, col]
        ax.imshow(strongest.T, cmap=ListedColormap(op_colors), vmin=-0.5, vmax=num_ops - 0.5, aspect="auto",
                  interpolation="nearest", extent=(all_epochs[0] - 0.5, all_epochs[-1] + 0.5, num_edges - 0.5,
                                                   -0.5))
        for boundary in range(num_edges - 1):
            ax.axhline(boundary + 0.5, color="white", linewidth=0.8)
        ax.set_yticks(range(num_edges), labels=edge_labels, fontsize=7)
        ax.set_xlabel("epoch", fontsize=8)
        ax.set_title(f"{key}: strongest op per edge", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.legend(handles=[Patch(color=op_colors[k], label=op_names[k]) for k in candidates], fontsize=6,
                  loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    figure.suptitle(f"{space.name}: strongest op per edge over epochs"
                    f"{' (none skipped)' if skip_none and len(candidates) < num_ops else ''}", fontsize=10)
    paths += _save_figure(figure, f"{out_prefix}_strongest", formats)
    return paths


def _edge_color(index: int, count: int) -> Any:
    from matplotlib import colormaps

    if count <= 10:
        return colormaps["tab10"](index)
    return colormaps["tab20"](index % 20)


# ----------------------------------------------------------------------------------------------------------
# Multi-seed reports: `python -m jnas.report RUN_DIR...`.

# (key in genotype.json's "benchmark" / the metrics lines, column header): the layout of methods.md §7.6.
BENCHMARK_COLUMNS: tuple[tuple[str, str], ...] = (
    ("nb201_cifar10_valid", "C10 valid"),
    ("nb201_cifar10_test", "C10 test"),
    ("nb201_cifar100_valid", "C100 valid"),
    ("nb201_cifar100_test", "C100 test"),
    ("nb201_imagenet16_120_valid", "IN16 valid"),
    ("nb201_imagenet16_120_test", "IN16 test"),
)
# The search's own accuracy at its last epoch (a fraction in metrics.jsonl, shown in %).
SEARCH_COLUMNS: tuple[tuple[str, str], ...] = (("valid_acc", "search valid"), ("test_acc", "search test"))


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """What a report shows of one search workdir. Accuracies are in %."""

    workdir: str
    method: str
    space: str
    dataset: str
    seed: int | None
    genotype: str
    benchmark: dict[str, float]  # BENCHMARK_COLUMNS keys present for this run
    search_accuracy: dict[str, float]  # SEARCH_COLUMNS keys present in the last epoch line
    epochs: int | None  # epoch of the last metrics line
    finished: bool  # genotype.json exists

    def value(self, key: str) -> float | None:
        return self.benchmark.get(key, self.search_accuracy.get(key))


def _read_json_object(path: str) -> dict[str, Any] | None:
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {path} ({e}); is the workdir intact?") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} holds a {type(value).__name__}, not a JSON object")
    return value


def _finite_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def load_run(workdir: str | os.PathLike) -> RunSummary:
    """Summarises a search workdir from its config.json, genotype.json and metrics.jsonl.

    A run without genotype.json (still running, or stopped) is summarised from its last epoch line and
    marked unfinished. Benchmark accuracies come from genotype.json's "benchmark", else from the nb201_*
    keys of the last epoch line when that line has the same genotype.
    """
    workdir = os.fspath(workdir)
    if not os.path.isdir(workdir):
        raise ValueError(f"{workdir} is not a folder; pass search workdirs (holding genotype.json)")
    config = _read_json_object(os.path.join(workdir, "config.json")) or {}
    record = _read_json_object(os.path.join(workdir, "genotype.json"))
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    try:
        lines = [r for r in read_metrics(metrics_path) if "genotype" in r] if os.path.exists(metrics_path) else []
    except ValueError as e:
        raise ValueError(f"{metrics_path} has a line that is not JSON ({e})") from None
    last = lines[-1] if lines else None
    if record is None and last is None:
        raise ValueError(
            f"{workdir} has neither genotype.json nor epoch lines in metrics.jsonl; is it a search workdir?")
    genotype = (record or last)["genotype"]
    source = (record or {}).get("benchmark")
    if not isinstance(source, Mapping):
        source = last if last is not None and last.get("genotype") == genotype else {}
    benchmark = {key: v for key, _ in BENCHMARK_COLUMNS if (v := _finite_number(source.get(key))) is not None}
    search_accuracy = {}
    if last is not None:
        for key, _ in SEARCH_COLUMNS:
            value = _finite_number(last.get(key))
            if value is not None:
                search_accuracy[key] = 100.0 * value
    data = config.get("data") if isinstance(config.get("data"), Mapping) else {}
    seed = config.get("seed")
    return RunSummary(
        workdir=workdir,
        method=str(config.get("method") or (record or {}).get("method") or "?"),
        space=str(config.get("space") or (record or {}).get("space") or "?"),
        dataset=str(data.get("name") or "?"),
        seed=int(seed) if isinstance(seed, int) and not isinstance(seed, bool) else None,
        genotype=str(genotype),
        benchmark=benchmark,
        search_accuracy=search_accuracy,
        epochs=int(last["epoch"]) if last is not None and isinstance(last.get("epoch"), int) else None,
        finished=record is not None,
    )


def mean_std(values: Sequence[float], ddof: int = 0) -> tuple[float, float]:
    """Mean and standard deviation; ddof=0 is the population std (numpy's default, AutoDL's tables), ddof=1
    the sample std. The std is NaN when there are not more than `ddof` values."""
    array = np.asarray(values, np.float64)
    if array.size == 0:
        raise ValueError("mean_std needs at least one value")
    if ddof not in (0, 1):
        raise ValueError(f"ddof must be 0 (population std) or 1 (sample std), got {ddof}")
    std = float(np.std(array, ddof=ddof)) if array.size > ddof else float("nan")
    return float(np.mean(array)), std


def group_runs(runs: Sequence[RunSummary]) -> dict[tuple[str, str, str], list[RunSummary]]:
    """Runs grouped by (method, space, dataset), in order of first appearance."""
    groups: dict[tuple[str, str, str], list[RunSummary]] = {}
    for run in runs:
        groups.setdefault((run.method, run.space, run.dataset), []).append(run)
    return groups


def _columns(runs: Sequence[RunSummary]) -> list[tuple[str, str]]:
    """Benchmark columns if any run has them; the search's accuracies if any run lacks them."""
    columns = []
    if any(run.benchmark for run in runs):
        columns += [c for c in BENCHMARK_COLUMNS if any(c[0] in run.benchmark for run in runs)]
    if any(not run.benchmark for run in runs):
        columns += [c for c in SEARCH_COLUMNS if any(c[0] in run.search_accuracy for run in runs)]
    return columns


def _format_mean_std(values: Sequence[float], total: int, ddof: int) -> str:
    if not values:
        return "–"
    mean, std = mean_std(values, ddof)
    text = f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"
    return text if len(values) == total else f"{text} (n={len(values)})"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def format_report(runs: Sequence[RunSummary], ddof: int = 0) -> str:
    """The Markdown report: a summary table (one row per (method, space, dataset), mean ± std per column, as
    in methods.md §7.6), then per group a table of its runs with their genotypes and a mean ± std row."""
    if not runs:
        raise ValueError("no runs to report")
    std_name = "population std (ddof=0, as numpy and AutoDL's NAS-Bench tables)" if ddof == 0 else \
        "sample std (ddof=1)"
    groups = group_runs(runs)
    all_columns = [c for c in (*BENCHMARK_COLUMNS, *SEARCH_COLUMNS)
                   if any(c in _columns(members) for members in groups.values())]
    out = ["# Search report", "", f"- Accuracies in %, mean ± {std_name} over the runs of each group."]
    if any(c in BENCHMARK_COLUMNS for c in all_columns):
        out.append("- C10/C100/IN16 valid/test: the NAS-Bench-201 200-epoch accuracies of the derived genotype "
                   "(CIFAR-10 valid: the cifar10-valid model on the held-out half of the training set; "
                   "methods.md §7.4, §7.6).")
    if any(c in SEARCH_COLUMNS for c in all_columns):
        out.append("- search valid/test: the search's own accuracy at its last epoch, for groups with runs "
                   "that have no benchmark accuracies.")
    out += ["", "## Summary", ""]
    summary_rows = []
    for (method, space, dataset), members in groups.items():
        columns = _columns(members)
        row = [_cell(method), _cell(space), _cell(dataset), str(len(members))]
        for column in all_columns:
            values = [v for run in members if (v := run.value(column[0])) is not None] if column in columns else []
            row.append(_format_mean_std(values, len(members), ddof))
        summary_rows.append(row)
    out += _table(["method", "space", "dataset", "runs", *(name for _, name in all_columns)], summary_rows)
    for (method, space, dataset), members in groups.items():
        columns = _columns(members)
        out += ["", f"## {method} on {space}, {dataset} ({len(members)} run{'s' if len(members) > 1 else ''})", ""]
        rows = []
        for run in members:
            status = "" if run.finished else f" (unfinished, epoch {run.epochs})"
            row = [_cell(run.workdir) + status, "–" if run.seed is None else str(run.seed),
                   f"`{_cell(run.genotype)}`"]
            row += ["–" if (v := run.value(key)) is None else f"{v:.2f}" for key, _ in columns]
            rows.append(row)
        mean_row = ["**mean ± std**", "", ""]
        for key, _ in columns:
            values = [v for run in members if (v := run.value(key)) is not None]
            mean_row.append(_format_mean_std(values, len(members), ddof))
        rows.append(mean_row)
        out += _table(["run", "seed", "genotype", *(name for _, name in columns)], rows)
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m jnas.report",
        description="Markdown table of several search runs: derived genotypes, NAS-Bench-201 accuracies where "
                    "available (else the search's final accuracies), and mean ± std per (method, space, "
                    "dataset).")
    parser.add_argument("workdirs", nargs="+", metavar="RUN_DIR", help="search workdirs")
    parser.add_argument("--out", help="also write the Markdown to this file")
    parser.add_argument("--ddof", type=int, choices=(0, 1), default=0,
                        help="0: population std (default; numpy, AutoDL's tables); 1: sample std")
    args = parser.parse_args(argv)
    try:
        text = format_report([load_run(workdir) for workdir in args.workdirs], ddof=args.ddof)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    if args.out:
        folder = os.path.dirname(args.out) or "."
        os.makedirs(folder, exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
