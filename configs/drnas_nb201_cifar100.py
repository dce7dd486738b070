"""DrNAS on NAS-Bench-201, CIFAR-100 (DrNAS 201-space/train_search.py --dataset cifar100; methods.md §4.6, §7.5).

Reference: the CIFAR-10 recipe unchanged (configs/drnas_nb201_cifar10.py: 100 epochs, batch 64, SGD 0.025 ->
0.001 cosine without Nesterov, weight decay 3e-4, Adam 3e-4 with the L2 anchor 1e-3, seed 2) on CIFAR-100:
the weights train on the first half of the 50,000 training images and the architecture on the second half
(train_portion 0.5, `indices[:split]` / `indices[split:]`), with the DARTS CIFAR-100 normalisation
(mean (0.5071, 0.4865, 0.4409), std (0.2673, 0.2564, 0.2762): DrNAS utils._data_transforms_cifar100).

Our choices: data.split="train_portion" names the split explicitly (AutoDL's x-valid protocol is
`data.split=nb201_xvalid`, see configs/gdas_nb201_cifar100.py). Variants as the CIFAR-10 config: `quick`,
`progressive`, `kl`.
"""

import ml_collections

from configs import common, drnas_nb201_cifar10

VARIANTS = drnas_nb201_cifar10.VARIANTS


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = drnas_nb201_cifar10.get_config()
    c.data.name = "cifar100"
    c.data.normalization = "darts"
    c.data.split = "train_portion"
    c.data.train_portion = 0.5
    c.data.xvalid_split_file = ""
    return common.apply_variants(c, arg, VARIANTS)
