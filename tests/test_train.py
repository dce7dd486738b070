"""Training a derived architecture: published genotypes, resolve(), counts, drop path, cutout, a quick run."""

from __future__ import annotations

import json
import math
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jnas import genotypes, spaces, train
from jnas.data.augment import cutout
from jnas.errors import UserError
from jnas.nn import networks
from tests.helpers import load_config, shared_or_skip

# A 2-node DARTS genotype: a tiny network with every kind of op (conv, pool, skip at both strides) that
# compiles in a fraction of the time of a 4-node cell.
TINY_DARTS = ("Genotype(normal=[('sep_conv_3x3', 0), ('skip_connect', 1), ('dil_conv_3x3', 0), "
              "('sep_conv_3x3', 2)], normal_concat=[2, 3], reduce=[('max_pool_3x3', 0), ('sep_conv_3x3', 1), "
              "('skip_connect', 2), ('avg_pool_3x3', 1)], reduce_concat=[2, 3])")


# ---------------------------------------------------------------------------------------------- genotypes


def test_published_table_round_trips_through_the_parsers():
    assert {"DARTS_V1", "DARTS_V2", "PC_DARTS_cifar", "PC_DARTS_image", "GDAS_V1", "DrNAS_cifar10",
            "DrNAS_imagenet", "NB201_best_cifar10", "NB201_best_cifar100",
            "NB201_best_imagenet16_120"} <= set(genotypes.PUBLISHED)
    for name, entry in genotypes.PUBLISHED.items():
        assert entry.name == name and entry.source, name
        space = spaces.get(entry.space)
        genotype = space.parse(entry.genotype)
        assert genotype.to_string() == entry.genotype.replace("range(2, 6)", "[2, 3, 4, 5]"), name
        assert space.parse(genotype.to_string()) == genotype, name
        assert spaces.parse_genotype(entry.genotype) == genotype, name
        # The one-hot weights of the genotype derive it back (DARTS: up to the pair order within a node).
        derived = space.derive(space.one_hot(genotype))
        assert derived == (genotype.canonical() if entry.space == "darts" else genotype), name
        assert genotypes.resolve(name, entry.space) == genotype
    assert genotypes.names("nb201") == tuple(n for n, e in genotypes.PUBLISHED.items() if e.space == "nb201")


def test_published_table_matches_the_shared_reference_strings():
    path = shared_or_skip("data/reference/parameter_counts.json")
    reference = json.loads(path.read_text())["published_genotypes"]
    assert set(reference) <= set(genotypes.PUBLISHED)
    for name, entry in reference.items():
        assert genotypes.PUBLISHED[name].genotype == entry["genotype"], name


def test_nb201_best_cells_are_the_table_optima():
    from jnas.benchmarks import nb201

    table = nb201.load_table(shared_or_skip("data/nb201/nb201_200ep.csv.gz"))
    best = {"NB201_best_cifar10": ("cifar10_test", 94.37), "NB201_best_cifar100": ("cifar100_test", 73.51),
            "NB201_best_imagenet16_120": ("imagenet16_120_test", 47.31)}
    for name, (column, value) in best.items():
        assert table.lookup(genotypes.PUBLISHED[name].genotype)[column] == pytest.approx(value, abs=0.01), name


def _workdir_with(tmp_path, record):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "genotype.json").write_text(json.dumps(record))
    return str(tmp_path)


