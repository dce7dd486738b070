"""Reporting: metrics.jsonl, atomic JSON, the progress line (with a fake clock) and the heat map PNG."""

import io
import json
import math
import struct
import zlib

import numpy as np
import pytest

from jnas import report, spaces


class FakeClock:
    """A clock the test advances by hand, so timing tests neither sleep nor flake."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def _is_valid_png(data: bytes) -> bool:
    """PNG signature, then chunks with correct CRCs, starting with IHDR and ending with IEND."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return False
    offset, names = 8, []
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset:offset + 4])
        name = data[offset + 4:offset + 8]
        body = data[offset + 8:offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length:offset + 12 + length])
        if zlib.crc32(name + body) != crc:
            return False
        names.append(name)
        offset += 12 + length
    return names[0] == b"IHDR" and names[-1] == b"IEND" and b"IDAT" in names


def test_metrics_lines_parse_back_with_numpy_values(tmp_path):
    path = tmp_path / "run" / "metrics.jsonl"
    with report.MetricsWriter(path) as metrics:
        written = metrics.write({"epoch": np.int64(3), "loss": np.float32(0.25)}, acc=np.array(0.5),
                                ok=np.bool_(True), genotype="|none~0|+|none~0|none~1|")
        metrics.write(epoch=4, weights=np.eye(2, dtype=np.float32), nested={"lr": np.float64(0.025)},
                      diverged=float("nan"))
        # The first record is on disk before the writer is closed.
        assert json.loads(path.read_text().splitlines()[0])["epoch"] == 3
    records = report.read_metrics(path)
    assert records[0] == written == {"epoch": 3, "loss": 0.25, "acc": 0.5, "ok": True,
                                     "genotype": "|none~0|+|none~0|none~1|"}
    assert type(records[0]["epoch"]) is int and type(records[0]["ok"]) is bool
    assert records[1]["weights"] == [[1.0, 0.0], [0.0, 1.0]]
    assert records[1]["nested"] == {"lr": 0.025}
    assert math.isnan(records[1]["diverged"])

    # Reopening appends (a resumed run), and a directory means <dir>/metrics.jsonl.
    with report.MetricsWriter(tmp_path / "run") as metrics:
        metrics.write(epoch=5)
    assert [r["epoch"] for r in report.read_metrics(tmp_path / "run")] == [3, 4, 5]


def test_metrics_writer_rejects_unserialisable_values_and_writes_after_close(tmp_path):
    metrics = report.MetricsWriter(tmp_path / "metrics.jsonl")
    with pytest.raises(TypeError, match=r"cannot convert <object .*> \(type object\) to JSON"):
        metrics.write(thing=object())
    metrics.close()
    with pytest.raises(ValueError, match="closed"):
        metrics.write(epoch=1)


def test_write_json_is_atomic_and_converts_numpy(tmp_path):
    path = tmp_path / "out" / "genotype.json"
    report.write_json(path, {"genotype": "x", "epoch": np.int32(7), "alpha": np.zeros(2, np.float32)})
    report.write_json(path, {"genotype": "y", "epoch": 8})  # replaces the previous file
    assert json.loads(path.read_text()) == {"genotype": "y", "epoch": 8}
    assert sorted(p.name for p in path.parent.iterdir()) == ["genotype.json"]  # no temporary file left
    with pytest.raises(TypeError):
        report.write_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"genotype": "y", "epoch": 8}  # a failed write changes nothing
    assert sorted(p.name for p in path.parent.iterdir()) == ["genotype.json"]


def test_progress_rate_excludes_compile_time():
    clock, stream = FakeClock(), io.StringIO()
    progress = report.ProgressLine(101, every_seconds=5.0, stream=stream, batch_size=64, clock=clock)
    clock.advance(60.0)  # the first step compiles for a minute
    first = progress.update(1, loss=2.3)
    assert first is not None and "warming up" in first and "step 1/101" in first
    for step in range(2, 12):  # then 10 steps at 0.5 s each
        clock.advance(0.5)
        line = progress.update(step, loss=np.float32(2.0))
    assert progress.steps_per_second == pytest.approx(2.0)  # 10 steps in 5 s; the 60 s compile is excluded
    assert line is not None  # 5 s since the last print
    assert "2.00 steps/s" in line and "128 img/s" in line
    assert "ETA 0:00:45" in line  # 90 steps left at 2 steps/s
    assert "loss 2" in line
    assert "\r" not in stream.getvalue()
    assert stream.getvalue().count("\n") == 2


def test_progress_explicit_start_and_throttling():
    clock, stream = FakeClock(), io.StringIO()
    progress = report.ProgressLine(10, every_seconds=10.0, stream=stream, clock=clock, desc="search")
    clock.advance(30.0)  # compile
    progress.start(step=1)
    printed = []
    for step in range(2, 11):
        clock.advance(1.0)
        printed.append(progress.update(step, acc=0.5))
    # The first update prints; later ones only every 10 s; the last step always prints.
    assert [step for step, line in zip(range(2, 11), printed) if line] == [2, 10]
    assert printed[-1].startswith("[search] step 10/10 (100.0%) | 1.00 steps/s")
    assert "img/s" not in printed[-1]  # no batch size given
    assert progress.update(10, force=True) is not None


def test_progress_redraws_in_place_on_a_tty():
    clock, stream = FakeClock(), FakeTTY()
    progress = report.ProgressLine(3, every_seconds=0.0, stream=stream, clock=clock)
    for step in (1, 2):
        clock.advance(1.0)
        progress.update(step, loss=1.0)
    assert stream.getvalue().startswith("\r") and "\n" not in stream.getvalue()
    progress.close()
    assert stream.getvalue().endswith("\n")
    clock.advance(1.0)
    progress.update(3)
    assert stream.getvalue().endswith("\n")


def test_progress_converts_scalars_only_when_printing():
    class CountingScalar:
        conversions = 0

        def __array__(self, dtype=None, copy=None):
            CountingScalar.conversions += 1
            return np.asarray(1.5, dtype=dtype)

    clock = FakeClock()
    progress = report.ProgressLine(1000, every_seconds=10.0, stream=io.StringIO(), clock=clock)
    for step in range(1, 50):
        clock.advance(0.1)
        progress.update(step, loss=CountingScalar())
    assert CountingScalar.conversions == 1  # only the first (printed) update touched the value


@pytest.mark.parametrize("space_name, options", [
    ("nb201", {}),
    ("darts", {"op_names": spaces.darts.PRIMITIVES[1:]}),  # DrNAS: no "none" column
])
def test_plot_mixing_weights_writes_a_png(tmp_path, space_name, options):
    space = spaces.get(space_name, **options)
    rng = np.random.default_rng(0)
    weights = {}
    for key, shape in space.arch_shape.items():
        logits = rng.normal(size=shape)
        weights[key] = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    path = tmp_path / "plots" / f"{space_name}.png"
    report.plot_mixing_weights(weights, space, str(path), title="epoch 3")
    assert _is_valid_png(path.read_bytes())


def test_plot_mixing_weights_validates_keys_and_shapes(tmp_path):
    space = spaces.get("darts")
    with pytest.raises(ValueError, match=r"lack the key\(s\) \['reduce'\]"):
        report.plot_mixing_weights({"normal": np.zeros((14, 8))}, space, str(tmp_path / "a.png"))
    with pytest.raises(ValueError, match=r"shape \(14, 7\)"):
        report.plot_mixing_weights({"normal": np.zeros((14, 7)), "reduce": np.zeros((14, 8))}, space,
                                   str(tmp_path / "b.png"))
