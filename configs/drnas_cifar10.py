"""DrNAS on the DARTS cell space, CIFAR-10, with progressive learning (xiangning-chen/DrNAS
DARTS-space/train_search.py; methods.md §4.5-4.6). The README's headline command.

The DARTS space without `none` (7 ops); the search network is the evaluation-size one, 20 cells and C=36;
batch 64; SGD lr 0.1 cosine to 0 over all 50 epochs, momentum 0.9, weight decay 3e-4, clip 5; Adam 6e-4,
betas (0.5, 0.999), with the L2 anchor 1e-3 as its coupled weight decay; one Dirichlet sample
(β = ELU(α) + 1) per forward pass. Two stages of 25 epochs: K=6 with all 7 ops, then K=4 with the 4 ops of
largest α per edge; the architecture waits 10 epochs at the start of each stage.
Variants: `quick`, `no_progressive` (one 50-epoch stage at K=6), `kl` (the KL anchor instead of L2),
`second_order`.
"""

import ml_collections

from configs import common

OPS_WITHOUT_NONE = ("max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
                    "dil_conv_3x3", "dil_conv_5x5")


def drnas_options(progressive: bool, stages: tuple, partial_channels: tuple, num_keep: tuple):
    return ml_collections.ConfigDict({
        "reg_type": "l2", "reg_scale": 1e-3, "progressive": progressive,
        "stage_epochs": stages, "stage_partial_channels": partial_channels, "stage_num_keep": num_keep,
    })


def quick(c: ml_collections.ConfigDict) -> None:
    common.quick(c)
    c.num_epochs = 4
    c.max_steps_per_epoch = 2
    c.model.init_channels = 8
    c.model.num_cells = 3
    c.space_options.num_nodes = 2
    c.arch_warmup_epochs = 1
    c.method_options.stage_epochs = (2, 2)
    c.method_options.stage_partial_channels = (4, 2)
    c.method_options.stage_num_keep = (0, 4)
    c.model.partial_channels = 4


def no_progressive(c: ml_collections.ConfigDict) -> None:
    c.method_options.progressive = False
    c.arch_warmup_epochs = 10


def kl(c: ml_collections.ConfigDict) -> None:
    c.method_options.reg_type = "kl"


VARIANTS = {"quick": quick, "no_progressive": no_progressive, "kl": kl, "second_order": common.second_order}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = common.base_config()
    c.method = "drnas"
    c.space = "darts"
    c.space_options.op_names = OPS_WITHOUT_NONE
    c.method_options = drnas_options(True, (25, 25), (6, 4), (0, 4))
    c.seed = 2
    c.num_epochs = 50
    c.arch_warmup_epochs = 10
    c.batch_size = 64
    c.update_order = "arch_first"
    c.model.init_channels = 36
    c.model.num_cells = 20
    c.model.partial_channels = 6  # the first stage's K; the stages set it after that
    c.optimizer.lr = 0.1
    c.optimizer.min_lr = 0.0
    c.optimizer.epoch_offset = 0
    c.arch_optimizer.lr = 6e-4
    c.arch_optimizer.weight_decay = 0.0  # the anchor is method_options.reg_scale
    return common.apply_variants(c, arg, VARIANTS)
