"""DrNAS on NAS-Bench-201, ImageNet16-120 (DrNAS 201-space/train_search.py --dataset imagenet16-120;
methods.md §4.6, §7.5).

Reference: the CIFAR-10 recipe unchanged (configs/drnas_nb201_cifar10.py) on ImageNet16-120 (16x16 images,
120 classes, 151,700 training images): the weights train on the first half of the training set and the
architecture on the second half (train_portion 0.5 of `ImageNet16(..., use_num_of_class_only=120)`), with
mean (122.68, 116.66, 104.01)/255, std (63.22, 61.26, 65.09)/255, RandomCrop(16, padding=2) and flip.

Our choices: data.split="train_portion" named explicitly; both normalisation schemes of imagenet16_120 are
those constants, so data.normalization="darts" matches DrNAS; the crop padding is the dataset's
(`jnas.data.get_spec("imagenet16_120").crop_padding == 2`); data.image_size=16 sizes synthetic data like
the real images. "First half" is in the order of the source: the folder source keeps the files' order
as DrNAS does, TFDS `imagenet_resized` keeps its own stored order (a different, fixed half).
Variants as the CIFAR-10 config: `quick`, `progressive`, `kl`.
"""

import ml_collections

from configs import common, drnas_nb201_cifar10

VARIANTS = drnas_nb201_cifar10.VARIANTS


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = drnas_nb201_cifar10.get_config()
    c.data.name = "imagenet16_120"
    c.data.normalization = "darts"
    c.data.split = "train_portion"
    c.data.train_portion = 0.5
    c.data.xvalid_split_file = ""
    c.data.image_size = 16  # synthetic source only
    return common.apply_variants(c, arg, VARIANTS)
