"""Defaults shared by every config, and the parse of the ":variant" part of `--config=FILE:ARG`.

A config file defines `get_config(arg=None)`; `arg` is what follows the colon, a comma-separated list
of variant names (`configs/darts_cifar10.py:quick,second_order`). Each config module lists its variants
in a dict of functions, so an unknown name is an error that lists the known ones.
"""

from __future__ import annotations

from typing import Callable, Mapping

import ml_collections

Variant = Callable[[ml_collections.ConfigDict], None]


def base_config() -> ml_collections.ConfigDict:
    """Every key a search config has. Values are the DARTS CIFAR-10 search defaults (methods.md §1.5)."""
    c = ml_collections.ConfigDict()
    c.task = "search"
    c.method = "darts"
    c.space = "darts"
    c.seed = 2
    c.num_epochs = 50
    c.batch_size = 64  # global, split over all devices
    # "arch_first": quark0/darts (architecture step, then weights). "weights_first": AutoDL's NB201 code.
    c.update_order = "arch_first"
    # "bilevel": weights on the training split, α on the validation split. "single_level": both from one
    # backward pass on the same batch of the whole training set (methods.md §6).
    c.optimization = "bilevel"
    # Single level only: True puts α into the weights' SGD (same lr, momentum, decay, clipping).
    c.single_level = ml_collections.ConfigDict({"joint_sgd": False})
    # The method's own hyperparameters; each method documents its keys and defaults (jnas/methods/).
    c.method_options = ml_collections.ConfigDict()
    c.arch_warmup_epochs = 0  # epochs with no architecture update, at the start of each stage
    # Steps per epoch are len(weight split) // batch_size; a positive value caps them (quick runs).
    c.max_steps_per_epoch = 0
    c.log_every_steps = 50  # progress line and host sync at most this often
    c.eval_batches = 0  # batches of the architecture split scored after each epoch; 0 = all of it

    # Checkpoints (orbax, <workdir>/checkpoints) of the whole search state, written in the background:
    # every `checkpoint_every_steps` global steps (0: none inside an epoch) and at the end of every epoch;
    # the `keep_checkpoints` newest are kept. A SIGTERM or SIGINT saves the current step and exits with
    # status 75 (jnas.loop.EXIT_PREEMPTED); starting again on the same workdir resumes, bit for bit.
    c.checkpoint_every_steps = 0
    c.keep_checkpoints = 3
    # A workdir that already holds a run (its config.json, checkpoints):
    #   "auto":  resume from its newest readable checkpoint (start afresh when it has none), but refuse
    #            when its config.json differs from this config in a key that changes the search (the
    #            error lists them); run-control keys may differ: resume, nan_policy, log_every_steps,
    #            checkpoint_every_steps, keep_checkpoints, data.dir, benchmark.nb201_table.
    #   "force": the same, but a differing config.json is accepted and overwritten (a deliberate change,
    #            e.g. a lower learning rate after a numerical fault; the arrays must still fit).
    #   "never": refuse a workdir that holds checkpoints: a guaranteed fresh start.
    c.resume = "auto"
    # A non-finite loss, gradient norm or architecture parameter:
    #   "stop":      end the run with an error naming the quantity, step and epoch; checkpoints written
    #                before the fault are kept (the faulty state is never saved).
    #   "skip_step": discard the update of a step whose loss, gradient norms or new state hold a
    #                non-finite value, inside the jitted step (the step counter still advances, so the
    #                schedule and data order go on); count it in the epoch's `skipped_steps` metric.
    c.nan_policy = "stop"

    c.hypergradient = ml_collections.ConfigDict()
    # first_order | second_order (DARTS-V2, methods.md §1.4) | unrolled | implicit (docs/hypergradients.md)
    c.hypergradient.kind = "first_order"
    c.hypergradient.hvp = "finite_difference"  # second_order: or "exact" (forward-over-reverse)
    c.hypergradient.fd_radius = 0.01  # second_order: ε = fd_radius / ‖v‖
    c.hypergradient.unrolled_steps = 1  # unrolled: inner steps of the real weight optimizer
    c.hypergradient.remat = False  # unrolled: recompute each inner step in the backward pass
    c.hypergradient.solver = "cg"  # implicit: cg | neumann
    c.hypergradient.num_iters = 5  # implicit: CG iterations or Neumann terms
    c.hypergradient.damping = 0.0  # implicit: solves (H + damping·I) x = ∇_w L_val
    c.hypergradient.neumann_lr = 0.01  # implicit, neumann: the series' step η

    # Options of the search space (`jnas.spaces.get(space, **space_options)`): the DARTS space takes
    # num_nodes (intermediate nodes per cell, 4); NB201 takes none.
    c.space_options = ml_collections.ConfigDict({"num_nodes": 4})

    # A NAS-Bench-201 ground-truth table (the format of nb201_200ep.csv.gz). When set, NB201 searches
    # report the benchmark accuracies of each epoch's genotype; "" skips the lookup.
    c.benchmark = ml_collections.ConfigDict({"nb201_table": ""})

    c.data = ml_collections.ConfigDict()
    c.data.name = "cifar10"
    c.data.source = "auto"  # auto | tfds | folder | synthetic
    c.data.dir = ""  # folder holding cifar-10-batches-py (or TFDS data_dir); "" = the usual places
    # "train_portion": the first train_portion of the training set trains the weights, the rest α (DARTS,
    # DrNAS). "nb201_xvalid": weights on the whole training set, α on the x-valid half of the test set
    # (AutoDL on CIFAR-100 / ImageNet16-120), read from xvalid_split_file (NB201's *-test-split.txt).
    c.data.split = "train_portion"
    c.data.xvalid_split_file = ""
    c.data.train_portion = 0.5  # first half trains the weights, the rest the architecture
    c.data.normalization = "darts"  # darts | nb201
    c.data.synthetic_size = 512  # images per split (synthetic source only)
    c.data.image_size = 32  # synthetic source only
    # How batches reach the devices (jnas/data/pipeline.py); both give the same batches:
    #   "device": every split held whole on every device, batches gathered there (CIFAR-sized data).
    #   "host":   each process reads only the examples of its own devices on the host and the global
    #             batch is assembled from every process's part (data that does not fit on a device).
    c.data.pipeline = "device"
    c.data.workers = 0  # "host" only: grain worker processes reading examples; 0 reads in the main process

    c.model = ml_collections.ConfigDict()
    c.model.init_channels = 16
    c.model.num_cells = 8
    c.model.stem_multiplier = 3
    c.model.pool_bn = True
    c.model.partial_channels = 1  # K of PC-DARTS / DrNAS: ops see C/K channels
    c.model.scan_cells = False  # nn.scan over identical cells: faster compile, but slower backward on CPU
    c.model.remat = False
    # Each op run once for all edges leaving a node (jnas.nn.supernet.fused_mixed_ops): the same function
    # with fewer, larger kernels (NB201 cell: 6 convolutions instead of 12; DARTS cell: 60 instead of 168).
    c.model.fuse_edges = False
    c.model.dtype = "float32"

    c.optimizer = ml_collections.ConfigDict()  # weights: PyTorch SGD semantics (methods.md §0.1)
    c.optimizer.lr = 0.025
    c.optimizer.min_lr = 0.001
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = False
    c.optimizer.weight_decay = 3e-4
    c.optimizer.grad_clip = 5.0
    c.optimizer.epoch_offset = 1  # 1: epoch e uses lr(e+1) as quark0/darts; 0: DrNAS / AutoDL

    c.arch_optimizer = ml_collections.ConfigDict()  # architecture: PyTorch Adam semantics
    c.arch_optimizer.lr = 3e-4
    c.arch_optimizer.b1 = 0.5
    c.arch_optimizer.b2 = 0.999
    c.arch_optimizer.eps = 1e-8
    c.arch_optimizer.weight_decay = 1e-3
    c.arch_optimizer.grad_clip = 0.0  # 0 = no clipping (all CIFAR references)
    return c


def quick(c: ml_collections.ConfigDict) -> None:
    """A tiny network for a few steps: a smoke test that finishes in about a minute on a laptop CPU."""
    c.num_epochs = 2
    c.batch_size = 8
    c.max_steps_per_epoch = 4
    c.log_every_steps = 2
    c.eval_batches = 2
    c.model.init_channels = 4
    c.data.synthetic_size = 64
    c.data.image_size = 8


def second_order(c: ml_collections.ConfigDict) -> None:
    """DARTS-V2: the unrolled hypergradient with the reference finite-difference Hessian-vector product."""
    c.hypergradient.kind = "second_order"


def apply_variants(c: ml_collections.ConfigDict, arg: str | None,
                   variants: Mapping[str, Variant]) -> ml_collections.ConfigDict:
    """Apply the comma-separated variants named in `arg`, in order."""
    for name in filter(None, (arg or "").split(",")):
        name = name.strip()
        if name not in variants:
            raise ValueError(
                f"unknown config variant {name!r}; this config has: {', '.join(sorted(variants))}")
        variants[name](c)
    return c
