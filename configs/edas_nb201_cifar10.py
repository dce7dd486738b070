"""EDAS-like search on NAS-Bench-201, CIFAR-10 (methods.md §5; our design, see edas_cifar10.py).

AutoDL's NB201 protocol (`darts_nb201_cifar10.py`) with one relaxed edge per step and the other five
clamped to the op the NB201 derivation would pick (`none` allowed); no topology gate (NB201 keeps every
edge). Variants: `quick`.
"""

import ml_collections

from configs import common, darts_nb201_cifar10, edas_cifar10

VARIANTS = {"quick": darts_nb201_cifar10.quick}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = darts_nb201_cifar10.get_config()
    c.method = "edas"
    c.method_options = edas_cifar10.edas_options()
    return common.apply_variants(c, arg, VARIANTS)
