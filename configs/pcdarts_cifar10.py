"""PC-DARTS on the DARTS cell space, CIFAR-10 (yuhuixu1993/PC-DARTS train_search.py; methods.md §2.4).

Partial channels K=4 (fixed first C/4 slice, max-pooled bypass on reduction edges, channel shuffle),
edge normalisation β, batch 256, SGD lr 0.1 cosine to 0 (stepped at the start of each epoch, as
quark0/darts), momentum 0.9, weight decay 3e-4, clip 5; Adam 6e-4, betas (0.5, 0.999), weight decay 1e-3
for α and β; 50 epochs, the first 15 without architecture updates; first order.
Variants: `quick`, `second_order`.
"""

import ml_collections

from configs import common


def quick(c: ml_collections.ConfigDict) -> None:
    common.quick(c)
    c.model.num_cells = 3
    c.space_options.num_nodes = 2
    c.model.partial_channels = 2  # divides the 4 channels of the quick network
    c.arch_warmup_epochs = 1  # the second (last) epoch updates the architecture


VARIANTS = {"quick": quick, "second_order": common.second_order}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = common.base_config()
    c.method = "pcdarts"
    c.space = "darts"
    c.seed = 2
    c.num_epochs = 50
    c.arch_warmup_epochs = 15
    c.batch_size = 256
    c.update_order = "arch_first"
    c.model.init_channels = 16
    c.model.num_cells = 8
    c.model.partial_channels = 4
    c.optimizer.lr = 0.1
    c.optimizer.min_lr = 0.0
    c.arch_optimizer.lr = 6e-4
    return common.apply_variants(c, arg, VARIANTS)
