"""Primitive operations of the DARTS and NAS-Bench-201 cell search spaces.

Channels-last (NHWC) Flax linen modules that reproduce the reference PyTorch ops
(quark0/darts `cnn/operations.py`, AutoDL `xautodl/models/cell_operations.py`) parameter for parameter:

* conv and linear kernels use PyTorch's default `kaiming_uniform(a=sqrt(5))`, i.e. U(+-1/sqrt(fan_in)),
  which is `variance_scaling(1/3, "fan_in", "uniform")`; linear biases are U(+-1/sqrt(fan_in)) too;
* convolutions are bias-free (the references build every conv of these ops with `bias=False`);
* BatchNorm has PyTorch's momentum 0.1 (Flax `momentum=0.9`) and epsilon 1e-5; `affine=False` drops both
  scale and shift, as the search networks do inside candidate ops.

Every op is called as `op(x, train)`, so cells can treat all candidates alike. `make_op` is the single factory
for the op names of both spaces.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
Array = jax.Array

conv_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def uniform_fan_in_init(fan_in: int) -> Callable[..., Array]:
    """U(+-1/sqrt(fan_in)), PyTorch's `nn.Linear.bias` init (Flax does not pass fan_in to bias_init)."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def conv2d(
    features: int,
    kernel_size: int | tuple[int, int],
    *,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int = 1,
    groups: int = 1,
    dtype: Dtype = jnp.float32,
    name: str | None = None,
) -> nn.Conv:
    """A bias-free `nn.Conv` with PyTorch's explicit symmetric padding and default init."""
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    return nn.Conv(
        features,
        (kh, kw),
        strides=(sh, sw),
        padding=((ph, ph), (pw, pw)),
        kernel_dilation=(dilation, dilation),
        feature_group_count=groups,
        use_bias=False,
        kernel_init=conv_kernel_init,
        dtype=dtype,
        name=name,
    )


def linear(features: int, fan_in: int, *, dtype: Dtype = jnp.float32, name: str | None = None) -> nn.Dense:
    """`nn.Dense` initialised like PyTorch's `nn.Linear(fan_in, features)` (kernel and bias)."""
    return nn.Dense(
        features,
        kernel_init=conv_kernel_init,
        bias_init=uniform_fan_in_init(fan_in),
        dtype=dtype,
        name=name,
    )


def batch_norm(
    train: bool, affine: bool, *, dtype: Dtype = jnp.float32, name: str | None = None
) -> nn.BatchNorm:
    """PyTorch-default BatchNorm: batch statistics when training, running statistics otherwise.

    Two-pass variance, as PyTorch computes it: Flax's default E[x²] − E[x]² cancels catastrophically
    when the mean is large, which made gradients depend on the reduction order (1 vs 4 devices).
    """
    return nn.BatchNorm(
        use_running_average=not train,
        use_fast_variance=False,
        momentum=0.9,
        epsilon=1e-5,
        use_scale=affine,
        use_bias=affine,
        dtype=dtype,
        name=name,
    )


