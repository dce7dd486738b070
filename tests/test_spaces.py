"""Search spaces: genotype strings, parsing errors, derivation rules, one-hot weights. Pure numpy."""

import json
from pathlib import Path

import numpy as np
import pytest

from jnas import spaces
from jnas.spaces import DartsGenotype, NB201Genotype
from jnas.spaces import darts as darts_space

SHARED = Path(__file__).resolve().parents[2] / "shared"
PARAMETER_COUNTS = SHARED / "data" / "reference" / "parameter_counts.json"

# methods.md §7.3: the NB201 cell DrNAS reports (94.36% CIFAR-10 test).
NB201_BEST = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"

# quark0/darts cnn/genotypes.py DARTS_V2 (methods.md §1.6), as the reference prints it.
DARTS_V2 = (
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
    "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], "
    "normal_concat=[2, 3, 4, 5], "
    "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), "
    "('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], "
    "reduce_concat=[2, 3, 4, 5])"
)


def _published_genotypes() -> dict[str, str]:
    if not PARAMETER_COUNTS.exists():
        pytest.skip(f"shared reference data not found at {PARAMETER_COUNTS} (the repository's ../shared)")
    published = json.loads(PARAMETER_COUNTS.read_text())["published_genotypes"]
    return {name: entry["genotype"] for name, entry in published.items()}


# ---------------------------------------------------------------------------------------------- registry


def test_get_known_spaces_and_shapes():
    nb201 = spaces.get("nb201")
    assert nb201.name == "nb201"
    assert nb201.arch_shape == {"cell": (6, 5)}
    assert nb201.op_names == ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
    assert nb201.edges == [(1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2)]
    assert nb201.num_edges == 6
    assert nb201.edge_labels[:3] == ("1<-0", "2<-0", "2<-1")

    darts = spaces.get("darts")
    assert darts.name == "darts"
    assert darts.arch_shape == {"normal": (14, 8), "reduce": (14, 8)}
    assert darts.op_names == darts_space.PRIMITIVES
    assert darts.num_edges == 14
    assert darts.edges[:5] == [(2, 0), (2, 1), (3, 0), (3, 1), (3, 2)]
    assert darts.edges[-1] == (5, 4)
    assert darts.edge_labels[:5] == ("2<-s0", "2<-s1", "3<-s0", "3<-s1", "3<-2")
    for space in (nb201, darts):
        assert isinstance(space, spaces.SearchSpace)


def test_get_unknown_space_lists_known_names():
    with pytest.raises(ValueError, match=r"unknown search space 'nasnet'.*nb201.*darts"):
        spaces.get("nasnet")


def test_get_rejects_unknown_options():
    with pytest.raises(ValueError, match="does not accept the options"):
        spaces.get("nb201", num_nodes=5)


def test_register_adds_a_space_and_refuses_a_taken_name():
    @spaces.register("nb201_test_copy")
    class Copy(spaces.NB201Space):
        name = "nb201_test_copy"

    try:
        assert spaces.get("nb201_test_copy").name == "nb201_test_copy"
        with pytest.raises(ValueError, match="already registered"):
            spaces.register("nb201")(Copy)
    finally:
        spaces._REGISTRY.pop("nb201_test_copy")


def test_darts_op_names_option():
    no_none = tuple(op for op in darts_space.PRIMITIVES if op != "none")
    space = spaces.get("darts", op_names=list(no_none))
    assert space.op_names == no_none
    assert space.arch_shape == {"normal": (14, 7), "reduce": (14, 7)}
    with pytest.raises(ValueError, match="unknown op"):
        spaces.get("darts", op_names=["none", "conv_7x1_1x7"])
    with pytest.raises(ValueError, match="reference PRIMITIVES order"):
        spaces.get("darts", op_names=["skip_connect", "max_pool_3x3"])
    with pytest.raises(ValueError, match="more than once"):
        spaces.get("darts", op_names=["skip_connect", "skip_connect"])
    with pytest.raises(ValueError, match="other than 'none'"):
        spaces.get("darts", op_names=["none"])
    with pytest.raises(ValueError, match="num_nodes"):
        spaces.get("darts", num_nodes=0)


