"""GDAS on NAS-Bench-201, ImageNet16-120, with AutoDL's protocol (exps/NAS-Bench-201-algos/GDAS.py --dataset
ImageNet16-120; get_dataset_with_transform.py get_nas_search_loaders; methods.md §3.5, §7.5).

Reference: the CIFAR-10 recipe unchanged (configs/gdas_nb201_cifar10.py) with AutoDL's ImageNet16-120 search
data: the weights train on all 151,700 training images and the architecture on the 3,000 x-valid images of
the 6,000-image validation set (`configs/nas-benchmark/imagenet-16-120-test-split.txt`), both with the
training augmentation (RandomCrop(16, padding=2), flip); normalisation mean (122.68, 116.66, 104.01)/255,
std (63.22, 61.26, 65.09)/255.

Our choices: data.xvalid_split_file must be set to a copy of `imagenet-16-120-test-split.txt` (jnas does not
ship it); the split file indexes the validation images in the files' order, so this protocol needs the
folder source (TFDS `imagenet_resized` does not keep that order and is refused with a message); the crop
padding is the dataset's (`jnas.data.get_spec("imagenet16_120").crop_padding == 2`); data.image_size=16
sizes synthetic data like the real images.
Variants: `quick` (also switches to data.split="train_portion", which works with synthetic data).
"""

import ml_collections

from configs import common, darts_nb201_cifar10, gdas_nb201_cifar10


def quick(c: ml_collections.ConfigDict) -> None:
    darts_nb201_cifar10.quick(c)
    c.data.split = "train_portion"  # the split file indexes the real 6,000 validation images


VARIANTS = {"quick": quick}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = gdas_nb201_cifar10.get_config()
    c.data.name = "imagenet16_120"
    c.data.normalization = "nb201"
    c.data.split = "nb201_xvalid"
    c.data.xvalid_split_file = ""  # path to AutoDL's configs/nas-benchmark/imagenet-16-120-test-split.txt
    c.data.image_size = 16  # synthetic source only
    return common.apply_variants(c, arg, VARIANTS)