def channel_shuffle(x: Array, groups: int) -> Array:
    """PyTorch's NCHW channel shuffle in NHWC: new channel j*groups + g holds old channel g*(C/groups) + j."""
    *lead, channels = x.shape
    x = x.reshape(*lead, groups, channels // groups)
    return jnp.swapaxes(x, -1, -2).reshape(*lead, channels)


def drop_path(x: Array, rate: float | Array, rng: Array) -> Array:
    """Zeroes whole examples of an op output with probability `rate`, rescales the rest (DARTS utils.py)."""
    keep = 1.0 - rate
    mask = jax.random.bernoulli(rng, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return x / jnp.asarray(keep, x.dtype) * mask.astype(x.dtype)


class Identity(nn.Module):
    """`skip_connect` at stride 1."""

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        del train
        return x


class Zero(nn.Module):
    """The `none` op: zeros, subsampled like the output of a stride-`stride` op."""

    stride: int = 1

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        del train
        # Multiplying (rather than jnp.zeros_like) keeps the reference's NaN propagation.
        return x[:, :: self.stride, :: self.stride, :] * 0.0


class ReLUConvBN(nn.Module):
    """ReLU -> conv (bias-free) -> BN. DARTS preprocessing, NB201 `nor_conv_kxk` and ResNet-block convs."""

    features: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    affine: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        x = nn.relu(x)
        x = conv2d(
            self.features,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            dtype=self.dtype,
            name="conv",
        )(x)
        return batch_norm(train, self.affine, dtype=self.dtype, name="bn")(x)


class DilConv(nn.Module):
    """ReLU -> depthwise dilated kxk (stride s) -> pointwise 1x1 -> BN (`dil_conv_kxk`)."""

    features: int
    kernel_size: int
    stride: int
    padding: int
    dilation: int
    affine: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        channels = x.shape[-1]
        x = nn.relu(x)
        x = conv2d(
            channels,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=channels,
            dtype=self.dtype,
            name="depthwise",
        )(x)
        x = conv2d(self.features, 1, dtype=self.dtype, name="pointwise")(x)
        return batch_norm(train, self.affine, dtype=self.dtype, name="bn")(x)


class SepConv(nn.Module):
    """The "double" separable conv of DARTS (`sep_conv_kxk`): two ReLU-depthwise-pointwise-BN blocks.

    Only the first depthwise conv has the stride; the first block keeps the input channel count.
    """

    features: int
    kernel_size: int
    stride: int
    padding: int
    affine: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        channels = x.shape[-1]
        x = nn.relu(x)
        x = conv2d(
            channels,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            groups=channels,
            dtype=self.dtype,
            name="depthwise_1",
        )(x)
        x = conv2d(channels, 1, dtype=self.dtype, name="pointwise_1")(x)
        x = batch_norm(train, self.affine, dtype=self.dtype, name="bn_1")(x)
        x = nn.relu(x)
        x = conv2d(
            channels,
            self.kernel_size,
            padding=self.padding,
            groups=channels,
            dtype=self.dtype,
            name="depthwise_2",
        )(x)
        x = conv2d(self.features, 1, dtype=self.dtype, name="pointwise_2")(x)
        return batch_norm(train, self.affine, dtype=self.dtype, name="bn_2")(x)


class Conv7x1Conv1x7(nn.Module):
    """ReLU -> conv 1x7 (stride (1, s)) -> conv 7x1 (stride (s, 1)) -> BN (`conv_7x1_1x7` of quark0/darts)."""

    features: int
    stride: int
    affine: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        x = nn.relu(x)
        x = conv2d(
            self.features, (1, 7), stride=(1, self.stride), padding=(0, 3), dtype=self.dtype, name="conv_1x7"
        )(x)
        x = conv2d(
            self.features, (7, 1), stride=(self.stride, 1), padding=(3, 0), dtype=self.dtype, name="conv_7x1"
        )(x)
        return batch_norm(train, self.affine, dtype=self.dtype, name="bn")(x)


class FactorizedReduce(nn.Module):
    """ReLU, two 1x1 stride-2 convs of features/2 each (the second on the input shifted by one pixel), concat,
    BN.

    quark0/darts feeds `x[:, 1:, 1:]` to the second conv, which only lines up for even sizes. For odd sizes
    the input is first zero-padded by one row/column at the bottom/right, as AutoDL does; for even sizes that
    padding provably changes nothing (the stride-2 conv never reads the padded row/column), so it is skipped
    there.
    """

    features: int
    affine: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        if self.features % 2:
            raise ValueError(
                f"FactorizedReduce needs an even number of output channels, got {self.features}."
            )
        x = nn.relu(x)
        height, width = x.shape[1:3]
        shifted = x
        if height % 2 or width % 2:
            shifted = jnp.pad(x, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)))
        shifted = shifted[:, 1:, 1:, :]
        half = self.features // 2
        out = jnp.concatenate(
            [
                conv2d(half, 1, stride=2, dtype=self.dtype, name="conv_1")(x),
                conv2d(half, 1, stride=2, dtype=self.dtype, name="conv_2")(shifted),
            ],
            axis=-1,
        )
        return batch_norm(train, self.affine, dtype=self.dtype, name="bn")(out)


class Pool(nn.Module):
    """3x3 max or average pooling (padding 1); average pooling excludes the padding
    (`count_include_pad=False`).

    With `bn=True` a BN(affine=False) follows, as in the DARTS-space search networks.
    """

    kind: str
    stride: int = 1
    bn: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        window, strides, padding = (3, 3), (self.stride, self.stride), ((1, 1), (1, 1))
        if self.kind == "max":
            out = nn.max_pool(x, window, strides, padding)
        elif self.kind == "avg":
            # The divisor counts valid positions only; flax computes it in float32, so cast back.
            out = nn.avg_pool(x, window, strides, padding, count_include_pad=False).astype(x.dtype)
        else:
            raise ValueError(f"Unknown pooling kind {self.kind!r}; use 'max' or 'avg'.")
        if self.bn:
            out = batch_norm(train, affine=False, dtype=self.dtype, name="bn")(out)
        return out