def test_darts_num_nodes_option():
    space = spaces.get("darts", num_nodes=2)
    assert space.arch_shape["normal"] == (5, 8)
    assert space.edges == [(2, 0), (2, 1), (3, 0), (3, 1), (3, 2)]
    genotype = space.parse(
        "Genotype(normal=[('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_5x5', 1), "
        "('dil_conv_3x3', 2)], normal_concat=[2, 3], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), "
        "('skip_connect', 0), ('avg_pool_3x3', 2)], reduce_concat=[2, 3])")
    assert space.derive(space.one_hot(genotype)) == genotype
    assert genotype.normal_concat == (2, 3)
    with pytest.raises(ValueError, match="need 4"):
        space.parse(DARTS_V2)


# ---------------------------------------------------------------------------------------------- NB201


def test_nb201_round_trip_of_best_cell():
    space = spaces.get("nb201")
    genotype = space.parse(NB201_BEST)
    assert genotype.to_string() == NB201_BEST
    assert str(genotype) == NB201_BEST
    assert genotype.edge_ops == ("nor_conv_3x3", "nor_conv_3x3", "nor_conv_3x3", "skip_connect",
                                 "nor_conv_3x3", "nor_conv_3x3")
    assert NB201Genotype.from_edge_ops(genotype.edge_ops) == genotype
    assert genotype.nodes[2] == (("skip_connect", 0), ("nor_conv_3x3", 1), ("nor_conv_3x3", 2))
    assert spaces.parse_genotype(NB201_BEST) == genotype
    assert hash(genotype) == hash(NB201Genotype.from_string(NB201_BEST))


def test_nb201_parse_tolerates_whitespace_and_input_order():
    shuffled = ("  |nor_conv_3x3~0|+|nor_conv_3x3~1|nor_conv_3x3~0|"
                "+|nor_conv_3x3~2|skip_connect~0|nor_conv_3x3~1|\n")
    assert spaces.get("nb201").parse(shuffled).to_string() == NB201_BEST


@pytest.mark.parametrize("arch_str, message", [
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|", r"2 '\+'-separated node groups.*needs 3"),
    (NB201_BEST + "+|none~0|none~1|none~2|none~3|", r"4 '\+'-separated node groups"),
    ("|conv_5x5~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|",
     r"unknown NB201 op 'conv_5x5'"),
    ("|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|",
     r"node 1 .* takes input 1.*only take inputs 0\.\.0"),
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~0|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|",
     r"node 2 .*each of the inputs 0\.\.1; got inputs \[0, 0\]"),
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|",
     r"node 2 .*got inputs \[0\]"),
    ("nor_conv_3x3~0+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|",
     r"must be enclosed in '\|' bars"),
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|",
     r"node 2 group .*enclosed in '\|' bars"),
    ("|nor_conv_3x3|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|",
     r"not of the form 'op~input'"),
    ("|nor_conv_3x3~a|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|",
     r"input index 'a' .*not a non-negative integer"),
])
def test_nb201_parse_errors_name_the_problem(arch_str, message):
    with pytest.raises(ValueError, match=message):
        spaces.get("nb201").parse(arch_str)


def test_nb201_genotype_constructor_validates():
    with pytest.raises(ValueError, match="unknown NB201 op 'sep_conv_3x3'"):
        NB201Genotype.from_edge_ops(["sep_conv_3x3"] * 6)
    with pytest.raises(ValueError, match="n\\(n-1\\)/2 edges"):
        NB201Genotype.from_edge_ops(["none"] * 5)
    with pytest.raises(ValueError, match="inputs 0..1"):
        NB201Genotype(((("none", 0),), (("none", 1), ("none", 0))))


def test_nb201_derive_is_argmax_including_none():
    space = spaces.get("nb201")
    cell = np.full((6, 5), 0.1, np.float32)
    chosen = [0, 3, 0, 1, 4, 2]  # none wins on edges 1<-0 and 2<-1
    for row, op in enumerate(chosen):
        cell[row, op] = 0.6
    cell[1, 2] = 0.6  # a tie on 2<-0 between nor_conv_3x3 (col 3) and nor_conv_1x1 (col 2): the first wins
    genotype = space.derive({"cell": cell})
    assert genotype.edge_ops == ("none", "nor_conv_1x1", "none", "skip_connect", "avg_pool_3x3",
                                 "nor_conv_1x1")
    assert genotype.to_string() == (
        "|none~0|+|nor_conv_1x1~0|none~1|+|skip_connect~0|avg_pool_3x3~1|nor_conv_1x1~2|")


