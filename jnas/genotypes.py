"""Published genotypes, and `resolve`: the genotype a training run builds, from a workdir, a string or a name.

The table holds each genotype exactly as its source writes it (PC-DARTS and DrNAS write the concat lists as
`range(2, 6)`; AutoDL writes GDAS_V1 as pairs per node, flattened here in order), with the repository and file
it comes from. `tests/test_train.py` checks that every entry parses and round-trips through `jnas.spaces`.

    genotype = jnas.genotypes.resolve("DARTS_V2", "darts")
    genotype = jnas.genotypes.resolve("/runs/pcdarts_seed2", "darts")       # its genotype.json
    genotype = jnas.genotypes.resolve("|nor_conv_3x3~0|+|...|", "nb201")
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os

from jnas import spaces
from jnas.errors import UserError
from jnas.spaces import DartsGenotype, NB201Genotype

GENOTYPE_FILE = "genotype.json"


@dataclasses.dataclass(frozen=True)
class PublishedGenotype:
    """One entry of the table: the genotype string as its source writes it, and where it comes from."""

    name: str
    space: str  # "darts" | "nb201"
    genotype: str
    source: str
    note: str = ""


def _entries(*entries: PublishedGenotype) -> dict[str, PublishedGenotype]:
    return {entry.name: entry for entry in entries}


# Commits: the snapshots methods.md was written from (quark0/darts f276dd3, yuhuixu1993/PC-DARTS b74702f,
# xiangning-chen/DrNAS f2caa4d, D-X-Y/AutoDL-Projects f46486e); the strings were re-read from the files.
PUBLISHED: dict[str, PublishedGenotype] = _entries(
    PublishedGenotype(
        "DARTS_V1", "darts",
        "Genotype(normal=[('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 0), ('sep_conv_3x3', 1), "
        "('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 2)], "
        "normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), "
        "('max_pool_3x3', 0), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), "
        "('avg_pool_3x3', 0)], reduce_concat=[2, 3, 4, 5])",
        "quark0/darts@f276dd3 cnn/genotypes.py (DARTS_V1)",
        "first-order DARTS; CIFAR-10 3.00 ± 0.14% error, 3.3M parameters (DARTS paper Table 1)"),
    PublishedGenotype(
        "DARTS_V2", "darts",
        "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
        "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], "
        "normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), "
        "('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), "
        "('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])",
        "quark0/darts@f276dd3 cnn/genotypes.py (DARTS_V2, also `DARTS`)",
        "second-order DARTS; CIFAR-10 2.76 ± 0.09% error, 3.3M parameters; ImageNet 26.7% top-1, 4.7M, 574M "
        "mult-adds (DARTS paper Tables 1 and 3)"),
    PublishedGenotype(
        "PC_DARTS_cifar", "darts",
        "Genotype(normal=[('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 0), ('dil_conv_3x3', 1), "
        "('sep_conv_5x5', 0), ('sep_conv_3x3', 1), ('avg_pool_3x3', 0), ('dil_conv_3x3', 1)], "
        "normal_concat=range(2, 6), reduce=[('sep_conv_5x5', 1), ('max_pool_3x3', 0), ('sep_conv_5x5', 1), "
        "('sep_conv_5x5', 2), ('sep_conv_3x3', 0), ('sep_conv_3x3', 3), ('sep_conv_3x3', 1), "
        "('sep_conv_3x3', 2)], reduce_concat=range(2, 6))",
        "yuhuixu1993/PC-DARTS@b74702f genotypes.py (PC_DARTS_cifar)",
        "CIFAR-10 2.57 ± 0.07% error, 3.6M parameters (PC-DARTS README)"),
    PublishedGenotype(
        "PC_DARTS_image", "darts",
        "Genotype(normal=[('skip_connect', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 0), ('skip_connect', 1), "
        "('sep_conv_3x3', 1), ('sep_conv_3x3', 3), ('sep_conv_3x3', 1), ('dil_conv_5x5', 4)], "
        "normal_concat=range(2, 6), reduce=[('sep_conv_3x3', 0), ('skip_connect', 1), ('dil_conv_5x5', 2), "
        "('max_pool_3x3', 1), ('sep_conv_3x3', 2), ('sep_conv_3x3', 1), ('sep_conv_5x5', 0), "
        "('sep_conv_3x3', 3)], reduce_concat=range(2, 6))",
        "yuhuixu1993/PC-DARTS@b74702f genotypes.py (PC_DARTS_image)",
        "searched on ImageNet; 24.2% top-1, 597M FLOPs (PC-DARTS README)"),
    PublishedGenotype(
        "GDAS_V1", "darts",
        "Genotype(normal=[('skip_connect', 0), ('skip_connect', 1), ('skip_connect', 0), ('sep_conv_5x5', 2), "
        "('sep_conv_3x3', 3), ('skip_connect', 0), ('sep_conv_5x5', 4), ('sep_conv_3x3', 3)], "
        "normal_concat=[2, 3, 4, 5], reduce=[('sep_conv_5x5', 0), ('sep_conv_3x3', 1), ('sep_conv_5x5', 2), "
        "('sep_conv_5x5', 1), ('dil_conv_5x5', 2), ('sep_conv_3x3', 1), ('sep_conv_5x5', 0), "
        "('sep_conv_5x5', 1)], reduce_concat=[2, 3, 4, 5])",
        "D-X-Y/AutoDL-Projects@f46486e xautodl/nas_infer_model/DXYs/genotypes.py (GDAS_V1; pairs per node "
        "flattened in order)",
        "GDAS (CVPR'19); the normal cell's node 0 takes two skip_connects, one from each input"),
    PublishedGenotype(
        "DrNAS_cifar10", "darts",
        "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_5x5', 1), ('sep_conv_3x3', 1), ('sep_conv_3x3', 2), "
        "('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 2), ('dil_conv_5x5', 3)], "
        "normal_concat=range(2, 6), reduce=[('max_pool_3x3', 0), ('sep_conv_5x5', 1), ('dil_conv_5x5', 2), "
        "('sep_conv_5x5', 1), ('sep_conv_5x5', 1), ('dil_conv_5x5', 3), ('skip_connect', 4), "
        "('sep_conv_5x5', 1)], reduce_concat=range(2, 6))",
        "xiangning-chen/DrNAS@f2caa4d DARTS-space/genotypes.py (DrNAS_cifar10)",
        "CIFAR-10 2.46 ± 0.03% error, 4.1M parameters (DrNAS README)"),
    PublishedGenotype(
        "DrNAS_imagenet", "darts",
        "Genotype(normal=[('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
        "('sep_conv_3x3', 0), ('dil_conv_3x3', 3), ('skip_connect', 0), ('sep_conv_3x3', 1)], "
        "normal_concat=range(2, 6), reduce=[('max_pool_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), "
        "('skip_connect', 2), ('sep_conv_3x3', 0), ('sep_conv_3x3', 2), ('sep_conv_3x3', 3), "
        "('sep_conv_3x3', 1)], reduce_concat=range(2, 6))",
        "xiangning-chen/DrNAS@f2caa4d DARTS-space/genotypes.py (DrNAS_imagenet)",
        "searched on ImageNet; 23.7% top-1, 5.7M parameters (DrNAS README)"),
    # NAS-Bench-201: the best cells of the 200-epoch table (NB201 v1_1 / NATS-Bench tss; the argmax figures
    # are listed in ../shared/data/nb201/README.md, "Verified figures").
    PublishedGenotype(
        "NB201_best_cifar10", "nb201",
        "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|",
        "NAS-Bench-201 200-epoch table, index 6111: the argmax of CIFAR-10 test (94.37) and of cifar10-valid "
        "valid (91.61)"),
    PublishedGenotype(
        "NB201_best_cifar100", "nb201",
        "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|",
        "NAS-Bench-201 200-epoch table, index 9930: the argmax of CIFAR-100 valid and test (73.49 / 73.51)",
        "also the cell DrNAS reports on NB201 (methods.md §7.3): CIFAR-10 test 94.36"),
    PublishedGenotype(
        "NB201_best_imagenet16_120", "nb201",
        "|nor_conv_1x1~0|+|nor_conv_1x1~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|",
        "NAS-Bench-201 200-epoch table, index 857: the argmax of ImageNet16-120 test (47.31)",
        "the argmax of ImageNet16-120 valid (46.73) is another cell, index 10676"),
    PublishedGenotype(
        "DrNAS_nb201", "nb201",
        "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|",
        "xiangning-chen/DrNAS README / DrNAS paper NB201 table (methods.md §7.3, §7.6 Table B)",
        "the same cell as NB201_best_cifar100"),
    PublishedGenotype(
        "NB201_resnet", "nb201",
        "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|skip_connect~2|",
        "NAS-Bench-201 paper's ResNet row; 200-epoch table index 11472",
        "the hand-designed baseline: CIFAR-10 test 93.91 in the table"),
)


def names(space_name: str | None = None) -> tuple[str, ...]:
    """The table's names, all or those of one space."""
    return tuple(name for name, entry in PUBLISHED.items() if space_name in (None, entry.space))


