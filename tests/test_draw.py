"""Cell drawings (PNG and SVG), their layout, genotype export, the jnas.draw CLI and the end-of-search hook."""

import collections
import itertools
import json
import logging
import subprocess
import sys
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from jnas import draw, spaces
from jnas.spaces import DartsGenotype, NB201Genotype

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared"
PARAMETER_COUNTS = SHARED / "data" / "reference" / "parameter_counts.json"

# quark0/darts cnn/genotypes.py DARTS_V2 (methods.md §1.6), as the reference prints it.
DARTS_V2 = (
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
    "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], "
    "normal_concat=[2, 3, 4, 5], "
    "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), "
    "('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], "
    "reduce_concat=[2, 3, 4, 5])"
)
# methods.md §7.3: the NB201 cell DrNAS reports.
NB201_BEST = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
NB201_WITH_NONE = "|nor_conv_3x3~0|+|none~0|avg_pool_3x3~1|+|skip_connect~0|none~1|nor_conv_1x1~2|"
SVG = "{http://www.w3.org/2000/svg}"


def _png_ok(path: Path) -> bool:
    data = path.read_bytes()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and b"IDAT" in data and data.endswith(b"IEND\xaeB`\x82")


def _svg_texts(path: Path) -> list[str]:
    """The strings of all <text> elements; parsing also checks that the SVG is well-formed XML."""
    root = ET.parse(path).getroot()
    assert root.tag == f"{SVG}svg"
    return ["".join(element.itertext()).strip() for element in root.iter(f"{SVG}text")]


def _edge_label_counts(texts: list[str], graph: draw.CellGraph) -> collections.Counter:
    """The texts of an SVG minus the node labels and the caption: the edge labels, counted."""
    counts = collections.Counter(texts)
    counts.subtract(node.label for node in graph.nodes)
    counts.subtract([graph.caption])
    return +counts


def test_darts_v2_cells_are_drawn_as_png_and_svg_with_every_op_label(tmp_path):
    genotype = spaces.parse_genotype(DARTS_V2)
    paths = draw.draw_genotype(DARTS_V2, tmp_path / "plots" / "cell")
    assert [Path(p).name for p in paths] == ["cell_normal.png", "cell_normal.svg", "cell_reduce.png",
                                             "cell_reduce.svg"]
    for cell_type in ("normal", "reduce"):
        assert _png_ok(tmp_path / "plots" / f"cell_{cell_type}.png")
        texts = _svg_texts(tmp_path / "plots" / f"cell_{cell_type}.svg")
        graph = draw.darts_cell_graph(genotype, cell_type)
        for label in ("c_{k-2}", "c_{k-1}", "c_{k}", "0", "1", "2", "3"):
            assert label in texts
        # Exactly one label per (op, input) pair of the cell: 8 edges, each with its op.
        assert _edge_label_counts(texts, graph) == collections.Counter(op for op, _ in getattr(genotype, cell_type))


def test_darts_graph_follows_the_reference_figure():
    genotype = spaces.parse_genotype(DARTS_V2)
    graph = draw.darts_cell_graph(genotype, "normal")
    colors = {node.key: node.color for node in graph.nodes}
    assert colors["c_{k-2}"] == colors["c_{k-1}"] == draw.INPUT_COLOR
    assert {colors[str(i)] for i in range(4)} == {draw.NODE_COLOR}
    assert colors["c_{k}"] == draw.OUTPUT_COLOR
    labelled = [(e.source, e.target, e.label) for e in graph.edges if e.label]
    assert labelled[:2] == [("c_{k-2}", "0", "sep_conv_3x3"), ("c_{k-1}", "0", "sep_conv_3x3")]
    assert labelled[-1] == ("0", "3", "dil_conv_3x3")  # state 2 is intermediate node 0
    assert [(e.source, e.target) for e in graph.edges if not e.label] == [(str(i), "c_{k}") for i in range(4)]
    layers = {node.key: node.layer for node in graph.nodes}
    assert layers == {"c_{k-2}": 0, "c_{k-1}": 0, "0": 1, "1": 1, "2": 1, "3": 2, "c_{k}": 3}
    # A node left out of the concat has no edge into the output.
    partial = genotype._replace(normal_concat=(2, 3))
    assert [e.source for e in draw.darts_cell_graph(partial, "normal").edges if not e.label] == ["0", "1"]