class ResNetBlock(nn.Module):
    """NB201's ResNet basic block (AutoDL `ResNetBasicblock`), the reduction between stages.

    conv_a = ReLU-conv3x3(stride)-BN, conv_b = ReLU-conv3x3-BN; the shortcut is AvgPool(2, 2) -> conv1x1 (no
    BN, no ReLU) at stride 2, ReLU-conv1x1-BN when only the width changes, identity otherwise.
    """

    features: int
    stride: int = 2
    affine: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        if self.stride not in (1, 2):
            raise ValueError(f"ResNetBlock stride must be 1 or 2, got {self.stride}.")
        out = ReLUConvBN(
            self.features, 3, self.stride, 1, affine=self.affine, dtype=self.dtype, name="conv_a"
        )(x, train)
        out = ReLUConvBN(self.features, 3, 1, 1, affine=self.affine, dtype=self.dtype, name="conv_b")(
            out, train
        )
        if self.stride == 2:
            shortcut = nn.avg_pool(x, (2, 2), (2, 2))
            shortcut = conv2d(self.features, 1, dtype=self.dtype, name="downsample")(shortcut)
        elif x.shape[-1] != self.features:
            shortcut = ReLUConvBN(self.features, 1, affine=self.affine, dtype=self.dtype, name="downsample")(
                x, train
            )
        else:
            shortcut = x
        return shortcut + out


# name -> builder(C, stride, affine, pool_bn, dtype=..., name=...). DARTS names follow quark0/darts OPS,
# NB201 names follow AutoDL OPS (nor_conv_* are bias-free ReLU-conv-BN as in the original benchmark).
_OP_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "none": lambda C, stride, affine, pool_bn, dtype, **kw: Zero(stride, **kw),
    "max_pool_3x3": lambda C, stride, affine, pool_bn, dtype, **kw: Pool("max", stride, pool_bn, dtype, **kw),
    "avg_pool_3x3": lambda C, stride, affine, pool_bn, dtype, **kw: Pool("avg", stride, pool_bn, dtype, **kw),
    "skip_connect": lambda C, stride, affine, pool_bn, dtype, **kw: (
        Identity(**kw) if stride == 1 else FactorizedReduce(C, affine=affine, dtype=dtype, **kw)
    ),
    "sep_conv_3x3": lambda C, stride, affine, pool_bn, dtype, **kw: SepConv(C, 3, stride, 1, affine, dtype, **kw),
    "sep_conv_5x5": lambda C, stride, affine, pool_bn, dtype, **kw: SepConv(C, 5, stride, 2, affine, dtype, **kw),
    "sep_conv_7x7": lambda C, stride, affine, pool_bn, dtype, **kw: SepConv(C, 7, stride, 3, affine, dtype, **kw),
    "dil_conv_3x3": lambda C, stride, affine, pool_bn, dtype, **kw: DilConv(C, 3, stride, 2, 2, affine, dtype, **kw),
    "dil_conv_5x5": lambda C, stride, affine, pool_bn, dtype, **kw: DilConv(C, 5, stride, 4, 2, affine, dtype, **kw),
    "conv_7x1_1x7": lambda C, stride, affine, pool_bn, dtype, **kw: Conv7x1Conv1x7(C, stride, affine, dtype, **kw),
    "nor_conv_1x1": lambda C, stride, affine, pool_bn, dtype, **kw: ReLUConvBN(C, 1, stride, 0, affine=affine,
                                                                               dtype=dtype, **kw),
    "nor_conv_3x3": lambda C, stride, affine, pool_bn, dtype, **kw: ReLUConvBN(C, 3, stride, 1, affine=affine,
                                                                               dtype=dtype, **kw),
}

OP_NAMES: tuple[str, ...] = tuple(_OP_BUILDERS)


def make_op(
    name: str,
    C: int,
    stride: int,
    affine: bool,
    pool_bn: bool,
    *,
    dtype: Dtype = jnp.float32,
    module_name: str | None = None,
    detached: bool = False,
) -> nn.Module:
    """Builds candidate op `name` mapping C channels to C channels at `stride`.

    Args:
      name: an op name of the DARTS or NB201 space (see `OP_NAMES`).
      C: input and output channels.
      stride: 1, or 2 on the input edges of DARTS reduction cells.
      affine: whether the op's BatchNorms have scale and shift (False inside search networks).
      pool_bn: append BN(affine=False) to pooling ops (DARTS-space search networks).
      dtype: activation dtype; parameters stay float32.
      module_name: the Flax submodule name; defaults to the op name, so that networks built with the same op
        names share parameter paths.
      detached: build a top-level module (for `.apply` with given variables) even inside a module's compact
        method, where it would otherwise become a submodule.
    """
    if name not in _OP_BUILDERS:
        raise ValueError(f"Unknown op {name!r}; known ops are {sorted(_OP_BUILDERS)}.")
    if stride not in (1, 2):
        raise ValueError(f"Op stride must be 1 or 2, got {stride}.")
    placement = {"parent": None} if detached else {}
    return _OP_BUILDERS[name](C, stride, affine, pool_bn, dtype, name=module_name or name, **placement)
