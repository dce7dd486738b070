"""DrNAS on NAS-Bench-201, CIFAR-10 (DrNAS 201-space/train_search.py; methods.md §4.6, §7.5).

100 epochs, batch 64, SGD lr 0.025 -> 0.001 cosine (no Nesterov), momentum 0.9, weight decay 3e-4,
clip 5; Adam 3e-4 with the L2 anchor 1e-3; the DARTS normalisation; no partial channels and architecture
updates from the first step. Variant `progressive` (train_search_progressive.py): 50 + 50 epochs, K 4 -> 2,
5 -> 3 ops per edge, 10 warm-up epochs per stage. Also `quick`, `kl`.
"""

import ml_collections

from configs import common, darts_nb201_cifar10, drnas_cifar10


def quick(c: ml_collections.ConfigDict) -> None:
    darts_nb201_cifar10.quick(c)
    if c.method_options.progressive:
        c.num_epochs = 4
        c.max_steps_per_epoch = 2
        c.arch_warmup_epochs = 1
        c.method_options.stage_epochs = (2, 2)


def progressive(c: ml_collections.ConfigDict) -> None:
    c.method_options.progressive = True
    c.method_options.stage_epochs = (50, 50)
    c.model.partial_channels = 4
    c.arch_warmup_epochs = 10


VARIANTS = {"quick": quick, "progressive": progressive, "kl": drnas_cifar10.kl}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = darts_nb201_cifar10.get_config()
    c.method = "drnas"
    c.method_options = drnas_cifar10.drnas_options(False, (50, 50), (4, 2), (0, 3))
    c.seed = 2
    c.num_epochs = 100
    c.update_order = "arch_first"
    c.data.normalization = "darts"
    c.optimizer.nesterov = False
    c.optimizer.weight_decay = 3e-4
    c.arch_optimizer.weight_decay = 0.0  # the anchor is method_options.reg_scale
    return common.apply_variants(c, arg, VARIANTS)
