"""PC-DARTS on NAS-Bench-201, CIFAR-10.

PC-DARTS never searched NB201 (DrNAS's paper re-ran it); its NB201 hyperparameters are not published, so
this is our choice: AutoDL's NB201 protocol of `darts_nb201_cifar10.py` (SGD Nesterov 0.025 -> 0.001,
weight decay 5e-4, batch 64, 50 epochs, Adam 3e-4 for the architecture, weight step first) with PC-DARTS's
own parts: K=4 partial channels (no max-pool on NB201's stride-1 edges), edge normalisation β, and
architecture updates from epoch 15. Variants: `quick`, `second_order`.
"""

import ml_collections

from configs import common, darts_nb201_cifar10


def quick(c: ml_collections.ConfigDict) -> None:
    darts_nb201_cifar10.quick(c)
    c.model.partial_channels = 2
    c.arch_warmup_epochs = 1


VARIANTS = {"quick": quick, "second_order": darts_nb201_cifar10.second_order}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = darts_nb201_cifar10.get_config()
    c.method = "pcdarts"
    c.model.partial_channels = 4
    c.arch_warmup_epochs = 15
    return common.apply_variants(c, arg, VARIANTS)