def test_resolve_from_workdir_string_and_name(tmp_path):
    darts_v2 = spaces.get("darts").parse(genotypes.PUBLISHED["DARTS_V2"].genotype)
    assert genotypes.resolve("DARTS_V2", "darts") == darts_v2
    assert genotypes.resolve(genotypes.PUBLISHED["DARTS_V2"].genotype, "darts") == darts_v2
    nb201_string = genotypes.PUBLISHED["NB201_resnet"].genotype
    assert genotypes.resolve(f"  {nb201_string}\n", "nb201").to_string() == nb201_string
    # A search workdir: its genotype.json, whatever the cell's node count.
    record = {"space": "darts", "method": "pcdarts", "genotype": TINY_DARTS}
    workdir = _workdir_with(tmp_path / "search", record)
    resolved = genotypes.resolve(workdir, "darts")
    assert resolved.to_string() == TINY_DARTS and resolved.num_nodes == 2
    assert genotypes.resolve(str(tmp_path / "search" / "genotype.json"), "darts") == resolved
    assert genotypes.describe(workdir).startswith("search workdir")
    assert genotypes.describe("DARTS_V2").startswith("published DARTS_V2: quark0/darts")


@pytest.mark.parametrize("source, space_name, message", [
    ("DARTS_V3", "darts", r"unknown published genotype 'DARTS_V3' \(did you mean DARTS_V2, DARTS_V1"),
    ("PC_DARTS_cifar", "nb201", r"genotype of the darts space, but config.space='nb201'"),
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|",
     "darts", r"nb201 space, but config.space='darts'"),
    ("Genotype(normal=[('sep_conv_9x9', 0)])", "darts", r"not a valid genotype string"),
    ("runs/no_such_search", "darts", r"looks like a path, but there is no such directory"),
    ("", "darts", r"must name a genotype"),
])
def test_resolve_errors(source, space_name, message):
    with pytest.raises(ValueError, match=message):
        genotypes.resolve(source, space_name)


def test_resolve_workdir_errors(tmp_path):
    with pytest.raises(UserError, match="without genotype.json: give the workdir of a finished search"):
        genotypes.resolve(str(tmp_path), "darts")
    nb201_run = _workdir_with(tmp_path / "nb201", {"space": "nb201", "genotype": "|none~0|+|none~0|none~1|+|"
                                                   "none~0|none~1|none~2|"})
    with pytest.raises(UserError, match="genotype of the nb201 space, but config.space='darts'"):
        genotypes.resolve(nb201_run, "darts")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "genotype.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot read the genotype"):
        genotypes.resolve(str(broken), "darts")


# ---------------------------------------------------------------------------------------------- configs


def test_train_cifar10_recipe_and_darts_v2_parameter_count():
    """methods.md §0.4 values, and 3.3M parameters (DARTS paper) without the auxiliary head, from shapes."""
    c = load_config("train_cifar10", None)
    assert (c.task, c.model.network, c.model.num_cells, c.model.init_channels, c.batch_size, c.num_epochs) == (
        "train", "darts_cifar", 20, 36, 96, 600)
    assert (c.model.auxiliary, c.model.auxiliary_weight, c.model.drop_path_rate, c.augment.cutout_length) == (
        True, 0.4, 0.2, 16)
    assert (c.optimizer.lr, c.optimizer.min_lr, c.optimizer.momentum, c.optimizer.weight_decay,
            c.optimizer.grad_clip, c.optimizer.schedule) == (0.025, 0.0, 0.9, 3e-4, 5.0, "cosine")
    train.validate(c)
    c.model.scan_cells = True  # the same parameters, traced faster
    model = train.build_model(c, genotypes.resolve(c.genotype, "darts"), 10)
    params = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, jnp.zeros((1, 32, 32, 3)),
                                               train=False))["params"]
    without_aux = networks.count_params(params) - networks.count_params(params["auxiliary_head"])
    assert without_aux == 3_349_342  # quark0/darts NetworkCIFAR(36, 10, 20, True, DARTS_V2), as in test_nn
    assert round(without_aux / 1e6, 1) == 3.3