def test_nb201_cell_omits_none_edges_unless_asked_to_draw_them_dashed(tmp_path):
    genotype = spaces.parse_genotype(NB201_WITH_NONE)
    assert draw.draw_genotype(genotype, tmp_path / "cell") == [str(tmp_path / "cell.png"),
                                                               str(tmp_path / "cell.svg")]
    assert _png_ok(tmp_path / "cell.png")
    texts = _svg_texts(tmp_path / "cell.svg")
    graph = draw.nb201_cell_graph(genotype)
    assert [node.label for node in graph.nodes] == ["0", "1", "2", "3"]
    assert _edge_label_counts(texts, graph) == collections.Counter(
        ["nor_conv_3x3", "avg_pool_3x3", "skip_connect", "nor_conv_1x1"])
    assert "stroke-dasharray" not in (tmp_path / "cell.svg").read_text()

    draw.draw_genotype(genotype, tmp_path / "with_none", formats=("svg",), show_none=True)
    texts = _svg_texts(tmp_path / "with_none.svg")
    assert collections.Counter(texts)["none"] == 2
    assert "stroke-dasharray" in (tmp_path / "with_none.svg").read_text()
    assert not (tmp_path / "with_none.png").exists()


def _published_or_reference_genotypes() -> dict[str, str]:
    genotypes = {"DARTS_V2": DARTS_V2, "NB201_BEST": NB201_BEST, "NB201_WITH_NONE": NB201_WITH_NONE}
    if PARAMETER_COUNTS.exists():  # all published DARTS-space genotypes, when ../shared is there
        published = json.loads(PARAMETER_COUNTS.read_text())["published_genotypes"]
        genotypes.update((name, entry["genotype"]) for name, entry in published.items())
    return genotypes


def test_layout_keeps_labels_off_boxes_and_each_other_and_edges_out_of_other_boxes():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(dpi=150)
    FigureCanvasAgg(figure)
    measure = draw._TextMeasure(figure)
    checked = 0
    for name, text in _published_or_reference_genotypes().items():
        genotype = spaces.parse_genotype(text)
        if isinstance(genotype, DartsGenotype):
            graphs = [draw.darts_cell_graph(genotype, c) for c in ("normal", "reduce")]
        else:
            graphs = [draw.nb201_cell_graph(genotype, show_none=True)]
        for graph in graphs:
            boxes, routed = draw._layout(graph, measure)
            labels = [r.label_box for r in routed if r.label_box is not None]
            assert len(labels) == sum(bool(e.label) for e in graph.edges)
            where = f"{name} {graph.caption}"
            assert not any(a.overlaps(b) for a, b in itertools.combinations(labels, 2)), where
            assert not any(label.overlaps(box) for label in labels for box in boxes.values()), where
            for r in routed:
                curve = r.curve(np.linspace(0.06, 0.94, 40))
                for key, box in boxes.items():
                    if key not in (r.edge.source, r.edge.target):
                        assert not box.contains(curve).any(), f"{where}: {r.edge} crosses box {key}"
                # Edges run left to right, from the source box's right side to the target's left side.
                assert r.start[0] == pytest.approx(boxes[r.edge.source].x1)
                assert r.end[0] == pytest.approx(boxes[r.edge.target].x0)
            checked += 1
    assert checked >= 4  # DARTS_V2's two cells and two NB201 cells, more with ../shared


def test_drawings_are_deterministic(tmp_path):
    draw.draw_genotype(NB201_BEST, tmp_path / "a", formats=("svg",))
    draw.draw_genotype(NB201_BEST, tmp_path / "b", formats=("svg",))
    assert (tmp_path / "a.svg").read_bytes() == (tmp_path / "b.svg").read_bytes()


