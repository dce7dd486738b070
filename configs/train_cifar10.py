"""Train a DARTS-space genotype from scratch on CIFAR-10 with the DARTS evaluation recipe (methods.md §0.4).

NetworkCIFAR of 20 cells with C=36 (stem 3C, reductions at cells 6 and 13), auxiliary head after cell 13 with
weight 0.4, drop path ramped linearly from 0 to 0.2 over the epochs, RandomCrop(32, 4) + flip + normalisation,
then Cutout(16); SGD lr 0.025 (momentum 0.9, weight decay 3e-4) with a per-epoch cosine to 0 over 600 epochs,
stepped at the start of each epoch as quark0/darts does, batch 96, gradient clipping at 5.

The genotype is `config.genotype` (default DARTS_V2): a search workdir, a genotype string or a published name
(`jnas.genotypes.names("darts")`). Variants: `pcdarts` and `drnas` (drop path 0.3, as their train.py),
`quick` (a 3-cell C=4 network, a few steps on synthetic data). Example:
`python launch.py --config=configs/train_cifar10.py --config.genotype=PC_DARTS_cifar --workdir=W`.
"""

import ml_collections

from configs import train_common


def quick(c: ml_collections.ConfigDict) -> None:
    train_common.quick(c)
    c.model.num_cells = 3  # reductions at cells 1 and 2; the auxiliary head reads cell 2
    # The CIFAR auxiliary head pools 5x5 with stride 3 and then convolves 2x2, so it needs the 8x8 map that a
    # 32x32 image has after the two reductions.
    c.data.image_size = 32


def pcdarts(c: ml_collections.ConfigDict) -> None:
    """PC-DARTS train.py: the DARTS recipe with drop path 0.3 (methods.md §2.6)."""
    c.model.drop_path_rate = 0.3


def drnas(c: ml_collections.ConfigDict) -> None:
    """DrNAS DARTS-space/train.py: drop path 0.3, batch 64 (methods.md §0.4)."""
    c.model.drop_path_rate = 0.3
    c.batch_size = 64


VARIANTS = {"quick": quick, "pcdarts": pcdarts, "drnas": drnas}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = train_common.train_config()
    c.space = "darts"
    c.genotype = "DARTS_V2"
    c.data.name = "cifar10"
    c.data.normalization = "darts"
    c.model.network = "darts_cifar"
    return train_common.apply_variants(c, arg, VARIANTS)
