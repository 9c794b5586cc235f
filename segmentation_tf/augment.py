"""Random training windows in TensorFlow ops (so tf.data runs them in parallel, in graph mode):
a crop anywhere in a slice, elastic deformation (one displacement field for every channel),
dihedral flips/rotations and gray-value variation (image channel only).

Items are (H, W, C) float32 with channels [image, mask(, weight)]; the mask is re-binarized after
interpolation. Randomness is stateless, driven by a (2,) int64 seed per window.
"""

from __future__ import annotations

import tensorflow as tf

from segmentation_tf.config import AugmentConfig

__all__ = ["AugmentConfig", "random_window"]


def random_window(pool: tf.Tensor, extents: tf.Tensor, tile: int, aug: AugmentConfig,
                  seed: tf.Tensor) -> tf.Tensor:
    """One augmented (tile, tile, C) window from a random item of `pool` (S, H, W, C), whose valid
    size per item is extents (S, 2)."""
    seeds = tf.random.experimental.stateless_split(seed, 7)
    s = tf.random.stateless_uniform([], seeds[0], 0, tf.shape(pool)[0], dtype=tf.int32)
    height, width = extents[s, 0], extents[s, 1]
    y0 = tf.random.stateless_uniform([], seeds[1], 0, height - tile + 1, dtype=tf.int32)
    x0 = tf.random.stateless_uniform([], seeds[2], 0, width - tile + 1, dtype=tf.int32)
    item = pool[s]
    if aug.elastic_sigma > 0:
        window = elastic_window(item, height, width, y0, x0, tile, aug, seeds[3])
    else:
        window = item[y0:y0 + tile, x0:x0 + tile, :]
    if aug.dihedral:
        window = random_dihedral(window, seeds[4])
    if aug.gray > 0:
        window = random_gray(window, aug.gray, seeds[5])
    return tf.ensure_shape(window, (tile, tile, pool.shape[-1]))


def displacement_field(tile: int, aug: AugmentConfig, seed: tf.Tensor) -> tf.Tensor:
    """(tile, tile, 2) smooth displacements: Gaussian control points upsampled bicubically."""
    coarse = tf.random.stateless_normal((1, aug.elastic_grid, aug.elastic_grid, 2), seed) * aug.elastic_sigma
    return tf.image.resize(coarse, (tile, tile), method="bicubic")[0]


def elastic_window(item: tf.Tensor, height, width, y0, x0, tile: int, aug: AugmentConfig,
                   seed: tf.Tensor) -> tf.Tensor:
    """Sample the window at displaced coordinates (bilinear, clamped to the item's valid area)."""
    field = displacement_field(tile, aug, seed)
    grid = tf.cast(tf.range(tile), tf.float32)
    yy = tf.cast(y0, tf.float32) + grid[:, None] + field[..., 0]
    xx = tf.cast(x0, tf.float32) + grid[None, :] + field[..., 1]
    yy = tf.clip_by_value(yy, 0.0, tf.cast(height - 1, tf.float32))
    xx = tf.clip_by_value(xx, 0.0, tf.cast(width - 1, tf.float32))
    out = bilinear_sample(item, yy, xx)
    return tf.concat([out[..., :1], tf.cast(out[..., 1:2] >= 0.5, tf.float32), out[..., 2:]], axis=-1)


def bilinear_sample(item: tf.Tensor, yy: tf.Tensor, xx: tf.Tensor) -> tf.Tensor:
    """item (H, W, C) at float coordinates yy, xx (h, w) -> (h, w, C)."""
    h, w = tf.shape(item)[0], tf.shape(item)[1]
    flat = tf.reshape(item, (h * w, -1))
    y0f, x0f = tf.floor(yy), tf.floor(xx)
    wy, wx = (yy - y0f)[..., None], (xx - x0f)[..., None]
    y0, x0 = tf.cast(y0f, tf.int32), tf.cast(x0f, tf.int32)
    y1, x1 = tf.minimum(y0 + 1, h - 1), tf.minimum(x0 + 1, w - 1)

    def at(y, x):
        return tf.gather(flat, y * w + x)

    top = at(y0, x0) * (1 - wx) + at(y0, x1) * wx
    bottom = at(y1, x0) * (1 - wx) + at(y1, x1) * wx
    return top * (1 - wy) + bottom * wy


def random_dihedral(window: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """One of the 8 rotations/reflections of the square, the same for every channel."""
    k = tf.random.stateless_uniform([], seed, 0, 8, dtype=tf.int32)
    window = tf.image.rot90(window, k % 4)
    return tf.cond(k >= 4, lambda: tf.reverse(window, [1]), lambda: window)


def random_gray(window: tf.Tensor, strength: float, seed: tf.Tensor) -> tf.Tensor:
    """Gamma, contrast and brightness changes of the image channel ([-1, 1] space), clipped."""
    u = tf.random.stateless_uniform((3,), seed, -strength, strength)
    unit = tf.clip_by_value((window[..., :1] + 1.0) * 0.5, 0.0, 1.0)
    unit = unit ** tf.exp(u[0])
    unit = (unit - 0.5) * (1.0 + u[1]) + 0.5 + 0.5 * u[2]
    image = tf.clip_by_value(unit * 2.0 - 1.0, -1.0, 1.0)
    return tf.concat([image, window[..., 1:]], axis=-1)
