"""GDAS on the DARTS (NASNet) cell space, CIFAR-10: AutoDL's reproduction (methods.md §3.5).

AutoDL's GDAS-NASNet-CIFAR search network: C=16, two normal cells per stage (8 cells: reductions at cells
2 and 5), 4 nodes, stem multiplier 3, pooling without BatchNorm; batch 256, 250 epochs, SGD Nesterov
0.025 -> 0.001, weight decay 5e-4; Adam 3e-4; τ 10 -> 0.1. Each edge runs only its sampled op
(h_k·op_k(x), no zero terms), and the genotype keeps each node's two best (op, input) pairs, which may
share an input. Variants: `quick`.
"""

import ml_collections

from configs import common, darts_cifar10, gdas_nb201_cifar10

VARIANTS = {"quick": darts_cifar10.quick}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = darts_cifar10.get_config()
    c.method = "gdas"
    c.method_options = gdas_nb201_cifar10.gdas_options()
    c.num_epochs = 250
    c.batch_size = 256
    c.update_order = "weights_first"
    c.model.pool_bn = False
    c.optimizer.nesterov = True
    c.optimizer.weight_decay = 5e-4
    c.optimizer.epoch_offset = 0
    return common.apply_variants(c, arg, VARIANTS)
