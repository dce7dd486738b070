"""Train a DARTS-space genotype on ImageNet in the mobile setting (DARTS recipe, methods.md §0.5).

NetworkImageNet of 14 cells with C=48 (three stride-2 stem convs, 224 -> 28), auxiliary head (weight 0.4, no
BN after its 768-channel conv), no drop path; SGD lr 0.1, momentum 0.9, weight decay 3e-5, the lr multiplied
by 0.97 every epoch (epoch e uses 0.1 * 0.97^(e + 1), as quark0/darts steps StepLR at the start of each
epoch), label smoothing 0.1 on the training loss, gradient clipping at 5, batch 128, 250 epochs.

Data: `imagenet2012`, read on the host by `jnas.data.imagenet.train_readers` (data.pipeline="host", grain worker
processes: set data.workers to about the host's cores): RandomResizedCrop(224) and ColorJitter(0.4, 0.4, 0.4,
0.2) on the host, the flip on the device; the validation set, resized to 256 and centre-cropped to 224, is the
test set. data.source: `tfds` (prepared array_record `imagenet2012`, which needs the manual download of the
ILSVRC2012 archives, see the README), `folder` (train/<wnid>/*.JPEG and val/<wnid>/*.JPEG at data.dir) or `auto`
(either). The `quick` variant trains a tiny NetworkImageNet on synthetic 224x224 images through the same host
pipeline.

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
    c.data.synthetic_size = 64
    c.data.synthetic_classes = 10
    c.data.workers = 0


VARIANTS = {"quick": quick}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = train_common.train_config()
    c.space = "darts"
    c.genotype = "DARTS_V2"
    c.num_epochs = 250
    c.batch_size = 128
    c.data.name = "imagenet2012"
    c.data.source = "auto"
    c.data.dir = ""
    c.data.pipeline = "host"
    c.data.workers = 16
    c.data.normalization = "imagenet"
    c.data.image_size = 224
    c.data.num_classes = 1000
    c.data.crop_scale = (0.08, 1.0)
    c.data.crop_ratio = (3.0 / 4.0, 4.0 / 3.0)
    c.data.color_jitter = (0.4, 0.4, 0.4, 0.2)
    c.data.label_cache_dir = ""
    c.data.synthetic_classes = 1000
    # RandomResizedCrop and ColorJitter run on the host; on the device only the flip, with no pad-and-crop
    # and no cutout.
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
