"""Single-level search with sigmoid gates on NAS-Bench-201, CIFAR-10 (Hou & Jin; methods.md §6).

The paper's hyperparameters are unknown; these are our choice: σ(α) per op, single-level updates on the
whole CIFAR-10 training set (no validation split; the test set is scored each epoch), and AutoDL's NB201
DARTS settings (SGD Nesterov 0.025 -> 0.001, weight decay 5e-4, batch 64, 50 epochs; Adam 3e-4, betas
(0.5, 0.999), weight decay 1e-3 for α). Variants: `quick`, `softmax` (the activation), `bilevel`,
`joint_sgd` (α in the weights' SGD).
"""

import ml_collections

from configs import common, darts_nb201_cifar10


def softmax(c: ml_collections.ConfigDict) -> None:
    c.method_options.activation = "softmax"


def bilevel(c: ml_collections.ConfigDict) -> None:
    c.optimization = "bilevel"


def joint_sgd(c: ml_collections.ConfigDict) -> None:
    c.single_level.joint_sgd = True


VARIANTS = {"quick": darts_nb201_cifar10.quick, "softmax": softmax, "bilevel": bilevel, "joint_sgd": joint_sgd}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = darts_nb201_cifar10.get_config()
    c.method = "sigmoid"
    c.method_options = ml_collections.ConfigDict({"activation": "sigmoid"})
    c.optimization = "single_level"
    return common.apply_variants(c, arg, VARIANTS)