def test_nb201_derive_validates_weights():
    space = spaces.get("nb201")
    with pytest.raises(ValueError, match=r"keys \['normal'\], expected exactly \['cell'\]"):
        space.derive({"normal": np.zeros((6, 5))})
    with pytest.raises(ValueError, match=r"shape \(6, 4\), expected \(6, 5\)"):
        space.derive({"cell": np.zeros((6, 4))})
    with pytest.raises(ValueError, match="NaN or inf"):
        space.derive({"cell": np.full((6, 5), np.nan)})


def test_nb201_one_hot_then_derive_gives_the_genotype():
    space = spaces.get("nb201")
    for arch_str in (NB201_BEST, "|none~0|+|avg_pool_3x3~0|none~1|+|skip_connect~0|nor_conv_1x1~1|none~2|"):
        genotype = space.parse(arch_str)
        weights = space.one_hot(genotype)
        assert weights["cell"].shape == (6, 5)
        np.testing.assert_array_equal(weights["cell"].sum(axis=1), np.ones(6))
        assert space.derive(weights) == genotype


# ---------------------------------------------------------------------------------------------- DARTS


def test_darts_v2_round_trip_without_shared_data():
    space = spaces.get("darts")
    genotype = space.parse(DARTS_V2)
    assert genotype.to_string() == DARTS_V2
    assert str(genotype) == DARTS_V2
    assert genotype.normal[:2] == (("sep_conv_3x3", 0), ("sep_conv_3x3", 1))
    assert genotype.normal_concat == (2, 3, 4, 5)
    assert spaces.parse_genotype(DARTS_V2) == genotype
    assert DartsGenotype.from_string(DARTS_V2) == genotype
    assert genotype == DartsGenotype(normal=[list(p) for p in genotype.normal], normal_concat=range(2, 6),
                                     reduce=list(genotype.reduce), reduce_concat=[2, 3, 4, 5])


def test_darts_published_genotypes_round_trip():
    space = spaces.get("darts")
    published = _published_genotypes()
    assert {"DARTS_V1", "DARTS_V2", "PC_DARTS_cifar", "DrNAS_cifar10", "GDAS_V1"} <= set(published)
    assert published["DARTS_V2"] == DARTS_V2
    for name, text in published.items():
        genotype = space.parse(text)
        expected = text.replace("range(2, 6)", "[2, 3, 4, 5]")
        assert genotype.to_string() == expected, name
        assert space.parse(genotype.to_string()) == genotype, name


def test_darts_parse_range_quotes_and_whitespace():
    space = spaces.get("darts")
    reference = space.parse(DARTS_V2)
    variant = ('  Genotype(\n    normal=[("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), '
               '("sep_conv_3x3", 1), ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), '
               '("dil_conv_3x3", 2)],\n    normal_concat=range(2, 6),\n'
               '    reduce=[("max_pool_3x3",0),("max_pool_3x3",1),("skip_connect",2),("max_pool_3x3",1),'
               '("max_pool_3x3",0),("skip_connect",2),("skip_connect",2),("max_pool_3x3",1)],\n'
               '    reduce_concat = range(2,6) )\n')
    assert space.parse(variant) == reference
    assert space.parse(variant).to_string() == DARTS_V2
    # Keyword order does not matter; the parse never evaluates code.
    reordered = DARTS_V2.replace("Genotype(", "Genotype(reduce_concat=[2, 3, 4, 5], ", 1).replace(
        ", reduce_concat=[2, 3, 4, 5])", ")")
    assert space.parse(reordered) == reference


def _darts_variant(old: str, new: str) -> str:
    assert old in DARTS_V2
    return DARTS_V2.replace(old, new, 1)


