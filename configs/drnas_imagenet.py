"""DrNAS searching directly on ImageNet, with progressive learning (xiangning-chen/DrNAS
DARTS-space/train_search_imagenet.py and model_search_imagenet.py; methods.md §4.5-4.6).

Data as `configs/pcdarts_imagenet.py`: 10% / 2.5% per-class subsets of the training set for the weights /
the architecture (the script's `--data` folder holds such pre-sampled train/ and val/ folders, shuffled
each epoch), RandomResizedCrop(224) + flip for both, no colour jitter, host pipeline.

Network: the evaluation-size one, 14 cells and C=48, with the ImageNet stem (three stride-2 convs of
3C = 144 channels, 224 -> 28), the DARTS space without `none` (7 ops), pools followed by BN(affine=False).
Two stages of 25 epochs: K=6 with all 7 ops, then K=3 with the 4 ops of largest α per edge; the
architecture waits 10 epochs at the start of each stage (--begin 10). One Dirichlet sample (β = ELU(α) + 1)
per forward pass. Batch 512; SGD lr 0.5 cosine to 0 over all 50 epochs (stepped at the end of each epoch),
momentum 0.9, weight decay 3e-4, clip 5; warm-up: epoch e < 5 trains with 0.5 * (e + 1) / 5 (the base lr,
not the scheduled one: warmup_mode="scale_base"). Adam lr 6e-3, betas (0.5, 0.999), the L2 anchor 1e-3 as
its coupled weight decay (the script's --arch_weight_decay, equal to DrNAS's reg_scale), the architecture
gradient clipped at norm 5. Seed 0.

Not reproduced exactly: the reference's PyTorch >= 1.4 CosineAnnealingLR is chainable, so after the warm-up
overwrote the lr the later epochs follow lr(t) * 2 / (1 + cos(4π/50)), about 1.6% above the closed form
that jnas uses.

The weights' warm-up is `jnas.optim.with_linear_warmup`; `jnas.search.search_data` reads the subsets through
`jnas.data.pipeline.HostSplit`. Variants: `quick` (synthetic 32x32 images, a 3-cell network, two 2-epoch stages).
"""

import ml_collections

from configs import common
from configs.drnas_cifar10 import OPS_WITHOUT_NONE, drnas_options
from configs.pcdarts_imagenet import imagenet_data, quick_imagenet_data


def quick(c: ml_collections.ConfigDict) -> None:
    common.quick(c)
    quick_imagenet_data(c)
    c.num_epochs = 4
    c.max_steps_per_epoch = 2
    c.model.init_channels = 8
    c.model.num_cells = 3
    c.space_options.num_nodes = 2
    c.arch_warmup_epochs = 1
    c.method_options.stage_epochs = (2, 2)
    c.method_options.stage_partial_channels = (4, 2)
    c.method_options.stage_num_keep = (0, 4)
    c.model.partial_channels = 4
    c.optimizer.warmup_epochs = 2


VARIANTS = {"quick": quick}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = common.base_config()
    c.method = "drnas"
    c.space = "darts"
    c.space_options.op_names = OPS_WITHOUT_NONE
    c.method_options = drnas_options(True, (25, 25), (6, 3), (0, 4))
    c.seed = 0
    c.num_epochs = 50
    c.arch_warmup_epochs = 10
    c.batch_size = 512
    c.update_order = "arch_first"
    imagenet_data(c)
    c.model.init_channels = 48
    c.model.num_cells = 14
    c.model.stem = "imagenet"
    c.model.partial_channels = 6  # the first stage's K; the stages set it after that
    c.optimizer.lr = 0.5
    c.optimizer.min_lr = 0.0
    c.optimizer.weight_decay = 3e-4
    c.optimizer.epoch_offset = 0
    c.optimizer.warmup_epochs = 5
    c.optimizer.warmup_mode = "scale_base"
    c.arch_optimizer.lr = 6e-3
    c.arch_optimizer.weight_decay = 0.0  # the anchor is method_options.reg_scale (1e-3)
    c.arch_optimizer.grad_clip = 5.0
    return common.apply_variants(c, arg, VARIANTS)
