"""PC-DARTS searching directly on ImageNet (yuhuixu1993/PC-DARTS train_search_imagenet.py and
model_search_imagenet.py; methods.md §2.4).

Data: fixed per-class subsets of the ImageNet training set, 10% of each class's images for the weights and
a disjoint 2.5% for the architecture (the reference pre-samples them into folders once; here
`jnas.data.imagenet.per_class_subsets` draws them from `data.subset_seed`, the same on every run, or
`data.presampled=True` reads such folders). Both subsets get RandomResizedCrop(224) (host) and a horizontal
flip (device), no colour jitter; torchvision's ImageNet normalisation. Decoding and cropping run on the host
(data.pipeline="host", grain worker processes: set data.workers to about the host's cores).

Network: 8 cells, C=16, the ImageNet stem (stem0: two stride-2 3x3 convs 3 -> 24 -> 48, stem1: one more,
224 -> 28; the first cell's s0 comes from a "reduction"), K=2 partial channels, edge normalisation β.
Batch 1024; SGD lr 0.5 cosine to 0 over 50 epochs (stepped at the start of each epoch, as quark0/darts),
momentum 0.9, weight decay 3e-4, clip 5, and a 5-epoch linear warm-up because the batch exceeds 256: epoch e
< 5 trains with lr(e + 1) * (e + 1) / 5 (optimizer.warmup_epochs, warmup_mode="scale_schedule"). Adam lr
6e-3, betas (0.5, 0.999), weight decay 1e-3, the architecture gradient clipped at norm 5; the architecture
waits 35 epochs (--begin 35). First order. Seed 2 (the script's default).

The weights' warm-up is `jnas.optim.with_linear_warmup`; `jnas.search.search_data` reads the subsets through
`jnas.data.pipeline.HostSplit`. Variants: `quick` (synthetic 32x32 images, a 3-cell network; about 2.5
minutes on a 2-core CPU, mostly compiling).
"""

import ml_collections

from configs import common


def imagenet_data(c: ml_collections.ConfigDict) -> None:
    """The ImageNet search data keys (jnas/data/imagenet.py documents each)."""
    c.data.name = "imagenet2012"
    c.data.source = "auto"  # prepared TFDS imagenet2012 under data.dir / TFDS_DATA_DIR, else a folder
    c.data.dir = ""
    c.data.pipeline = "host"
    c.data.workers = 16
    c.data.normalization = "imagenet"
    c.data.image_size = 224
    c.data.num_classes = 1000
    c.data.weight_fraction = 0.1
    c.data.arch_fraction = 0.025
    c.data.subset_seed = 0
    c.data.presampled = False
    c.data.crop_scale = (0.08, 1.0)
    c.data.crop_ratio = (3.0 / 4.0, 4.0 / 3.0)
    c.data.color_jitter = (0.0, 0.0, 0.0, 0.0)  # the search scripts use none
    c.data.label_cache_dir = ""
    c.data.synthetic_classes = 1000


def quick_imagenet_data(c: ml_collections.ConfigDict) -> None:
    """Synthetic images for a smoke test: 64 per split over 4 classes, half of each class per subset."""
    c.data.source = "synthetic"
    c.data.workers = 0
    # The smallest side the ImageNet stem (/8) and two reductions (FactorizedReduce needs even sides) allow.
    c.data.image_size = 32
    c.data.synthetic_size = 64
    c.data.synthetic_classes = 4
    c.data.weight_fraction = 0.5
    c.data.arch_fraction = 0.5


def quick(c: ml_collections.ConfigDict) -> None:
    common.quick(c)
    quick_imagenet_data(c)
    c.model.num_cells = 3
    c.space_options.num_nodes = 2
    c.arch_warmup_epochs = 1  # the second (last) epoch updates the architecture
    c.optimizer.warmup_epochs = 2


VARIANTS = {"quick": quick}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = common.base_config()
    c.method = "pcdarts"
    c.space = "darts"
    c.seed = 2
    c.num_epochs = 50
    c.arch_warmup_epochs = 35
    c.batch_size = 1024
    c.update_order = "arch_first"
    imagenet_data(c)
    c.model.init_channels = 16
    c.model.num_cells = 8
    c.model.stem = "imagenet"
    c.model.partial_channels = 2
    c.optimizer.lr = 0.5
    c.optimizer.min_lr = 0.0
    c.optimizer.weight_decay = 3e-4
    c.optimizer.epoch_offset = 1
    # Linear warm-up (batch > 256): "scale_schedule" multiplies the scheduled lr by (e + 1) / warmup_epochs
    # (PC-DARTS); "scale_base" uses optimizer.lr * (e + 1) / warmup_epochs (DrNAS).
    c.optimizer.warmup_epochs = 5
    c.optimizer.warmup_mode = "scale_schedule"
    c.arch_optimizer.lr = 6e-3
    c.arch_optimizer.weight_decay = 1e-3
    c.arch_optimizer.grad_clip = 5.0
    return common.apply_variants(c, arg, VARIANTS)