def test_nb201_and_imagenet_configs():
    nb201 = load_config("train_nb201_cifar10", None)
    assert (nb201.num_epochs, nb201.batch_size, nb201.optimizer.lr, nb201.optimizer.nesterov,
            nb201.optimizer.weight_decay, nb201.optimizer.epoch_offset, nb201.data.normalization) == (
        200, 256, 0.1, True, 5e-4, 0, "nb201")
    train.validate(nb201)
    imagenet = load_config("train_imagenet", None)
    assert (imagenet.model.num_cells, imagenet.model.init_channels, imagenet.label_smoothing,
            imagenet.optimizer.schedule, imagenet.optimizer.decay_rate) == (14, 48, 0.1, "exponential", 0.97)
    train.validate(imagenet)
    imagenet.data.pipeline = "device"  # ImageNet cannot be held on the devices
    with pytest.raises(UserError, match=r"data.pipeline=host"):
        train.validate(imagenet)
    for name in ("train_cifar10", "train_nb201_cifar10", "train_imagenet"):
        train.validate(load_config(name, "quick"))


@pytest.mark.parametrize("key, value, message", [
    ("genotype", "NO_SUCH_CELL", r"config.genotype='NO_SUCH_CELL' is not a search workdir.*unknown published"),
    ("model.network", "nb201", r"builds nb201 genotypes, but config.space='darts'"),
    ("data.image_size", 16, r"16x16 images leave a 4x4 map at the auxiliary head, which needs at least 8x8"),
    ("optimizer.schedule", "step", r"config.optimizer.schedule='step' is not one of: cosine, exponential"),
    ("model.drop_path_rate", 1.0, r"config.model.drop_path_rate=1.0 must be >= 0 and < 1"),
    ("batch_size", 6, r"multiple of the number of devices"),
])
def test_validate_names_the_key(key, value, message):
    c = load_config("train_cifar10", "quick")
    node = c
    *parents, leaf = key.split(".")
    for part in parents:
        node = node[part]
    node[leaf] = value
    with pytest.raises(ValueError, match=message):
        train.validate(c)


def test_lr_schedules_step_once_per_epoch():
    c = load_config("train_imagenet", None)
    schedule = train.lr_schedule(c, steps_per_epoch=10)
    # quark0/darts steps StepLR at the start of each epoch: epoch e trains with 0.1 * 0.97^(e + 1).
    np.testing.assert_allclose([schedule(0), schedule(9), schedule(10), schedule(25)],
                               [0.097, 0.097, 0.1 * 0.97 ** 2, 0.1 * 0.97 ** 3], rtol=1e-6)
    nb201 = load_config("train_nb201_cifar10", None)
    schedule = train.lr_schedule(nb201, steps_per_epoch=10)
    # AutoDL: epoch e trains with the cosine at e, so the first epoch uses the full 0.1.
    np.testing.assert_allclose([schedule(0), schedule(1000), schedule(1999)],
                               [0.1, 0.05, 0.05 * (1 + math.cos(math.pi * 199 / 200))], rtol=1e-5, atol=1e-9)


# ---------------------------------------------------------------------------------------------- counting


