"""Train a NAS-Bench-201 cell from scratch on CIFAR-10 with the benchmark's 200-epoch recipe (methods.md §7.4).

TinyNetwork with C=16 and N=5 cells per stage; SGD with Nesterov momentum 0.9, lr 0.1 with a per-epoch cosine
to 0 (epoch e uses lr(e), as AutoDL), weight decay 5e-4, batch 256, no gradient clipping, plain cross-entropy;
RandomCrop(32, 4) + flip and the NB201 normalisation; no cutout, auxiliary head or drop path. Trained on all
50k training images and scored on the 10k test set, this is the setting of the table's `cifar10_test` column
(set `config.benchmark.nb201_table` to have result.json show the table's numbers for the genotype).

The genotype is `config.genotype` (default NB201_best_cifar10): a search workdir, an NB201 architecture string
or a published name (`jnas.genotypes.names("nb201")`). Variant: `quick` (one cell per stage, C=4, a few steps
on synthetic 8x8 data).
"""

import ml_collections

from configs import train_common


def quick(c: ml_collections.ConfigDict) -> None:
    train_common.quick(c)
    c.model.num_cells = 1  # one cell per stage
    c.data.image_size = 8


VARIANTS = {"quick": quick}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = train_common.train_config()
    c.space = "nb201"
    c.genotype = "NB201_best_cifar10"
    c.seed = 777  # the first of the benchmark's seeds (777, 888, 999)
    c.num_epochs = 200
    c.batch_size = 256
    c.data.name = "cifar10"
    c.data.normalization = "nb201"
    c.augment.cutout_length = 0
    c.model.network = "nb201"
    c.model.init_channels = 16
    c.model.num_cells = 5
    c.model.auxiliary = False
    c.model.auxiliary_weight = 0.0
    c.model.drop_path_rate = 0.0
    c.optimizer.lr = 0.1
    c.optimizer.schedule = "cosine"
    c.optimizer.min_lr = 0.0
    c.optimizer.epoch_offset = 0
    c.optimizer.nesterov = True
    c.optimizer.weight_decay = 5e-4
    c.optimizer.grad_clip = 0.0
    return train_common.apply_variants(c, arg, VARIANTS)