def test_bad_inputs_raise_value_errors(tmp_path):
    with pytest.raises(ValueError, match="cannot tell the format"):
        draw.draw_genotype("sep_conv_3x3", tmp_path / "x")
    with pytest.raises(ValueError, match="expected a DartsGenotype, an NB201Genotype"):
        draw.draw_genotype(42, tmp_path / "x")
    with pytest.raises(ValueError, match=r"formats must be a non-empty subset of \['png', 'svg'\]"):
        draw.draw_genotype(NB201_BEST, tmp_path / "x", formats=("pdf",))
    with pytest.raises(ValueError, match="cell_type must be 'normal' or 'reduce'"):
        draw.darts_cell_graph(spaces.parse_genotype(DARTS_V2), "reduction")


def test_export_formats_round_trip():
    darts_genotype = spaces.parse_genotype(DARTS_V2)
    assert draw.export_genotype(darts_genotype, "darts") == DARTS_V2
    described = json.loads(draw.export_genotype(DARTS_V2, "json"))
    assert described["space"] == "darts" and described["genotype"] == DARTS_V2
    assert described["normal"][0] == ["sep_conv_3x3", 0] and described["reduce_concat"] == [2, 3, 4, 5]
    assert DartsGenotype(described["normal"], described["normal_concat"], described["reduce"],
                         described["reduce_concat"]) == darts_genotype

    assert draw.export_genotype(NB201_BEST, "nb201") == NB201_BEST
    described = json.loads(draw.export_genotype(NB201_BEST, "json"))
    assert described == {"space": "nb201", "genotype": NB201_BEST, "edges": {
        "1<-0": "nor_conv_3x3", "2<-0": "nor_conv_3x3", "2<-1": "nor_conv_3x3", "3<-0": "skip_connect",
        "3<-1": "nor_conv_3x3", "3<-2": "nor_conv_3x3"}}
    assert NB201Genotype.from_edge_ops(list(described["edges"].values())).to_string() == NB201_BEST

    with pytest.raises(ValueError, match="an NB201 genotype has no darts string"):
        draw.export_genotype(NB201_BEST, "darts")
    with pytest.raises(ValueError, match="a DARTS genotype has no nb201 string"):
        draw.export_genotype(DARTS_V2, "nb201")
    with pytest.raises(ValueError, match="unknown export format 'yaml'"):
        draw.export_genotype(DARTS_V2, "yaml")


def _fake_workdir(tmp_path: Path, genotype: str, space: str, mixing_weights: list | None = None) -> Path:
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "genotype.json").write_text(json.dumps({"space": space, "method": "darts", "genotype": genotype}))
    if mixing_weights is not None:
        with open(workdir / "metrics.jsonl", "w") as f:
            for epoch, weights in enumerate(mixing_weights, start=1):
                f.write(json.dumps({"epoch": epoch, "train_loss": 1.0, "mixing_weights": weights}) + "\n")
    return workdir


