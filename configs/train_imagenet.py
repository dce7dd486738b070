"""Train a DARTS-space genotype on ImageNet in the mobile setting (DARTS recipe, methods.md §0.5).

NetworkImageNet of 14 cells with C=48 (three stride-2 stem convs, 224 -> 28), auxiliary head (weight 0.4, no
BN after its 768-channel conv), no drop path; SGD lr 0.1, momentum 0.9, weight decay 3e-5, the lr multiplied
by 0.97 every epoch (epoch e uses 0.1 * 0.97^(e + 1), as quark0/darts steps StepLR at the start of each
epoch), label smoothing 0.1 on the training loss, gradient clipping at 5, batch 128, 250 epochs.

Data: TFDS `imagenet2012`, which TFDS cannot download: the ILSVRC2012 archives (ILSVRC2012_img_train.tar and
ILSVRC2012_img_val.tar) must be fetched by hand from image-net.org into TFDS's manual_dir and prepared with
`tfds build imagenet2012 --manual_dir=DIR --file_format=array_record`. jnas.data has no ImageNet input
pipeline yet (decoding, RandomResizedCrop(224), ColorJitter, and resize-256 / centre-crop-224 evaluation), so
this config fails at validation with data.source other than `synthetic`; the `quick` variant trains a tiny
NetworkImageNet on synthetic 224x224 images to check the rest of the path.

The genotype is `config.genotype` (default DARTS_V2; DrNAS_imagenet and PC_DARTS_image were searched on
ImageNet). Variants: `quick`.
"""

import ml_collections

from configs import train_common


def quick(c: ml_collections.ConfigDict) -> None:
    train_common.quick(c)
    c.data.source = "synthetic"
    c.model.num_cells = 3  # reductions at cells 1 and 2; the auxiliary head reads cell 2
    # The ImageNet auxiliary head needs the 7x7 map of a 224x224 image (stem /8, two reductions /4).
    c.data.image_size = 224


VARIANTS = {"quick": quick}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = train_common.train_config()
    c.space = "darts"
    c.genotype = "DARTS_V2"
    c.num_epochs = 250
    c.batch_size = 128
    c.data.name = "imagenet2012"
    c.data.source = "tfds"
    c.data.normalization = "imagenet"
    c.data.image_size = 224
    # RandomResizedCrop and ColorJitter belong to the (missing) ImageNet pipeline; the on-device part is the
    # flip, with no pad-and-crop and no cutout.
    c.augment.crop_padding = 0
    c.augment.cutout_length = 0
    c.model.network = "darts_imagenet"
    c.model.init_channels = 48
    c.model.num_cells = 14
    c.model.auxiliary = True
    c.model.auxiliary_weight = 0.4
    c.model.drop_path_rate = 0.0
    c.label_smoothing = 0.1
    c.optimizer.lr = 0.1
    c.optimizer.schedule = "exponential"
    c.optimizer.decay_rate = 0.97
    c.optimizer.epoch_offset = 1
    c.optimizer.weight_decay = 3e-5
    c.optimizer.grad_clip = 5.0
    return train_common.apply_variants(c, arg, VARIANTS)
