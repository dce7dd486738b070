"""DARTS on the DARTS cell space, CIFAR-10 (quark0/darts cnn/train_search.py; methods.md §1.5).

Variants: `second_order` (DARTS-V2, finite-difference Hessian-vector product), `quick` (tiny network,
a few steps). Example: `python launch.py --config=configs/darts_cifar10.py:second_order --workdir=W`.
"""

import ml_collections

from configs import common


def quick(c: ml_collections.ConfigDict) -> None:
    common.quick(c)
    c.model.num_cells = 3  # reductions at cells 1 and 2, as in the full network
    c.space_options.num_nodes = 2  # 5 edges per cell instead of 14: compiles ~3x faster on a CPU


VARIANTS = {"quick": quick, "second_order": common.second_order}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = common.base_config()
    c.method = "darts"
    c.space = "darts"
    c.seed = 2
    c.num_epochs = 50
    c.batch_size = 64
    c.update_order = "arch_first"
    c.model.init_channels = 16
    c.model.num_cells = 8
    c.data.normalization = "darts"
    return common.apply_variants(c, arg, VARIANTS)