def get(name: str) -> PublishedGenotype:
    """The table entry called `name`; an unknown name is an error listing the known ones."""
    if name not in PUBLISHED:
        raise UserError(_unknown_name_message(name))
    return PUBLISHED[name]


def _unknown_name_message(name: str) -> str:
    close = difflib.get_close_matches(name, PUBLISHED, n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return f"unknown published genotype {name!r}{hint}; the table has: {', '.join(PUBLISHED)}"


def _looks_like_genotype_string(text: str) -> bool:
    return text.startswith(("|", "Genotype", "DartsGenotype"))


def _check_space(genotype: spaces.Genotype, space_name: str, what: str) -> spaces.Genotype:
    expected = {"darts": DartsGenotype, "nb201": NB201Genotype}.get(space_name)
    if expected is None:
        raise UserError(f"config.space={space_name!r} has no evaluation network; use 'darts' or 'nb201'")
    if not isinstance(genotype, expected):
        found = "nb201" if isinstance(genotype, NB201Genotype) else "darts"
        raise UserError(f"{what} is a genotype of the {found} space, but config.space={space_name!r}; set "
                        f"config.space={found!r} (and a matching config) or give a {space_name} genotype")
    return genotype


def _from_record_file(path: str, space_name: str) -> spaces.Genotype:
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read the genotype of {path} ({e}); a search writes it at its end") from None
    if not isinstance(record, dict) or not isinstance(record.get("genotype"), str):
        raise UserError(f"{path} has no \"genotype\" string; expected the genotype.json a search writes")
    recorded_space = record.get("space")
    if recorded_space is not None and recorded_space != space_name:
        raise UserError(f"{path} holds a genotype of the {recorded_space} space, but config.space="
                        f"{space_name!r}; set config.space={recorded_space!r} or give another genotype")
    try:
        genotype = spaces.parse_genotype(record["genotype"])
    except ValueError as e:
        raise UserError(f"the genotype in {path} does not parse: {e}") from None
    return _check_space(genotype, space_name, f"the genotype in {path}")


def resolve(source: str, space_name: str) -> spaces.Genotype:
    """The genotype named by `source` (what `config.genotype` holds), checked against `space_name`.

    `source` is, in the order tried:
      - a search workdir (a directory holding genotype.json), or a genotype.json file;
      - a standard genotype string: an NB201 architecture string (`|op~0|+|...|`) or a DARTS
        `Genotype(normal=[...], ...)` string (the number of nodes is read from the string);
      - a name of the published table (`names()`), e.g. "DARTS_V2".
    Raises UserError (a ValueError) naming the problem and the fix.
    """
    if not isinstance(source, str) or not source.strip():
        raise UserError(f"config.genotype={source!r} must name a genotype: a search workdir, a genotype string "
                        f"or one of {', '.join(PUBLISHED)}")
    text = source.strip()
    if os.path.isdir(text):
        path = os.path.join(text, GENOTYPE_FILE)
        if not os.path.isfile(path):
            raise UserError(f"config.genotype={source!r} is a directory without {GENOTYPE_FILE}: give the "
                            "workdir of a finished search (it writes genotype.json at its end)")
        return _from_record_file(path, space_name)
    if os.path.isfile(text):
        return _from_record_file(text, space_name)
    if _looks_like_genotype_string(text):
        try:
            genotype = spaces.parse_genotype(text)
        except ValueError as e:
            raise UserError(f"config.genotype is not a valid genotype string: {e}") from None
        return _check_space(genotype, space_name, "config.genotype")
    if text in PUBLISHED:
        entry = PUBLISHED[text]
        return _check_space(spaces.parse_genotype(entry.genotype), space_name, f"config.genotype={text!r}")
    if os.sep in text or text.startswith((".", "~")):
        raise UserError(f"config.genotype={source!r} looks like a path, but there is no such directory or "
                        "file; give the workdir of a finished search")
    raise UserError(f"config.genotype={source!r} is not a search workdir, a genotype string or a published "
                    f"name: {_unknown_name_message(text)}")


def describe(source: str) -> str:
    """Where the genotype of `source` comes from, in words, for result.json."""
    text = source.strip()
    if os.path.isdir(text):
        return f"search workdir {os.path.abspath(text)} ({GENOTYPE_FILE})"
    if os.path.isfile(text):
        return f"file {os.path.abspath(text)}"
    if _looks_like_genotype_string(text):
        return "genotype string"
    if text in PUBLISHED:
        return f"published {text}: {PUBLISHED[text].source}"
    return "unknown"