def test_count_mult_adds_exact_on_convs_dense_and_scan():
    def forward(x, kernel, depthwise, dense):
        y = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        y = jax.lax.conv_general_dilated(y, depthwise, (2, 2), ((1, 1), (1, 1)), feature_group_count=8,
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        y = y.reshape(1, -1) @ dense  # [1, 128] @ [128, 10]

        def body(h, _):
            return jnp.tanh(h @ jnp.ones((10, 10))), None

        return jax.lax.scan(body, y, None, length=3)[0]

    shapes = [jax.ShapeDtypeStruct(shape, jnp.float32)
              for shape in ((1, 8, 8, 3), (3, 3, 3, 8), (3, 3, 1, 8), (128, 10))]
    jaxpr = jax.make_jaxpr(forward)(*shapes).jaxpr
    expected = 8 * 8 * 8 * (3 * 3 * 3) + 4 * 4 * 8 * (3 * 3 * 1) + 128 * 10 + 3 * 10 * 10
    assert train.count_mult_adds(jaxpr) == expected


def test_model_complexity_of_an_nb201_network():
    """NB201 TinyNetwork (C=4, N=1) at 8x8: the convolutions and the classifier counted by hand."""
    c = load_config("train_nb201_cifar10", "quick")
    genotype = genotypes.resolve("|nor_conv_3x3~0|+|none~0|nor_conv_1x1~1|+|skip_connect~0|none~1|"
                                 "avg_pool_3x3~2|", "nb201")
    counts = train.model_complexity(c, genotype, 10, (8, 8, 3))
    C = 4

    def cell(channels, side):  # conv3x3 on 1<-0 and conv1x1 on 2<-1
        return side * side * channels * channels * (9 + 1)

    def resblock(c_in, c_out, side_out):  # conv_a 3x3 stride 2, conv_b 3x3, shortcut pool + 1x1
        return side_out ** 2 * c_out * (9 * c_in + 9 * c_out + c_in)

    expected = (8 * 8 * C * 27 + cell(C, 8) + resblock(C, 2 * C, 4) + cell(2 * C, 4) + resblock(2 * C, 4 * C, 2)
                + cell(4 * C, 2) + 4 * C * 10)
    assert counts["mult_adds"] == expected
    assert counts["params"] == counts["params_with_aux"]
    assert counts["xla_flops"] is None or counts["xla_flops"] > 0


# ---------------------------------------------------------------------------------------- drop path, cutout


def test_drop_path_rate_ramps_linearly():
    c = load_config("train_cifar10", None)
    assert float(train.drop_path_rate(c, 0)) == 0.0
    assert float(train.drop_path_rate(c, 300)) == pytest.approx(0.1)
    assert float(train.drop_path_rate(c, 599)) == pytest.approx(0.2 * 599 / 600)


def test_drop_path_statistics_in_a_cell_edge():
    """Each example of a non-identity op's output is dropped with probability p, kept ones scaled by 1/(1-p);
    identities are never dropped (quark0/darts model.py)."""
    x = jax.random.normal(jax.random.key(1), (4000, 4, 4, 2))
    rate, rngs = 0.3, {"dropout": jax.random.key(0)}
    pool = networks.DiscreteEdge(("max_pool_3x3",))
    out = np.asarray(pool.apply({}, x, True, rate, rngs=rngs))
    reference = np.asarray(nn.max_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1))))
    dropped = np.all(out == 0, axis=(1, 2, 3))
    assert abs(dropped.mean() - rate) < 4 * math.sqrt(rate * (1 - rate) / len(x))
    np.testing.assert_allclose(out[~dropped], reference[~dropped] / (1 - rate), rtol=1e-6)
    identity = networks.DiscreteEdge(("skip_connect",))
    np.testing.assert_array_equal(np.asarray(identity.apply({}, x, True, rate, rngs=rngs)), np.asarray(x))


def test_cutout_statistics():
    """A 16x16 zero square in all channels, its centre uniform over the pixels, clipped at the borders."""
    images = jnp.ones((2000, 32, 32, 3)) * jnp.arange(1, 4)
    out = np.asarray(cutout(jax.random.key(0), images, 16))
    zero = out == 0
    assert np.all(zero == zero[..., :1])  # the same square in every channel
    zero = zero[..., 0]
    rows, cols = zero.any(axis=2), zero.any(axis=1)
    heights, widths = rows.sum(1), cols.sum(1)
    assert np.all(zero.sum((1, 2)) == heights * widths)  # a rectangle
    for mask in (rows, cols):  # contiguous, and [c - 8, c + 8) clipped, for a centre c in [0, 32)
        first, last = mask.argmax(1), 31 - mask[:, ::-1].argmax(1)
        assert np.all(mask.sum(1) == last - first + 1)
        centre = np.where(first > 0, first + 8, last + 1 - 8)
        assert centre.min() >= 0 and centre.max() <= 31
    # Exact expectations of the clipped side: 17 of the 32 centres give a full 16.
    sides = np.array([min(c + 8, 32) - max(c - 8, 0) for c in range(32)])
    full_square = (sides == 16).mean() ** 2
    assert abs(np.mean((heights == 16) & (widths == 16)) - full_square) < 0.04
    assert abs(heights.mean() - sides.mean()) < 0.3 and abs(widths.mean() - sides.mean()) < 0.3
    assert heights.min() == 8 and heights.max() == 16
    np.testing.assert_array_equal(out[~np.repeat(zero[..., None], 3, -1)],
                                  np.asarray(images)[~np.repeat(zero[..., None], 3, -1)])
    np.testing.assert_array_equal(np.asarray(cutout(jax.random.key(0), images, 0)), np.asarray(images))