def test_cli_draws_and_exports_from_a_string_or_a_workdir(tmp_path, capsys):
    assert draw.main([DARTS_V2, "--out", str(tmp_path / "out"), "--format", "darts"]) == 0
    assert capsys.readouterr().out.strip() == DARTS_V2
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "cell_normal.png", "cell_normal.svg", "cell_reduce.png", "cell_reduce.svg"]

    workdir = _fake_workdir(tmp_path, NB201_BEST, "nb201")
    assert draw.main([str(workdir), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["genotype"] == NB201_BEST
    assert draw.main([str(workdir / "genotype.json"), "--format", "nb201"]) == 0
    assert capsys.readouterr().out.strip() == NB201_BEST

    assert draw.main([str(workdir), "--space", "darts", "--format", "json"]) == 2
    assert "holds a genotype of another space than 'darts'" in capsys.readouterr().err
    assert draw.main([str(tmp_path / "out"), "--format", "json"]) == 2  # a folder without genotype.json
    assert "without genotype.json" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # neither --out nor --format
        draw.main([DARTS_V2])


def test_published_names_go_to_jnas_genotypes_resolve(monkeypatch, capsys):
    calls = []

    def resolve(source, space_name):
        calls.append((source, space_name))
        if source != "DARTS_V2":
            raise ValueError(f"unknown genotype name {source!r}")
        return DARTS_V2

    monkeypatch.setitem(sys.modules, "jnas.genotypes", types.SimpleNamespace(resolve=resolve))
    assert draw.load_genotype("DARTS_V2", "darts") == spaces.parse_genotype(DARTS_V2)
    assert draw.main(["NOPE", "--format", "darts"]) == 2
    assert "unknown genotype name 'NOPE'" in capsys.readouterr().err
    assert calls == [("DARTS_V2", "darts"), ("NOPE", "darts"), ("NOPE", "nb201")]  # no --space: each space

    monkeypatch.setitem(sys.modules, "jnas.genotypes", None)  # the module is absent: import fails
    with pytest.raises(ValueError, match="published names need the module jnas.genotypes"):
        draw.load_genotype("DARTS_V2")


def test_published_names_from_the_real_table(capsys):
    genotypes = pytest.importorskip("jnas.genotypes", reason="jnas.genotypes (the published table) is absent")
    assert draw.load_genotype("DARTS_V2") == spaces.parse_genotype(DARTS_V2)
    nb201_names = genotypes.names("nb201")
    if nb201_names:  # an NB201 name resolves without --space too, although "darts" is tried first
        assert isinstance(draw.load_genotype(nb201_names[0]), NB201Genotype)
    assert draw.main(["DARTS_V2", "--format", "darts"]) == 0
    assert capsys.readouterr().out.strip() == DARTS_V2


def test_module_runs_as_a_script(tmp_path):
    result = subprocess.run([sys.executable, "-m", "jnas.draw", NB201_BEST, "--out", str(tmp_path),
                             "--format", "nb201"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == NB201_BEST
    assert _png_ok(tmp_path / "cell.png") and _svg_texts(tmp_path / "cell.svg")


def _softmax_history(space, epochs: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    drift = {k: rng.normal(size=s) for k, s in space.arch_shape.items()}
    history = []
    for epoch in range(epochs):
        weights = {k: np.exp(epoch * d) for k, d in drift.items()}
        history.append({k: (w / w.sum(-1, keepdims=True)).tolist() for k, w in weights.items()})
    return history


def test_write_search_pictures_writes_cells_and_history(tmp_path):
    space = spaces.get("nb201")
    workdir = _fake_workdir(tmp_path, NB201_BEST, "nb201", _softmax_history(space, epochs=3))
    paths = draw.write_search_pictures(workdir, space, NB201_BEST, workdir / "metrics.jsonl")
    names = sorted(Path(p).name for p in paths)
    assert names == ["cell.png", "cell.svg", "mixing_weights_epochs.png", "mixing_weights_epochs.svg",
                     "mixing_weights_strongest.png", "mixing_weights_strongest.svg"]
    assert all(Path(p).parent == workdir / "plots" and Path(p).stat().st_size > 0 for p in paths)


def test_write_search_pictures_never_raises(tmp_path, caplog):
    space = spaces.get("darts")
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "metrics.jsonl").write_text('{"epoch": 1, "mixing_weights": {"normal": [[1.0]]}}\n')
    with caplog.at_level(logging.WARNING):
        paths = draw.write_search_pictures(workdir, space, "not a genotype", workdir / "metrics.jsonl")
    assert paths == []
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("could not draw the cells" in m for m in messages)
    assert any("could not plot the mixing-weight history" in m for m in messages)
    # Metrics without mixing weights: the cells are drawn, the history is skipped without a warning.
    (workdir / "metrics.jsonl").write_text('{"epoch": 1, "train_loss": 2.3}\n')
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        paths = draw.write_search_pictures(workdir, space, DARTS_V2, workdir / "metrics.jsonl")
    assert len(paths) == 4 and not [r for r in caplog.records if r.levelno == logging.WARNING]
