"""On-device CIFAR augmentation: random crop with zero padding, horizontal flip, normalisation, cutout.

Runs inside the jitted step on uint8 batches. All randomness is drawn for the whole global batch from one
key, so the result does not depend on how the batch is sharded over devices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

ArrayLike = jax.Array | np.ndarray


def normalize(images_uint8: ArrayLike, mean: ArrayLike, std: ArrayLike) -> jax.Array:
    """uint8 NHWC images -> float32 (x / 255 - mean) / std; mean and std are per channel in [0, 1] units."""
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)
    return (jnp.asarray(images_uint8).astype(jnp.float32) / 255.0 - mean) / std


def augment(rng: jax.Array, images_uint8: ArrayLike, mean: ArrayLike, std: ArrayLike, *,
            pad: int = 4, flip: bool = True) -> jax.Array:
    """RandomCrop(H, padding=pad) + RandomHorizontalFlip + normalisation, each image its own draw.

    As torchvision does on the PIL image, the zero padding is applied to the raw pixels, so padded pixels
    come out as -mean / std after normalisation. Returns float32 NHWC of the input's shape.
    """
    images = jnp.asarray(images_uint8)
    if images.ndim != 4:
        raise ValueError(f"augment expects NHWC images, got shape {images.shape}")
    if pad < 0:
        raise ValueError(f"augment pad={pad} must be >= 0")
    if pad == 0 and not flip:
        return normalize(images, mean, std)
    batch, height, width, channels = images.shape
    crop_key, flip_key = jax.random.split(rng)
    offsets = jax.random.randint(crop_key, (batch, 2), 0, 2 * pad + 1, dtype=jnp.int32)
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    # vmap turns the per-image slice into one gather whose batch dimension the SPMD partitioner keeps
    # sharded: no collective, and whole contiguous crops rather than per-pixel indices.
    crops = jax.vmap(lambda image, offset: jax.lax.dynamic_slice(
        image, (offset[0], offset[1], 0), (height, width, channels)))(padded, offsets)
    if flip:
        flips = jax.random.bernoulli(flip_key, 0.5, (batch,))
        crops = jnp.where(flips[:, None, None, None], crops[:, :, ::-1], crops)
    return normalize(crops, mean, std)


def cutout(rng: jax.Array, images: ArrayLike, length: int) -> jax.Array:
    """Cutout as quark0/darts `utils.Cutout`: per image, zero a `length` x `length` square in every channel.

    The square's centre (y, x) is uniform over the image's pixels and the square spans rows
    [y - length // 2, y + length // 2) clipped to the image (columns alike), so near a border it is smaller,
    and an odd `length` gives a square of side length - 1, as in the reference. DARTS applies it after
    normalisation, so the square is 0 in normalised units. Multiplying by the mask (rather than selecting)
    keeps the reference's NaN propagation. Returns an array of the input's shape and dtype.
    """
    images = jnp.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"cutout expects NHWC images, got shape {images.shape}")
    if length < 0:
        raise ValueError(f"cutout length={length} must be >= 0 (0 disables it)")
    if length == 0:
        return images
    batch, height, width, _ = images.shape
    key_y, key_x = jax.random.split(rng)
    centre_y = jax.random.randint(key_y, (batch, 1), 0, height, dtype=jnp.int32)
    centre_x = jax.random.randint(key_x, (batch, 1), 0, width, dtype=jnp.int32)
    half = length // 2
    rows, cols = jnp.arange(height)[None, :], jnp.arange(width)[None, :]
    # Clipping the bounds to [0, size] is implied by comparing with in-range indices.
    in_rows = (rows >= centre_y - half) & (rows < centre_y + half)
    in_cols = (cols >= centre_x - half) & (cols < centre_x + half)
    keep = jnp.logical_not(in_rows[:, :, None] & in_cols[:, None, :])
    return images * keep[:, :, :, None].astype(images.dtype)
