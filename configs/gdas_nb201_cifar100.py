"""GDAS on NAS-Bench-201, CIFAR-100, with AutoDL's protocol (exps/NAS-Bench-201-algos/GDAS.py --dataset
cifar100; get_dataset_with_transform.py get_nas_search_loaders; methods.md §3.5, §7.5).

Reference: the CIFAR-10 recipe unchanged (configs/gdas_nb201_cifar10.py: 250 epochs, batch 64, SGD Nesterov
0.025 -> 0.001 cosine, weight decay 5e-4, Adam 3e-4 betas (0.5, 0.999) weight decay 1e-3, τ 10 -> 0.1) with
AutoDL's CIFAR-100 search data: the weights train on all 50,000 training images and the architecture on the
5,000 x-valid images of the test set (`configs/nas-benchmark/cifar100-test-split.txt`), both with the
training augmentation; normalisation mean (129.3, 124.1, 112.4)/255, std (68.2, 65.4, 70.4)/255.

Our choices: jnas does not ship NAS-Bench-201's split files, so data.xvalid_split_file must be set to a copy
of `cifar100-test-split.txt` (AutoDL-Projects configs/nas-benchmark/);
the run stops with an error naming the file until then (or use `--config.data.split=train_portion`).
One epoch is 50,000 / 64 weight steps, as AutoDL's SearchDataset (its length is the weight split's).
Variants: `quick` (also switches to data.split="train_portion", which works with synthetic data).
"""

import ml_collections

from configs import common, darts_nb201_cifar10, gdas_nb201_cifar10


def quick(c: ml_collections.ConfigDict) -> None:
    darts_nb201_cifar10.quick(c)
    c.data.split = "train_portion"  # the split file indexes the real 10,000 test images


VARIANTS = {"quick": quick}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = gdas_nb201_cifar10.get_config()
    c.data.name = "cifar100"
    c.data.normalization = "nb201"
    c.data.split = "nb201_xvalid"
    c.data.xvalid_split_file = ""  # path to AutoDL's configs/nas-benchmark/cifar100-test-split.txt
    return common.apply_variants(c, arg, VARIANTS)