# ---------------------------------------------------------------------------------------------- a quick run


def _tiny_darts_config():
    """The quick CIFAR config with a 2-node cell: auxiliary head, drop path and cutout all on."""
    c = load_config("train_cifar10", "quick")
    c.genotype = TINY_DARTS
    c.num_epochs = 2
    c.max_steps_per_epoch = 2
    c.eval_batches = 1
    c.data.synthetic_size = 32
    c.label_smoothing = 0.1
    return c


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("train")
    config = _tiny_darts_config()
    return config, str(workdir), train.run(config, str(workdir))


def test_quick_run_writes_metrics_and_result(quick_run):
    config, workdir, out = quick_run
    with open(f"{workdir}/metrics.jsonl") as f:
        lines = [json.loads(line) for line in f]
    assert [line["epoch"] for line in lines] == [1, 2] and [line["step"] for line in lines] == [2, 4]
    for line in lines:
        for key in ("train_loss", "train_acc", "test_loss", "test_acc", "train_main_loss", "grad_norm", "lr"):
            assert math.isfinite(line[key]), (key, line)
    # Drop path of epoch e is 0.2 * e / 2; the lr is the quark0/darts cosine at t = e + 1.
    assert [line["drop_path_rate"] for line in lines] == pytest.approx([0.0, 0.1])
    assert [line["lr"] for line in lines] == pytest.approx([0.0125, 0.0], abs=1e-7)
    with open(f"{workdir}/result.json") as f:
        result = json.load(f)
    assert result["test_acc"] == lines[-1]["test_acc"] and 0.0 <= result["test_acc"] <= 1.0
    assert math.isfinite(result["test_loss"]) and result["genotype"] == TINY_DARTS
    assert result["genotype_source"] == "genotype string" and result["devices"] == 4
    params = out["state"]["params"]
    assert result["params"] == networks.count_params(params) - networks.count_params(params["auxiliary_head"])
    assert result["params_with_aux"] == networks.count_params(params) > result["params"] > 0
    assert result["mult_adds"] > 0 and "exact" in result["mult_adds_method"]


def test_quick_run_resumes_from_its_checkpoints(quick_run):
    """Started again on its workdir, a finished run trains no further; with its last checkpoint gone, it
    continues from the one before and computes exactly what the uninterrupted run did."""
    config, workdir, out = quick_run
    again = train.run(config, workdir)
    assert again["history"] == out["history"] and again["test_acc"] == out["test_acc"]
    shutil.rmtree(os.path.join(workdir, "checkpoints", "4"))  # the end of epoch 2
    resumed = train.run(config, workdir)
    drop = ("seconds", "images_per_second", "compile_seconds")
    assert [{k: v for k, v in line.items() if k not in drop} for line in resumed["history"]] == [
        {k: v for k, v in line.items() if k not in drop} for line in out["history"]]
    new, original = jax.device_get((resumed["state"], out["state"]))
    jax.tree.map(np.testing.assert_array_equal, new, original)
    with open(f"{workdir}/metrics.jsonl") as f:
        assert [json.loads(line)["epoch"] for line in f] == [1, 2]
