"""Run reporting: metrics.jsonl, a console progress line, mixing-weight heat maps and atomic JSON files.

Nothing here imports jax: values from jax are converted through `numpy.asarray`, which also works for jax
arrays. In a multi-host run only process 0 should write; that choice is the caller's.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import sys
import tempfile
import time
from typing import Any, Callable, Mapping, TextIO

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
