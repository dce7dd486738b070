"""EDAS-like search on the DARTS cell space, CIFAR-10 (methods.md §5 and addendum §1).

Only the EDAS abstract is known: one edge relaxed per step, every other edge clamped to 0/1, a deeper
search network. Everything else is our choice and is exposed in `method_options` (see jnas/methods/edas.py):
uniform edge sampling per cell type, softmax relaxation, argmax clamps with each node gated to its two
strongest inputs, no random op drop, α rows without gradient left untouched; 14 cells (deeper than DARTS's
8), C=16, and DARTS's first-order settings (batch 64, SGD 0.025 -> 0.001, Adam 3e-4, 50 epochs).
Report results as "EDAS-like". Variants: `quick`.
"""

import ml_collections

from configs import common, darts_cifar10


def edas_options() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "edge_sampling": "uniform", "relax": "softmax", "tau": 1.0, "clamp": "argmax", "topology_clamp": True,
        "random_op_drop": 0, "mask_unsampled_rows": True,
    })


VARIANTS = {"quick": darts_cifar10.quick}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = darts_cifar10.get_config()
    c.method = "edas"
    c.method_options = edas_options()
    c.model.num_cells = 14
    return common.apply_variants(c, arg, VARIANTS)
