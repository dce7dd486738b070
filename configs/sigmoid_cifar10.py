"""Single-level search with sigmoid gates on the DARTS cell space, CIFAR-10 (Hou & Jin; methods.md §6).

Our choice of hyperparameters (the paper's are unknown): σ(α) per op, single-level updates on all 50k
training images, DARTS's first-order settings otherwise (8 cells, C=16, batch 64, SGD 0.025 -> 0.001,
weight decay 3e-4, Adam 3e-4 for α, 50 epochs). The genotype ranks raw σ(α) with DARTS's top-2 rule.
Variants: `quick`, `softmax`, `bilevel`, `joint_sgd`.
"""

import ml_collections

from configs import common, darts_cifar10, sigmoid_nb201_cifar10

VARIANTS = {"quick": darts_cifar10.quick, "softmax": sigmoid_nb201_cifar10.softmax,
            "bilevel": sigmoid_nb201_cifar10.bilevel, "joint_sgd": sigmoid_nb201_cifar10.joint_sgd}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = darts_cifar10.get_config()
    c.method = "sigmoid"
    c.method_options = ml_collections.ConfigDict({"activation": "sigmoid"})
    c.optimization = "single_level"
    return common.apply_variants(c, arg, VARIANTS)
