"""DARTS on NAS-Bench-201, CIFAR-10, with AutoDL's NB201 protocol (methods.md §7.5).

SGD with Nesterov momentum, lr 0.025 -> 0.001 cosine (lr(e) in epoch e), weight decay 5e-4, batch 64,
50 epochs; Adam for the architecture (3e-4, betas (0.5, 0.999), weight decay 1e-3). AutoDL's DARTS-V1
takes the weight step before the architecture step; its DARTS-V2 (variant `second_order`) takes the
unrolled architecture step first. Variants: `second_order`, `quick`.
"""

import ml_collections

from configs import common


def quick(c: ml_collections.ConfigDict) -> None:
    common.quick(c)
    c.model.num_cells = 1  # one cell per stage


def second_order(c: ml_collections.ConfigDict) -> None:
    common.second_order(c)
    c.update_order = "arch_first"


VARIANTS = {"quick": quick, "second_order": second_order}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = common.base_config()
    c.method = "darts"
    c.space = "nb201"
    c.space_options = ml_collections.ConfigDict()
    c.seed = 0
    c.num_epochs = 50
    c.batch_size = 64
    c.update_order = "weights_first"
    c.model.init_channels = 16
    c.model.num_cells = 5  # cells per stage
    c.model.pool_bn = False  # NB201 pooling has no BatchNorm
    c.data.normalization = "nb201"
    c.optimizer.nesterov = True
    c.optimizer.weight_decay = 5e-4
    c.optimizer.epoch_offset = 0
    return common.apply_variants(c, arg, VARIANTS)
