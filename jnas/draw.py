"""Cell drawings of genotypes in the style of the DARTS repository's figures, genotype export, and the pictures
written at the end of a search.

The figures follow quark0/darts `cnn/visualize.py` (graphviz, rankdir=LR): input states c_{k-2}, c_{k-1} as
green boxes, intermediate nodes 0..n-1 in light blue, the output c_{k} in pale yellow, edges labelled with their
op, every concatenated node joined to c_{k} by an unlabelled edge. graphviz is not a dependency, so the layout is
done here with matplotlib (a project dependency) and is deterministic:

  * columns are layers: a node sits one column right of its deepest input (longest path from the inputs);
  * within a column, nodes are ordered by the mean height of their inputs (ties: node index), which keeps
    edges from crossing where it can;
  * every edge is a quadratic curve; of a fixed list of curvatures and label positions along the curve, the
    first with the fewest collisions (curve through a box, label on a box, label on a label) is taken.

The NB201 cell (nodes 0..3; node 0 the cell input, node 3 its output; no concatenation) is drawn the same way:
node 0 green, nodes 1, 2 blue, node 3 yellow. `none` edges are omitted by default (they contribute zeros, as an
absent DARTS edge does); with `show_none=True` they are drawn dashed and grey, labelled `none`.

    paths = draw_genotype(genotype, "plots/cell")   # DARTS: plots/cell_normal.{png,svg}, plots/cell_reduce.{...}
                                                   # NB201: plots/cell.{png,svg}

Command line (SOURCE: a genotype string, a search workdir or its genotype.json, or a published name such as
DARTS_V2 when `jnas.genotypes` is available):

    python -m jnas.draw SOURCE --out DIR              # draws DIR/cell*.png and .svg
    python -m jnas.draw SOURCE --format darts|nb201|json   # prints the genotype in that format
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import math
import os
import sys
from typing import Any, Sequence

import numpy as np

from jnas import report, spaces
from jnas.spaces.darts import DartsGenotype
from jnas.spaces.nb201 import NB201Genotype

Genotype = DartsGenotype | NB201Genotype

# The graphviz X11 colours of the reference figures.
INPUT_COLOR = "#b4eeb4"  # darkseagreen2
NODE_COLOR = "#add8e6"  # lightblue
OUTPUT_COLOR = "#eee8aa"  # palegoldenrod
NONE_EDGE_COLOR = "#9a9a9a"
FORMATS = ("png", "svg")
EXPORT_FORMATS = ("darts", "nb201", "json")

_NODE_FONT_SIZE = 14.0
_EDGE_FONT_SIZE = 11.0
_NODE_HEIGHT = 0.42  # inches; the drawing is laid out in inches (1 data unit = 1 inch)
_NODE_MIN_WIDTH = 0.5
_NODE_PAD = 0.14
_ROW_GAP = 1.05
_MARGIN = 0.15
_DPI = 150
# Tried in this order; the first candidate with the lowest collision cost wins.
_CURVATURES = (0.0, 0.15, -0.15, 0.3, -0.3, 0.45, -0.45, 0.65, -0.65)
_LABEL_POSITIONS = (0.5, 0.42, 0.58, 0.34, 0.66, 0.27, 0.73)


@dataclasses.dataclass(frozen=True)
class Node:
    """A box of a cell drawing; `layer` is its column."""

    key: str
    label: str
    color: str
    layer: int


@dataclasses.dataclass(frozen=True)
class Edge:
    """An arrow of a cell drawing; an empty label draws no text (edges into c_{k})."""

    source: str
    target: str
    label: str = ""
    dashed: bool = False


@dataclasses.dataclass(frozen=True)
class CellGraph:
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]
    caption: str = ""


def as_genotype(genotype: Genotype | str) -> Genotype:
    """`genotype` itself, or the genotype a DARTS `Genotype(...)` / NB201 `|op~j|...` string spells."""
    if isinstance(genotype, (DartsGenotype, NB201Genotype)):
        return genotype
    if isinstance(genotype, str):
        return spaces.parse_genotype(genotype)
    raise ValueError(
        f"expected a DartsGenotype, an NB201Genotype or a genotype string, got {type(genotype).__name__}")


def darts_cell_graph(genotype: DartsGenotype, cell_type: str) -> CellGraph:
    """The DARTS figure graph of `genotype`'s `cell_type` cell ("normal" or "reduce")."""
    if cell_type not in ("normal", "reduce"):
        raise ValueError(f"cell_type must be 'normal' or 'reduce', got {cell_type!r}")
    genotype.validate(op_names=None)
    pairs = getattr(genotype, cell_type)
    concat = getattr(genotype, f"{cell_type}_concat")
    num_nodes = genotype.num_nodes
    key_of = {0: "c_{k-2}", 1: "c_{k-1}", **{state: str(state - 2) for state in range(2, num_nodes + 2)}}
    layer_of = {0: 0, 1: 0}
    for node in range(num_nodes):
        inputs = [j for _, j in pairs[2 * node:2 * node + 2]]
        layer_of[node + 2] = 1 + max(layer_of[j] for j in inputs)
    output_layer = 1 + max(layer_of[state] for state in concat)
    nodes = [Node(key_of[0], key_of[0], INPUT_COLOR, 0), Node(key_of[1], key_of[1], INPUT_COLOR, 0)]
    nodes += [Node(key_of[s], key_of[s], NODE_COLOR, layer_of[s]) for s in range(2, num_nodes + 2)]
    nodes.append(Node("c_{k}", "c_{k}", OUTPUT_COLOR, output_layer))
    edges = [Edge(key_of[j], key_of[index // 2 + 2], op) for index, (op, j) in enumerate(pairs)]
    edges += [Edge(key_of[state], "c_{k}") for state in sorted(concat)]
    caption = "normal cell" if cell_type == "normal" else "reduction cell"
    return CellGraph(tuple(nodes), tuple(edges), caption)


def nb201_cell_graph(genotype: NB201Genotype, show_none: bool = False) -> CellGraph:
    """The graph of an NB201 cell; `none` edges are left out unless `show_none` (then dashed)."""
    last = genotype.num_nodes - 1
    nodes = []
    for i in range(genotype.num_nodes):
        color = INPUT_COLOR if i == 0 else OUTPUT_COLOR if i == last else NODE_COLOR
        nodes.append(Node(str(i), str(i), color, i))
    edges = []
    for i, node in enumerate(genotype.nodes, start=1):
        for op, j in node:
            if op == "none" and not show_none:
                continue
            edges.append(Edge(str(j), str(i), op, dashed=op == "none"))
    return CellGraph(tuple(nodes), tuple(edges), "NB201 cell")


# ----------------------------------------------------------------------------------------------------------
# Layout.


@dataclasses.dataclass
class _Box:
    x0: float
    y0: float
    x1: float
    y1: float

    def contains(self, points: np.ndarray, pad: float = 0.0) -> np.ndarray:
        return ((points[:, 0] > self.x0 - pad) & (points[:, 0] < self.x1 + pad)
                & (points[:, 1] > self.y0 - pad) & (points[:, 1] < self.y1 + pad))

    def overlaps(self, other: _Box, pad: float = 0.0) -> bool:
        return (self.x0 - pad < other.x1 and other.x0 < self.x1 + pad
                and self.y0 - pad < other.y1 and other.y0 < self.y1 + pad)


@dataclasses.dataclass
class _RoutedEdge:
    """A quadratic curve from `start` to `end` whose control point lies `curvature` times the chord length
    off the chord's midpoint (matplotlib's arc3, in inches), with its label centred at parameter `label_t`."""

    edge: Edge
    start: np.ndarray
    end: np.ndarray
    curvature: float
    label_t: float | None
    label_size: tuple[float, float] | None

    @property
    def control(self) -> np.ndarray:
        chord = self.end - self.start
        return (self.start + self.end) / 2 + self.curvature * np.array([chord[1], -chord[0]])

    def curve(self, t: np.ndarray) -> np.ndarray:
        t = np.asarray(t, np.float64)[:, None]
        return (1 - t) ** 2 * self.start + 2 * (1 - t) * t * self.control + t ** 2 * self.end

    @property
    def label_at(self) -> np.ndarray | None:
        return None if self.label_t is None else self.curve(np.array([self.label_t]))[0]

    @property
    def label_box(self) -> _Box | None:
        if self.label_t is None or self.label_size is None:
            return None
        (x, y), (w, h) = self.label_at, self.label_size
        return _Box(x - w / 2 - 0.03, y - h / 2 - 0.03, x + w / 2 + 0.03, y + h / 2 + 0.03)


def _spread_ports(routed: list[_RoutedEdge], boxes: dict[str, _Box]) -> None:
    """Moves apart the ends of the edges that share a box side, ordered by the direction in which they leave
    (arrive), so that arrowheads do not pile up on one point and edges do not cross at the box."""
    sides: dict[tuple[str, str], list[tuple[float, int]]] = {}
    for index, r in enumerate(routed):
        out, back = r.control - r.start, r.control - r.end
        sides.setdefault((r.edge.source, "out"), []).append((math.atan2(out[1], out[0]), index))
        sides.setdefault((r.edge.target, "in"), []).append((math.atan2(back[1], -back[0]), index))
    for (key, side), members in sides.items():
        if len(members) < 2:
            continue
        span = 0.6 * (boxes[key].y1 - boxes[key].y0)
        for rank, (_, index) in enumerate(sorted(members, key=lambda m: (-m[0], m[1]))):
            offset = np.array([0.0, span / 2 - span * rank / (len(members) - 1)])
            if side == "out":
                routed[index].start = routed[index].start + offset
            else:
                routed[index].end = routed[index].end + offset


class _TextMeasure:
    """Text extents in inches, from the Agg renderer that will draw the PNG."""

    def __init__(self, figure: Any):
        from matplotlib.font_manager import FontProperties

        self._renderer = figure.canvas.get_renderer()
        self._dpi = figure.dpi
        self._fonts = {size: FontProperties(family="serif", size=size)
                       for size in (_NODE_FONT_SIZE, _EDGE_FONT_SIZE)}

    def size(self, text: str, font_size: float) -> tuple[float, float]:
        width, height, _ = self._renderer.get_text_width_height_descent(
            text, self._fonts[font_size], ismath=False)
        return width / self._dpi, height / self._dpi


def _layout(graph: CellGraph, measure: _TextMeasure) -> tuple[dict[str, _Box], list[_RoutedEdge]]:
    nodes = {node.key: node for node in graph.nodes}
    widths = {key: max(_NODE_MIN_WIDTH, measure.size(node.label, _NODE_FONT_SIZE)[0] + 2 * _NODE_PAD)
              for key, node in nodes.items()}
    label_sizes = {edge.label: measure.size(edge.label, _EDGE_FONT_SIZE) for edge in graph.edges if edge.label}
    widest_label = max((w for w, _ in label_sizes.values()), default=0.0)
    gap = max(0.8, widest_label + 0.7)
    num_layers = 1 + max(node.layer for node in graph.nodes)
    layer_width = [max((widths[n.key] for n in graph.nodes if n.layer == layer), default=_NODE_MIN_WIDTH)
                   for layer in range(num_layers)]
    centers_x = [0.0]
    for layer in range(1, num_layers):
        centers_x.append(centers_x[-1] + layer_width[layer - 1] / 2 + gap + layer_width[layer] / 2)

    inputs: dict[str, list[str]] = {key: [] for key in nodes}
    for edge in graph.edges:
        inputs[edge.target].append(edge.source)
    order = {node.key: index for index, node in enumerate(graph.nodes)}
    y_of: dict[str, float] = {}
    tallest = max(sum(n.layer == layer for n in graph.nodes) for layer in range(num_layers))
    for layer in range(num_layers):
        members = [n.key for n in graph.nodes if n.layer == layer]

        def barycenter(key: str) -> float:
            placed = [y_of[s] for s in inputs[key] if s in y_of]
            return -float(np.mean(placed)) if placed else 0.0

        if layer > 0:  # the inputs keep their reference order (c_{k-2} on top)
            members.sort(key=lambda key: (barycenter(key), order[key]))
        # The two input states span the height of the tallest column, as in graphviz's figures, so their
        # edges fan out instead of crossing in a knot.
        spacing = _ROW_GAP
        if layer == 0 and len(members) > 1:
            spacing = max(_ROW_GAP, (tallest - 1) * _ROW_GAP / (len(members) - 1))
        for rank, key in enumerate(members):
            y_of[key] = ((len(members) - 1) / 2 - rank) * spacing
    boxes = {key: _Box(centers_x[nodes[key].layer] - widths[key] / 2, y_of[key] - _NODE_HEIGHT / 2,
                       centers_x[nodes[key].layer] + widths[key] / 2, y_of[key] + _NODE_HEIGHT / 2)
             for key in nodes}

    # Short edges first: they have the fewest good routes; long ones bend around what is already placed.
    # Edges are routed between the boxes' mid-heights; `_spread_ports` then separates their ends.
    span = {i: nodes[e.target].layer - nodes[e.source].layer for i, e in enumerate(graph.edges)}
    routing_order = sorted(range(len(graph.edges)), key=lambda i: (not graph.edges[i].label, span[i], i))
    routed: dict[int, _RoutedEdge] = {}
    samples_t = np.linspace(0.06, 0.94, 40)
    for index in routing_order:
        edge = graph.edges[index]
        start = np.array([boxes[edge.source].x1, y_of[edge.source]])
        end = np.array([boxes[edge.target].x0, y_of[edge.target]])
        others = [box for key, box in boxes.items() if key not in (edge.source, edge.target)]
        placed_labels = [r.label_box for r in routed.values() if r.label_box is not None]
        placed_curves = [r.curve(samples_t) for r in routed.values()]
        best = None
        for curvature_rank, curvature in enumerate(_CURVATURES):
            curve = _RoutedEdge(edge, start, end, curvature, None, None).curve(samples_t)
            curve_cost = 10.0 * sum(bool(box.contains(curve, 0.04).any()) for box in others)
            curve_cost += 4.0 * sum(bool(box.contains(curve).any()) for box in placed_labels)
            for label_rank, t in enumerate(_LABEL_POSITIONS if edge.label else (None,)):
                candidate = _RoutedEdge(edge, start, end, curvature, t, label_sizes.get(edge.label))
                cost = curve_cost + 4.0 * abs(curvature) + 0.01 * curvature_rank + 0.005 * label_rank
                label_box = candidate.label_box
                if label_box is not None:
                    cost += 10.0 * sum(label_box.overlaps(box, 0.02) for box in boxes.values())
                    cost += 6.0 * sum(label_box.overlaps(box, 0.02) for box in placed_labels)
                    cost += 4.0 * sum(bool(label_box.contains(c).any()) for c in placed_curves)
                if best is None or cost < best[0]:
                    best = (cost, candidate)
        routed[index] = best[1]
    result = [routed[i] for i in range(len(graph.edges))]
    _spread_ports(result, boxes)
    return boxes, [routed[i] for i in range(len(graph.edges))]


def draw_cell(graph: CellGraph, out_prefix: str | os.PathLike, formats: Sequence[str] = FORMATS,
              caption: bool = True) -> list[str]:
    """Draws `graph` and saves `<out_prefix>.<format>` for each format; returns the paths written.

    SVGs keep their text as <text> elements (svg.fonttype "none"), so labels are searchable and selectable.
    """
    from matplotlib import rc_context
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyArrowPatch, Rectangle
    from matplotlib.path import Path

    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"formats must be a non-empty subset of {list(FORMATS)}, got {list(formats)}")
    figure = Figure(dpi=_DPI)
    FigureCanvasAgg(figure)
    boxes, routed = _layout(graph, _TextMeasure(figure))

    points = [np.array([[b.x0, b.y0], [b.x1, b.y1]]) for b in boxes.values()]
    points += [r.curve(np.linspace(0, 1, 20)) for r in routed]
    points += [np.array([[r.label_box.x0, r.label_box.y0], [r.label_box.x1, r.label_box.y1]])
               for r in routed if r.label_box is not None]
    extent = np.concatenate(points)
    (x0, y0), (x1, y1) = extent.min(0) - _MARGIN, extent.max(0) + _MARGIN
    caption_height = 0.35 if caption and graph.caption else 0.0
    y0 -= caption_height
    figure.set_size_inches(x1 - x0, y1 - y0)
    ax = figure.add_axes((0, 0, 1, 1))
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_axis_off()

    for r in routed:
        color = NONE_EDGE_COLOR if r.edge.dashed else "black"
        path = Path([r.start, r.control, r.end], [Path.MOVETO, Path.CURVE3, Path.CURVE3])
        ax.add_patch(FancyArrowPatch(path=path, arrowstyle="-|>", mutation_scale=11, linewidth=1.0,
                                     linestyle="--" if r.edge.dashed else "-", color=color, zorder=1,
                                     shrinkA=0, shrinkB=0))
        if r.label_at is not None:
            ax.text(r.label_at[0], r.label_at[1], r.edge.label, fontsize=_EDGE_FONT_SIZE, family="serif",
                    ha="center", va="center", color="black" if not r.edge.dashed else "#555555", zorder=3,
                    bbox=dict(boxstyle="square,pad=0.08", facecolor="white", edgecolor="none", alpha=0.85))
    for node in graph.nodes:
        box = boxes[node.key]
        ax.add_patch(Rectangle((box.x0, box.y0), box.x1 - box.x0, box.y1 - box.y0, facecolor=node.color,
                               edgecolor="black", linewidth=1.5, zorder=2))
        ax.text((box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2, node.label, fontsize=_NODE_FONT_SIZE,
                family="serif", ha="center", va="center", zorder=4)
    if caption_height:
        ax.text((x0 + x1) / 2, y0 + caption_height / 2, graph.caption, fontsize=_EDGE_FONT_SIZE,
                family="serif", ha="center", va="center", color="#333333")

    out_prefix = os.fspath(out_prefix)
    os.makedirs(os.path.dirname(out_prefix) or ".", exist_ok=True)
    paths = []
    # A fixed hash salt and no date make the SVG bytes depend only on the drawing.
    with rc_context({"svg.fonttype": "none", "svg.hashsalt": "jnas"}):
        for fmt in formats:
            path = f"{out_prefix}.{fmt}"
            metadata = {"Date": None} if fmt == "svg" else None
            figure.savefig(path, format=fmt, dpi=_DPI, facecolor="white", metadata=metadata)
            paths.append(path)
    return paths


def draw_genotype(genotype: Genotype | str, out_prefix: str | os.PathLike, formats: Sequence[str] = FORMATS,
                  show_none: bool = False) -> list[str]:
    """Draws the cells of `genotype` (a genotype or its string); returns the paths written.

    DARTS: `<out_prefix>_normal.<fmt>` and `<out_prefix>_reduce.<fmt>` (one figure per cell type).
    NB201: `<out_prefix>.<fmt>`; `show_none` draws `none` edges dashed instead of leaving them out.
    """
    genotype = as_genotype(genotype)
    out_prefix = os.fspath(out_prefix)
    if isinstance(genotype, DartsGenotype):
        paths = []
        for cell_type in ("normal", "reduce"):
            paths += draw_cell(darts_cell_graph(genotype, cell_type), f"{out_prefix}_{cell_type}", formats)
        return paths
    return draw_cell(nb201_cell_graph(genotype, show_none), out_prefix, formats)


# ----------------------------------------------------------------------------------------------------------
# Export.


def genotype_to_dict(genotype: Genotype | str) -> dict[str, Any]:
    """A JSON-ready description: {"space", "genotype" (the standard string), and the structure}.

    DARTS: the four Genotype fields as lists ([op, input_state] pairs, 2 per node). NB201: "edges", a mapping
    from AutoDL's edge keys "i<-j" to ops, in reference order.
    """
    genotype = as_genotype(genotype)
    if isinstance(genotype, DartsGenotype):
        return {"space": "darts", "genotype": genotype.to_string(),
                **{field: [list(item) if isinstance(item, tuple) else item for item in getattr(genotype, field)]
                   for field in genotype._fields}}
    edges = {f"{i}<-{j}": op for i, node in enumerate(genotype.nodes, start=1) for op, j in node}
    return {"space": "nb201", "genotype": genotype.to_string(), "edges": edges}


def export_genotype(genotype: Genotype | str, fmt: str) -> str:
    """`genotype` as the DARTS `Genotype(...)` string ("darts"), the NB201 string ("nb201") or JSON ("json")."""
    genotype = as_genotype(genotype)
    if fmt == "json":
        return json.dumps(genotype_to_dict(genotype), indent=2)
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}")
    is_darts = isinstance(genotype, DartsGenotype)
    if (fmt == "darts") != is_darts:
        have = "a DARTS" if is_darts else "an NB201"
        raise ValueError(
            f"{have} genotype has no {fmt} string; use --format {'darts' if is_darts else 'nb201'} or json")
    return genotype.to_string()


# ----------------------------------------------------------------------------------------------------------
# Loading a genotype from the command line.


def _read_genotype_json(path: str) -> tuple[str, str | None]:
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {path} ({e}); a search writes genotype.json at its end") from None
    if not isinstance(record, dict) or not isinstance(record.get("genotype"), str):
        raise ValueError(f"{path} has no 'genotype' string; expected a search's genotype.json")
    return record["genotype"], record.get("space")


def load_genotype(source: str, space_name: str | None = None) -> Genotype:
    """The genotype named by `source`.

    Read here: a search workdir (its genotype.json), a JSON file with a "genotype" string, and a genotype
    string (`Genotype(...)` or `|op~j|...`). Anything else (a published name such as DARTS_V2) goes to
    `jnas.genotypes.resolve(source, space_name)` when that module exists, with each space in turn when
    `space_name` is None. `space_name`, when given, checks the genotype's space ("darts" or "nb201").
    """
    if not isinstance(source, str) or not source.strip():
        raise ValueError("the genotype source is empty; give a genotype string, a search workdir or a name")
    recorded_space = None
    if os.path.isdir(source):
        path = os.path.join(source, "genotype.json")
        if not os.path.isfile(path):
            raise ValueError(
                f"{source} is a folder without genotype.json; give a finished search's workdir, or a genotype "
                f"string")
        text, recorded_space = _read_genotype_json(path)
    elif os.path.isfile(source):
        text, recorded_space = _read_genotype_json(source)
    elif source.strip().startswith(("|", "Genotype", "DartsGenotype")):
        text = source
    else:
        try:
            published = importlib.import_module("jnas.genotypes")  # looked up in sys.modules first
        except ImportError:
            published = None
        if published is None or not hasattr(published, "resolve"):
            raise ValueError(
                f"{source!r} is neither a folder, a file, nor a genotype string ('Genotype(normal=...)' or "
                f"'|op~0|+|...|'); published names need the module jnas.genotypes")
        if space_name is not None:
            return as_genotype(published.resolve(source, space_name))
        # resolve checks the genotype against a space; without one, the name's own space is the one that fits.
        errors = []
        for candidate in ("darts", "nb201"):
            try:
                return as_genotype(published.resolve(source, candidate))
            except ValueError as e:
                errors.append(e)
        raise errors[0]
    genotype = spaces.parse_genotype(text)
    space_name = space_name or recorded_space
    if space_name is not None:
        expected = DartsGenotype if space_name == "darts" else NB201Genotype if space_name == "nb201" else None
        if expected is not None and not isinstance(genotype, expected):
            raise ValueError(f"{source!r} holds a genotype of another space than {space_name!r}: {text}")
    return genotype


# ----------------------------------------------------------------------------------------------------------
# End of a search.


def write_search_pictures(workdir: str | os.PathLike, space: Any, genotype: Genotype | str,
                          metrics_path: str | os.PathLike | None = None) -> list[str]:
    """Writes `<workdir>/plots/`: cell drawings (cell_normal/cell_reduce or cell, PNG and SVG) and, when
    `metrics_path` has epoch lines with "mixing_weights", the history plots (`report.plot_mixing_weight_history`
    with prefix plots/mixing_weights). Returns the paths written.

    A finished search must not fail on a picture: any error is logged as a warning and the other pictures
    are still attempted.
    """
    plots = os.path.join(os.fspath(workdir), "plots")
    paths: list[str] = []
    try:
        paths += draw_genotype(genotype, os.path.join(plots, "cell"))
    except Exception:  # noqa: BLE001 -- a plotting error must not lose a finished search
        logging.warning("could not draw the cells of %s into %s", genotype, plots, exc_info=True)
    if metrics_path is not None:
        try:
            records = report.read_metrics(metrics_path)
            if any("mixing_weights" in r for r in records):
                paths += report.plot_mixing_weight_history(records, space, os.path.join(plots, "mixing_weights"))
            else:
                logging.info("%s has no mixing_weights: no history plots", metrics_path)
        except Exception:  # noqa: BLE001
            logging.warning("could not plot the mixing-weight history from %s", metrics_path, exc_info=True)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jnas.draw",
        description="Draw the cells of a genotype (PNG and SVG) and/or print it as a DARTS, NB201 or JSON "
                    "string.")
    parser.add_argument("source", help="a genotype string, a search workdir (its genotype.json), a JSON file "
                                       "with a 'genotype' key, or a published name (with jnas.genotypes)")
    parser.add_argument("--out", help="folder for the drawings (cell_normal/cell_reduce or cell .png/.svg)")
    parser.add_argument("--format", choices=EXPORT_FORMATS, help="print the genotype in this format")
    parser.add_argument("--space", choices=("darts", "nb201"), help="the genotype's space (checked; needed "
                                                                     "by some published names)")
    parser.add_argument("--name", default="cell", help="file name prefix of the drawings (default: cell)")
    parser.add_argument("--show-none", action="store_true", help="NB201: draw `none` edges dashed")
    args = parser.parse_args(argv)
    if args.out is None and args.format is None:
        parser.error("give --out DIR to draw the cells, --format FORMAT to print the genotype, or both")
    try:
        genotype = load_genotype(args.source, args.space)
        if args.format is not None:
            print(export_genotype(genotype, args.format))
        if args.out is not None:
            for path in draw_genotype(genotype, os.path.join(args.out, args.name), show_none=args.show_none):
                print(f"wrote {path}", file=sys.stderr)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
