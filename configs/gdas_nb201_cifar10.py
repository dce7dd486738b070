"""GDAS on NAS-Bench-201, CIFAR-10 (AutoDL exps/NAS-Bench-201-algos/GDAS.py; methods.md §3.5).

250 epochs, batch 64, SGD Nesterov lr 0.025 -> 0.001 cosine, weight decay 5e-4, clip 5; Adam 3e-4,
betas (0.5, 0.999), weight decay 1e-3; Gumbel temperature 10 -> 0.1 linearly over the epochs; the weight
step first, then the architecture step, each with its own Gumbel sample; only the sampled op of each edge
runs, plus AutoDL's zero-valued terms of the other ops. Variants: `quick`.
"""

import ml_collections

from configs import common, darts_nb201_cifar10


def gdas_options() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"tau_max": 10.0, "tau_min": 0.1, "variant": "auto"})


VARIANTS = {"quick": darts_nb201_cifar10.quick}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = darts_nb201_cifar10.get_config()
    c.method = "gdas"
    c.method_options = gdas_options()
    c.num_epochs = 250
    c.update_order = "weights_first"
    return common.apply_variants(c, arg, VARIANTS)
