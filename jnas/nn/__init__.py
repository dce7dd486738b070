"""Flax modules of jnas: candidate ops, supernets (mixing weights as inputs) and discrete networks."""

from jnas.nn.networks import (
    NB201_EDGES,
    DartsNetworkCIFAR,
    DartsNetworkImageNet,
    NB201Network,
    convert_cell_layout,
    count_params,
    unstack_cells,
)
from jnas.nn.ops import OP_NAMES, make_op
from jnas.nn.supernet import DartsSupernet, MixedOp, NB201Supernet, build_supernet

__all__ = [
    "NB201_EDGES",
    "OP_NAMES",
    "DartsNetworkCIFAR",
    "DartsNetworkImageNet",
    "DartsSupernet",
    "MixedOp",
    "NB201Network",
    "NB201Supernet",
    "build_supernet",
    "convert_cell_layout",
    "count_params",
    "make_op",
    "unstack_cells",
]
