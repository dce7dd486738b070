"""Defaults shared by the configs that train a derived architecture from scratch (`task = "train"`).

`train_config()` holds every key such a config has, with the DARTS CIFAR-10 evaluation recipe as the values
(methods.md §0.4; quark0/darts cnn/train.py). The variants of `--config=FILE:ARG` work as in
`configs/common.py`.
"""

from __future__ import annotations

import ml_collections

from configs import common


def train_config() -> ml_collections.ConfigDict:
    """Every key a training config has; values: DARTS_V2 on CIFAR-10 with the DARTS evaluation recipe."""
    c = ml_collections.ConfigDict()
    c.task = "train"
    c.space = "darts"  # darts | nb201: the space of the genotype
    # A search workdir (its genotype.json), a genotype string, or a name of jnas.genotypes.PUBLISHED.
    c.genotype = "DARTS_V2"
    c.seed = 0
    c.num_epochs = 600
    c.batch_size = 96  # global, split over all devices
    # Steps per epoch are len(train set) // batch_size (the incomplete last batch is dropped; every epoch
    # draws a fresh permutation). A positive value caps them (quick runs).
    c.max_steps_per_epoch = 0
    c.log_every_steps = 50  # progress line and host sync at most this often
    c.eval_batches = 0  # test batches scored after each epoch; 0 = the whole test set

    # Orbax checkpoints of the training state in <workdir>/checkpoints, written in the background: after
    # every `checkpoint_every_epochs` epochs and the last (0: none at epoch ends) and every
    # `checkpoint_every_steps` global steps (0: none inside an epoch); the `keep_checkpoints` newest are
    # kept. A run started again on the same workdir continues from the newest one, bit for bit. SIGTERM or
    # SIGINT saves the current step and exits with status 75 (a second signal exits at once). `resume` has
    # the meaning of configs/common.py (the launcher checks the workdir's config.json with it).
    c.checkpoint_every_epochs = 1
    c.checkpoint_every_steps = 0
    c.keep_checkpoints = 2
    c.resume = "auto"
    # A non-finite loss, gradient norm, parameter, BatchNorm statistic or optimizer value: "stop" ends the
    # run with an error naming the quantity, step and epoch (the checkpoints from before it are kept, the
    # faulty state is never saved); "skip_step" discards that step's update inside the jitted step and
    # counts it in the epoch's `skipped_steps` (configs/common.py).
    c.nan_policy = "stop"

    c.data = ml_collections.ConfigDict()
    c.data.name = "cifar10"  # cifar10 | cifar100 | imagenet2012 (ImageNet: synthetic source only, see below)
    c.data.source = "auto"  # auto | tfds | folder | synthetic
    c.data.dir = ""
    c.data.normalization = "darts"  # darts | nb201 (CIFAR); imagenet (ImageNet)
    c.data.synthetic_size = 512  # images per split (synthetic source only)
    c.data.image_size = 32  # synthetic source only

    # On-device training augmentation: RandomCrop(pad) + flip + normalisation, then Cutout.
    c.augment = ml_collections.ConfigDict()
    c.augment.crop_padding = 4  # 0: no random crop
    c.augment.flip = True
    c.augment.cutout_length = 16  # 0: no cutout; applied after normalisation (DARTS utils.py)

    c.model = ml_collections.ConfigDict()
    # darts_cifar (NetworkCIFAR) | darts_imagenet (NetworkImageNet) | nb201 (NAS-Bench-201 TinyNetwork)
    c.model.network = "darts_cifar"
    c.model.init_channels = 36
    c.model.num_cells = 20  # DARTS: all cells (`layers`); NB201: cells per stage (N)
    c.model.stem_multiplier = 3  # darts_cifar only
    c.model.auxiliary = True  # DARTS auxiliary head after cell 2 * num_cells // 3 (training only)
    c.model.auxiliary_weight = 0.4
    # Drop-path probability of the last epoch: epoch e (0-based) uses drop_path_rate * e / num_epochs.
    c.model.drop_path_rate = 0.2
    c.model.scan_cells = False
    c.model.remat = False
    c.model.dtype = "float32"

    c.label_smoothing = 0.0  # of the training loss (main and auxiliary); the test loss is plain CE

    c.optimizer = ml_collections.ConfigDict()  # PyTorch SGD semantics (methods.md §0.1)
    c.optimizer.lr = 0.025
    c.optimizer.schedule = "cosine"  # cosine (to min_lr over num_epochs) | exponential (lr * decay_rate^t)
    c.optimizer.min_lr = 0.0
    c.optimizer.decay_rate = 0.97  # exponential only
    # The schedule is stepped once per epoch; epoch e uses t = e + epoch_offset. 1: quark0/darts and
    # PC-DARTS (scheduler.step() at the start of each epoch, PyTorch 0.3); 0: AutoDL / NB201.
    c.optimizer.epoch_offset = 1
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = False
    c.optimizer.weight_decay = 3e-4
    c.optimizer.grad_clip = 5.0  # 0: no clipping

    # NAS-Bench-201 table (nb201_200ep.csv.gz); when set, an NB201 run's result.json gets the benchmark's
    # accuracies of its genotype for comparison.
    c.benchmark = ml_collections.ConfigDict({"nb201_table": ""})
    return c


def quick(c: ml_collections.ConfigDict) -> None:
    """A tiny network for a few steps on synthetic data: a smoke test of about a minute on a laptop CPU."""
    c.num_epochs = 2
    c.batch_size = 8
    c.max_steps_per_epoch = 4
    c.log_every_steps = 2
    c.eval_batches = 2
    c.data.source = "synthetic"
    c.data.synthetic_size = 64
    c.model.init_channels = 4


apply_variants = common.apply_variants