@pytest.mark.parametrize("text, message", [
    (_darts_variant("'sep_conv_3x3', 0", "'conv_7x7', 0"), r"unknown op 'conv_7x7' in the normal cell"),
    (_darts_variant("('dil_conv_3x3', 2)", "('dil_conv_3x3', 5)"),
     r"normal cell node 3 \(state 5\) takes input state 5, but it can only take states 0..4"),
    (_darts_variant("('skip_connect', 2), ('max_pool_3x3', 1)", "('skip_connect', 3), ('max_pool_3x3', 1)"),
     r"reduce cell node 1 \(state 3\) takes input state 3"),
    (_darts_variant(", ('dil_conv_3x3', 2)", ""), r"normal cell has 7 \(op, input\) pairs.*need 8"),
    (_darts_variant("normal_concat=[2, 3, 4, 5]", "normal_concat=[2, 3, 6]"),
     r"normal_concat \[2, 3, 6\] must list distinct intermediate states in 2..5"),
    (_darts_variant("reduce_concat=[2, 3, 4, 5]", "reduce_concat=[2, 2, 3]"), r"reduce_concat \[2, 2, 3\]"),
    (_darts_variant("normal_concat=[2, 3, 4, 5]", "normal_concat=list(range(2, 6))"),
     r"normal_concat .* must be a list of ints or range\(a, b\)"),
    (_darts_variant(", reduce_concat=[2, 3, 4, 5]", ""), r"lacks the field\(s\) reduce_concat"),
    (_darts_variant("reduce_concat=", "reduced_concat="), r"unknown Genotype field 'reduced_concat'"),
    (_darts_variant("normal=[", "normal=PRIMS + ["), r"normal .* must be a literal list"),
    (_darts_variant("Genotype(", "Arch("), r"must be a call Genotype\(\.\.\.\)"),
    (DARTS_V2[:-1], r"not valid syntax"),
    ("__import__('os').system('true')", r"must be a call Genotype"),
    (_darts_variant("('sep_conv_3x3', 0)", "('sep_conv_3x3', '0')"), r"normal must be a sequence of .*pairs"),
])
def test_darts_parse_errors_name_the_problem(text, message):
    with pytest.raises(ValueError, match=message):
        spaces.get("darts").parse(text)


def test_darts_parse_checks_the_space_op_names():
    space = spaces.get("darts", op_names=["none", "max_pool_3x3", "skip_connect", "sep_conv_3x3"])
    with pytest.raises(ValueError, match=r"unknown op 'dil_conv_3x3' in the normal cell.*space's ops"):
        space.parse(DARTS_V2)


def test_parse_genotype_rejects_unknown_formats():
    with pytest.raises(ValueError, match="cannot tell the format"):
        spaces.parse_genotype("resnet18")


def _node_rows(node: int) -> range:
    start = sum(i + 2 for i in range(node))
    return range(start, start + node + 2)


def test_darts_derive_excludes_none_and_orders_by_score():
    space = spaces.get("darts")
    ops = {op: k for k, op in enumerate(darts_space.PRIMITIVES)}
    normal = np.full((14, 8), 0.01, np.float32)
    # Node 0 (rows 0-1): "none" dominates both edges but must be ignored; edge s1 scores higher, so it comes
    # first, and its op is the best non-none op.
    normal[0, ops["none"]] = 0.9
    normal[0, ops["sep_conv_3x3"]] = 0.05
    normal[1, ops["none"]] = 0.8
    normal[1, ops["dil_conv_5x5"]] = 0.1
    # Node 1 (rows 2-4): the strongest edge by non-none max is n0 (row 4), then s0 (row 2); s1 (row 3) has the
    # largest weight overall, but on "none".
    normal[2, ops["max_pool_3x3"]] = 0.3
    normal[3, ops["none"]] = 0.95
    normal[3, ops["skip_connect"]] = 0.2
    normal[4, ops["sep_conv_5x5"]] = 0.5
    # Node 2 (rows 5-8): all edges tie at 0.4: the stable sort keeps the lowest two input states; on s0 two
    # ops tie and the first (max_pool_3x3) wins.
    for row in _node_rows(2):
        normal[row, ops["avg_pool_3x3"]] = 0.4
    normal[5, ops["max_pool_3x3"]] = 0.4
    # Node 3 (rows 9-13): edges n2 (row 13) and s1 (row 10).
    normal[13, ops["dil_conv_3x3"]] = 0.7
    normal[10, ops["skip_connect"]] = 0.6
    normal[9, ops["none"]] = 0.99
    reduce = np.full((14, 8), 1.0 / 8, np.float32)  # a uniform cell: all ties
    genotype = space.derive({"normal": normal, "reduce": reduce})
    assert genotype.normal == (
        ("dil_conv_5x5", 1), ("sep_conv_3x3", 0),
        ("sep_conv_5x5", 2), ("max_pool_3x3", 0),
        ("max_pool_3x3", 0), ("avg_pool_3x3", 1),
        ("dil_conv_3x3", 4), ("skip_connect", 1),
    )
    assert genotype.reduce == (("max_pool_3x3", 0), ("max_pool_3x3", 1)) * 4
    assert genotype.normal_concat == genotype.reduce_concat == (2, 3, 4, 5)


