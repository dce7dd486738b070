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


# ------------------------------------------------------------------------------------ mixing-weight history

SVG = "{http://www.w3.org/2000/svg}"


def _svg_texts(path) -> list[str]:
    import xml.etree.ElementTree as ET

    return ["".join(e.itertext()).strip() for e in ET.parse(path).getroot().iter(f"{SVG}text")]


def _write_history(path, space, num_epochs: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A metrics.jsonl whose epoch lines carry softmax weights sharpening over time; returns them stacked."""
    rng = np.random.default_rng(seed)
    drift = {k: rng.normal(size=s) for k, s in space.arch_shape.items()}
    stacked = {k: [] for k in space.arch_shape}
    with report.MetricsWriter(path) as metrics:
        for epoch in range(1, num_epochs + 1):
            weights = {k: np.exp(epoch * d) / np.exp(epoch * d).sum(-1, keepdims=True) for k, d in drift.items()}
            metrics.write(step=epoch * 10, train_loss=1.0)  # a step line without weights is skipped
            metrics.write(epoch=epoch, train_loss=1.0, mixing_weights=weights)
            for k, w in weights.items():
                stacked[k].append(w)
    return {k: np.stack(v) for k, v in stacked.items()}


def test_mixing_weight_history_reads_epoch_lines(tmp_path):
    space = spaces.get("darts", num_nodes=2)
    expected = _write_history(tmp_path / "metrics.jsonl", space, num_epochs=4)
    epochs, history = report.mixing_weight_history(tmp_path, space)
    assert epochs == [1, 2, 3, 4]
    assert sorted(history) == ["normal", "reduce"]
    for key in history:
        assert history[key].shape == (4, 5, 8)
        np.testing.assert_allclose(history[key], expected[key], rtol=1e-12)
    # A repeated epoch (a resumed run) keeps its last line.
    records = report.read_metrics(tmp_path)
    replaced = {"epoch": 2, "mixing_weights": {k: np.full((5, 8), 0.125).tolist() for k in space.arch_shape}}
    epochs, history = report.mixing_weight_history(records + [replaced], space)
    assert epochs == [1, 2, 3, 4] and np.all(history["normal"][1] == 0.125)


def test_mixing_weight_history_errors(tmp_path):
    space = spaces.get("nb201")
    with pytest.raises(ValueError, match="no metrics line has 'mixing_weights'"):
        report.mixing_weight_history([{"epoch": 1, "train_loss": 2.0}], space)
    with pytest.raises(ValueError, match=r"lack the key 'cell'"):
        report.mixing_weight_history([{"epoch": 1, "mixing_weights": {"normal": [[1.0]]}}], space)
    with pytest.raises(ValueError, match=r"mixing_weights\['cell'\] of epoch 3 have shape \(6, 4\)"):
        report.mixing_weight_history([{"epoch": 3, "mixing_weights": {"cell": np.zeros((6, 4)).tolist()}}],
                                     space)
    _write_history(tmp_path / "metrics.jsonl", space, num_epochs=2)
    with pytest.raises(ValueError, match=r"epochs \[7\] are not in the metrics"):
        report.plot_mixing_weight_history(tmp_path, space, tmp_path / "h", epochs=[1, 7])


def test_plot_mixing_weight_history_shows_evenly_spaced_epochs_and_the_final_strongest_ops(tmp_path):
    space = spaces.get("nb201")
    weights = _write_history(tmp_path / "metrics.jsonl", space, num_epochs=10)
    paths = report.plot_mixing_weight_history(tmp_path / "metrics.jsonl", space, tmp_path / "plots" / "mw",
                                              max_panels=4)
    assert [p.split("/")[-1] for p in paths] == ["mw_epochs.png", "mw_epochs.svg", "mw_strongest.png",
                                                 "mw_strongest.svg"]
    assert _is_valid_png((tmp_path / "plots" / "mw_epochs.png").read_bytes())
    assert _is_valid_png((tmp_path / "plots" / "mw_strongest.png").read_bytes())
    titles = {t for t in _svg_texts(tmp_path / "plots" / "mw_epochs.svg") if t.startswith("epoch ")}
    assert titles == {"epoch 1", "epoch 4", "epoch 7", "epoch 10"}
    # NB201 counts `none` when naming an edge's strongest op (AutoDL's argmax).
    final = np.argmax(weights["cell"][-1], axis=-1)
    legend = {f"{label}: {space.op_names[k]}" for label, k in zip(space.edge_labels, final)}
    assert legend <= set(_svg_texts(tmp_path / "plots" / "mw_strongest.svg"))

    report.plot_mixing_weight_history(tmp_path, space, tmp_path / "chosen", epochs=[2, 5], formats=("svg",))
    titles = {t for t in _svg_texts(tmp_path / "chosen_epochs.svg") if t.startswith("epoch ")}
    assert titles == {"epoch 2", "epoch 5"}
    assert not (tmp_path / "chosen_epochs.png").exists()


def test_plot_mixing_weight_history_skips_none_in_the_darts_space(tmp_path):
    space = spaces.get("darts", num_nodes=2)
    none = space.op_names.index("none")
    weights = np.full((5, 8), 0.02)
    weights[:, none] = 0.8  # `none` is the largest everywhere; the derivation ignores it
    weights[:, space.op_names.index("sep_conv_3x3")] = 0.06
    records = [{"epoch": 1, "mixing_weights": {"normal": weights.tolist(), "reduce": weights.tolist()}}]
    report.plot_mixing_weight_history(records, space, tmp_path / "mw", formats=("svg",))
    texts = set(_svg_texts(tmp_path / "mw_strongest.svg"))
    assert {f"{label}: sep_conv_3x3" for label in space.edge_labels} <= texts
    assert not any(t.endswith(": none") for t in texts)
    report.plot_mixing_weight_history(records, space, tmp_path / "kept", formats=("svg",), skip_none=False)
    assert {f"{label}: none" for label in space.edge_labels} <= set(_svg_texts(tmp_path / "kept_strongest.svg"))


# ------------------------------------------------------------------------------------------ multi-seed report

NB201_BEST = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
ALL_SKIP = "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"
# methods.md §7.3 / §7.5: the DrNAS cell and the all-skip collapse.
BEST_ROW = [91.55, 94.36, 73.49, 73.51, 46.37, 46.34]
SKIP_ROW = [39.77, 54.30, 15.03, 15.61, 16.43, 16.32]
BENCHMARK_KEYS = [key for key, _ in report.BENCHMARK_COLUMNS]


def _fake_run(root, name, *, method="darts", space="nb201", dataset="cifar10", seed=0, genotype=NB201_BEST,
              benchmark=None, final=None, finished=True):
    workdir = root / name
    workdir.mkdir(parents=True)
    config = {"method": method, "space": space, "seed": seed, "data": {"name": dataset, "source": "synthetic"}}
    (workdir / "config.json").write_text(json.dumps(config, indent=2))
    with report.MetricsWriter(workdir) as metrics:
        metrics.write(epoch=1, genotype=ALL_SKIP, valid_acc=0.1)
        metrics.write(epoch=2, genotype=genotype, **(final or {}))
    if finished:
        record = {"space": space, "method": method, "genotype": genotype}
        if benchmark is not None:
            record["benchmark"] = dict(zip(BENCHMARK_KEYS, benchmark))
        report.write_json(workdir / "genotype.json", record)
    return workdir


def test_load_run_reads_config_genotype_and_metrics(tmp_path):
    run = report.load_run(_fake_run(tmp_path, "a", seed=7, benchmark=BEST_ROW, final={"valid_acc": 0.625}))
    assert (run.method, run.space, run.dataset, run.seed, run.genotype) == ("darts", "nb201", "cifar10", 7,
                                                                            NB201_BEST)
    assert run.benchmark == dict(zip(BENCHMARK_KEYS, BEST_ROW))
    assert run.search_accuracy == {"valid_acc": 62.5} and run.epochs == 2 and run.finished
    # Unfinished: the last epoch line gives the genotype and, when it has them, the nb201_* accuracies.
    workdir = _fake_run(tmp_path, "b", finished=False,
                        final=dict(zip(BENCHMARK_KEYS, SKIP_ROW), test_acc=0.5))
    run = report.load_run(workdir)
    assert not run.finished and run.genotype == NB201_BEST and run.epochs == 2
    assert run.benchmark["nb201_cifar10_test"] == 54.30 and run.search_accuracy == {"test_acc": 50.0}
    with pytest.raises(ValueError, match="is not a folder"):
        report.load_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither genotype.json nor epoch lines"):
        report.load_run(tmp_path / "empty")


def test_mean_std_population_and_sample():
    assert report.mean_std([91.55, 89.89]) == pytest.approx((90.72, 0.83))
    assert report.mean_std([91.55, 89.89], ddof=1) == pytest.approx((90.72, 0.83 * math.sqrt(2)))
    mean, std = report.mean_std([3.0], ddof=1)
    assert mean == 3.0 and math.isnan(std)
    with pytest.raises(ValueError, match="ddof must be 0"):
        report.mean_std([1.0], ddof=2)


def test_report_table_of_two_runs_has_the_nb201_layout_and_mean_std(tmp_path):
    runs = [report.load_run(_fake_run(tmp_path, "seed1", seed=1, benchmark=BEST_ROW)),
            report.load_run(_fake_run(tmp_path, "seed2", seed=2, genotype=ALL_SKIP, benchmark=SKIP_ROW))]
    text = report.format_report(runs)
    lines = text.splitlines()
    header = ("| method | space | dataset | runs | C10 valid | C10 test | C100 valid | C100 test | IN16 valid | "
              "IN16 test |")
    assert header in lines
    assert lines[lines.index(header) + 1] == "|" + "---|" * 10
    expected = [f"{(a + b) / 2:.2f} ± {abs(a - b) / 2:.2f}" for a, b in zip(BEST_ROW, SKIP_ROW)]
    assert expected[1] == "74.33 ± 20.03"  # C10 test: (94.36 + 54.30) / 2, population std = half the gap
    assert f"| darts | nb201 | cifar10 | 2 | {' | '.join(expected)} |" in lines
    # The group table: one row per run with its genotype (pipes escaped for Markdown), then mean ± std.
    escaped = NB201_BEST.replace("|", "\\|")
    assert f"| {tmp_path / 'seed1'} | 1 | `{escaped}` | {' | '.join(f'{v:.2f}' for v in BEST_ROW)} |" in lines
    assert f"| **mean ± std** |  |  | {' | '.join(expected)} |" in lines
    assert "## darts on nb201, cifar10 (2 runs)" in lines
    assert "search valid" not in text  # every run has a benchmark
    # Every table row has as many cells as its header (the escaped pipes do not split cells).
    for line in lines:
        if line.startswith("| "):
            assert len(line.replace("\\|", "").split("|")) - 2 in (10, 9), line


def test_report_groups_runs_and_falls_back_to_search_accuracy(tmp_path):
    darts_genotype = ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('skip_connect', 0), "
                      "('sep_conv_3x3', 2)], normal_concat=[2, 3], reduce=[('max_pool_3x3', 0), "
                      "('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3])")
    runs = [
        report.load_run(_fake_run(tmp_path, "nb", benchmark=BEST_ROW)),
        report.load_run(_fake_run(tmp_path, "d1", space="darts", genotype=darts_genotype,
                                  final={"valid_acc": 0.80})),
        report.load_run(_fake_run(tmp_path, "d2", space="darts", genotype=darts_genotype,
                                  final={"valid_acc": 0.90}, finished=False)),
        report.load_run(_fake_run(tmp_path, "c100", dataset="cifar100", benchmark=SKIP_ROW)),
    ]
    assert list(report.group_runs(runs)) == [("darts", "nb201", "cifar10"), ("darts", "darts", "cifar10"),
                                             ("darts", "nb201", "cifar100")]
    lines = report.format_report(runs, ddof=1).splitlines()
    assert ("| method | space | dataset | runs | C10 valid | C10 test | C100 valid | C100 test | IN16 valid | "
            "IN16 test | search valid |") in lines
    assert "| darts | darts | cifar10 | 2 | – | – | – | – | – | – | 85.00 ± 7.07 |" in lines  # sample std
    assert f"| darts | nb201 | cifar10 | 1 | {' | '.join(f'{v:.2f}' for v in BEST_ROW)} | – |" in lines
    assert any(line.startswith(f"| {tmp_path / 'd2'} (unfinished, epoch 2) | 0 | `Genotype(") for line in lines)
    assert "| run | seed | genotype | search valid |" in lines


def test_report_cli_prints_and_writes_markdown(tmp_path, capsys):
    a = _fake_run(tmp_path, "a", benchmark=BEST_ROW)
    b = _fake_run(tmp_path, "b", benchmark=SKIP_ROW)
    out = tmp_path / "reports" / "nb201.md"
    assert report.main([str(a), str(b), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed == out.read_text() and "74.33 ± 20.03" in printed
    assert report.main([str(a), str(tmp_path / "nope")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_report_module_runs_as_a_script(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    a = _fake_run(tmp_path, "a", benchmark=BEST_ROW)
    result = subprocess.run([sys.executable, "-m", "jnas.report", str(a), "--ddof", "1"],
                            cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "| darts | nb201 | cifar10 | 1 | 91.55 | 94.36 |" in result.stdout  # one run, sample std: no ±