def test_darts_derive_matches_the_reference_parse_on_random_softmax():
    """A literal transcription of quark0/darts `_parse` against `derive` on random softmax weights."""
    primitives = list(darts_space.PRIMITIVES)

    def reference_parse(weights):
        gene = []
        n = 2
        start = 0
        for i in range(4):
            end = start + n
            W = weights[start:end].copy()
            edges = sorted(range(i + 2), key=lambda x: -max(
                W[x][k] for k in range(len(W[x])) if k != primitives.index("none")))[:2]
            for j in edges:
                k_best = None
                for k in range(len(W[j])):
                    if k != primitives.index("none"):
                        if k_best is None or W[j][k] > W[j][k_best]:
                            k_best = k
                gene.append((primitives[k_best], j))
            start = end
            n += 1
        return gene

    space = spaces.get("darts")
    rng = np.random.default_rng(0)
    for _ in range(20):
        logits = {k: rng.normal(size=(14, 8)).astype(np.float32) for k in ("normal", "reduce")}
        # Rounded weights create ties, which exercise the tie rules.
        weights = {k: np.round(np.exp(v) / np.exp(v).sum(-1, keepdims=True), 1) for k, v in logits.items()}
        genotype = space.derive(weights)
        assert list(genotype.normal) == reference_parse(weights["normal"])
        assert list(genotype.reduce) == reference_parse(weights["reduce"])


def test_darts_derive_without_none_uses_all_ops():
    no_none = [op for op in darts_space.PRIMITIVES if op != "none"]
    space = spaces.get("darts", op_names=no_none)
    normal = np.zeros((14, 7), np.float32)
    normal[:, 0] = 0.5  # max_pool_3x3 everywhere
    normal[1, 2] = 0.9  # skip_connect on 2<-s1
    genotype = space.derive({"normal": normal, "reduce": normal})
    assert genotype.normal[:2] == (("skip_connect", 1), ("max_pool_3x3", 0))


def test_darts_derive_validates_weights():
    space = spaces.get("darts")
    good = np.zeros((14, 8))
    with pytest.raises(ValueError, match=r"keys \['normal'\], expected exactly \['normal', 'reduce'\]"):
        space.derive({"normal": good})
    with pytest.raises(ValueError, match=r"weights\['reduce'\] have shape \(14, 7\), expected \(14, 8\)"):
        space.derive({"normal": good, "reduce": np.zeros((14, 7))})
    with pytest.raises(ValueError, match="NaN or inf"):
        space.derive({"normal": good, "reduce": np.full((14, 8), np.inf)})


def test_darts_one_hot_then_derive_gives_the_genotype():
    space = spaces.get("darts")
    genotype = space.parse(DARTS_V2)
    weights = space.one_hot(genotype)
    # Every row of the normal cell selects one op: a kept op or, for dropped edges, "none".
    np.testing.assert_array_equal(weights["normal"].sum(axis=1), np.ones(14))
    assert weights["normal"][0, darts_space.PRIMITIVES.index("sep_conv_3x3")] == 1.0
    assert weights["normal"][4, darts_space.PRIMITIVES.index("none")] == 1.0  # node 1 drops its n0 edge
    # One-hot weights tie the two kept edges of a node, so derive lists them by input state.
    assert space.derive(weights) == genotype.canonical()
    assert genotype.canonical().normal[4:6] == (("skip_connect", 0), ("sep_conv_3x3", 1))

    no_none = spaces.get("darts", op_names=[op for op in darts_space.PRIMITIVES if op != "none"])
    weights = no_none.one_hot(genotype)
    assert weights["normal"][4].sum() == 0.0  # a dropped edge contributes nothing
    assert no_none.derive(weights) == genotype.canonical()


def test_darts_one_hot_then_derive_on_published_genotypes():
    space = spaces.get("darts")
    for name, text in _published_genotypes().items():
        genotype = space.parse(text)
        # One-hot weights tie every kept edge, so derive lists each node's pairs by input state.
        assert space.derive(space.one_hot(genotype)) == genotype.canonical(), name


def test_darts_one_hot_sums_two_ops_on_one_edge():
    space = spaces.get("darts")
    genotype = space.parse(DARTS_V2)
    pairs = list(genotype.normal)
    pairs[1] = ("skip_connect", 0)  # node 0 now applies sep_conv_3x3 and skip_connect to s0 (GDAS can)
    weights = space.one_hot(genotype._replace(normal=pairs))
    ops = darts_space.PRIMITIVES
    row = weights["normal"][0]
    assert row[ops.index("sep_conv_3x3")] == row[ops.index("skip_connect")] == 1.0
    assert weights["normal"][1, ops.index("none")] == 1.0
