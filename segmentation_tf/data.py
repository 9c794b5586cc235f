"""The input pipeline: real windows (random crops of whole slices, or the store's tile grid) mixed
with synthetic tiles at a fixed count per batch, augmented in tf.data, prefetched.

With --synthetic-ratio r and batch size B each batch holds n_syn = round(r B) synthetic tiles (at
least 1 when r > 0) and n_real = B - n_syn real ones; an epoch has ceil(real tiles / n_real) steps,
so the number of real tiles seen per epoch does not shrink as r grows. Validation is real tiles only.

Partial annotations (a store built with --annotated): the pool carries the annotated area as its last
channel, and the loss weighs each pixel by it (0: nobody looked, left out of the loss), through the
same weight channel that --synthetic-weight uses. Validation tiles must be annotated whole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from segmentation_tf.augment import random_window
from segmentation_tf.config import DataConfig, tile_weighted
from segmentation_tf.slices import annotated_slices, slices_of
from segmentation_tf.weights import weight_maps
from shared.errors import UserError
from shared.store import TileStore


@dataclass
class Pool:
    """Items to cut windows from: (S, H, W, C) float32 channels [image, mask(, weight)(, annotated)]."""
    data: np.ndarray
    extents: np.ndarray   # (S, 2) int32 valid height and width of each item
    tiles: int            # how many store tiles the pool stands for (the epoch length)
    annotated: bool = False  # its last channel is the annotated area (partial annotations)


def batch_composition(batch_size: int, ratio: float) -> tuple[int, int]:
    """(real, synthetic) tiles per batch for a synthetic ratio in [0, 1)."""
    if not 0.0 <= ratio < 1.0:
        raise UserError(f"--synthetic-ratio must be in [0, 1), got {ratio}")
    if ratio == 0.0:
        return batch_size, 0
    if batch_size < 2:
        raise UserError("--synthetic-ratio > 0 needs a batch size of at least 2")
    n_syn = min(max(1, round(ratio * batch_size)), batch_size - 1)
    return batch_size - n_syn, n_syn


def rounding_note(batch_size: int, ratio: float) -> str:
    """Says so when a batch cannot hold the asked synthetic ratio exactly (whole tiles per batch)."""
    actual = batch_composition(batch_size, ratio)[1] / batch_size
    if abs(actual - ratio) < 1e-9:
        return ""
    return (f" (ratio {actual:.3g}: --synthetic-ratio {ratio:g} rounded to whole tiles of a batch of "
            f"{batch_size})")


def steps_per_epoch(real_tiles: int, n_real: int) -> int:
    return max(1, math.ceil(real_tiles / n_real))


def stack_channels(images: np.ndarray, masks: np.ndarray, config: DataConfig,
                   annotated: np.ndarray | None = None) -> np.ndarray:
    """(N, H, W) images in [-1, 1] + {0, 1} masks -> (N, H, W, C) float32, weight maps appended, then
    the annotated areas where given."""
    channels = [images.astype(np.float32), masks.astype(np.float32)]
    if config.weight_w0 > 0:
        channels.append(weight_maps(masks, config.weight_w0, config.weight_sigma))
    if annotated is not None:
        channels.append(annotated.astype(np.float32))
    return np.stack(channels, axis=-1)


def tile_pool(store: TileStore, idx: np.ndarray, config: DataConfig) -> Pool:
    annotated = store.annotated(idx) if store.partially_annotated else None
    data = stack_channels(store.images(idx), store.masks(idx), config, annotated)
    extents = np.full((len(idx), 2), store.tile_size, np.int32)
    return Pool(data, extents, len(idx), annotated is not None)


def slice_pool(store: TileStore, idx: np.ndarray, config: DataConfig) -> Pool:
    """Whole slices, zero-padded to a common size, with their own extents for cropping."""
    slices = slices_of(store, idx)
    areas = annotated_slices(store, idx) if store.partially_annotated else [None] * len(slices)
    height = max(img.shape[0] for img, _ in slices)
    width = max(img.shape[1] for img, _ in slices)
    channels = 2 + (config.weight_w0 > 0) + store.partially_annotated
    data = np.zeros((len(slices), height, width, channels), np.float32)
    for k, ((img, mask), area) in enumerate(zip(slices, areas, strict=True)):
        data[k, : img.shape[0], : img.shape[1]] = stack_channels(
            img[None], mask[None], config, None if area is None else area[None])[0]
    extents = np.array([img.shape for img, _ in slices], np.int32)
    return Pool(data, extents, len(idx), store.partially_annotated)


def real_train_pool(store: TileStore, config: DataConfig) -> Pool:
    idx = store.indices("train")
    if len(idx) == 0:
        raise UserError(f"{store.path}: no 'train' tiles")
    has_origin = all("y" in store.records[int(i)] and "x" in store.records[int(i)] for i in idx)
    if config.random_crops and has_origin:
        return slice_pool(store, idx, config)
    return tile_pool(store, idx, config)


def synthetic_pool(store: TileStore, config: DataConfig) -> Pool:
    """Every tile of a synthetic store (its tile size is checked against the real one at the CLI)."""
    idx = store.indices(None)
    if len(idx) == 0:
        raise UserError(f"{store.path}: the synthetic store holds no tiles")
    return tile_pool(store, idx, config)


def window_stream(pool: Pool, tile: int, config: DataConfig, seed: int, skip: int = 0) -> tf.data.Dataset:
    """An endless stream of augmented (tile, tile, C) windows from a pool, from its `skip`-th window on
    (each window is a pure function of its seed pair, so skipping seeds costs no augmentation)."""
    data = tf.constant(pool.data)
    extents = tf.constant(pool.extents)
    aug = config.augment

    def window(pair):
        return random_window(data, extents, tile, aug, pair)

    seeds = tf.data.Dataset.random(seed=seed).batch(2, drop_remainder=True).skip(skip)
    return seeds.map(window, num_parallel_calls=tf.data.AUTOTUNE)


def split_xy(batch: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(B, H, W, C) channels -> model input (B, H, W, 1) and target (B, H, W, C - 1)."""
    return batch[..., :1], batch[..., 1:]


def with_tile_weight(batch: tf.Tensor, weight: float) -> tf.Tensor:
    """Append a channel holding one loss weight for every pixel of every tile of the batch."""
    return tf.concat([batch, tf.fill(tf.concat([tf.shape(batch)[:-1], [1]], 0), weight)], axis=-1)


def pixel_weighted(config: DataConfig, *pools: Pool | None) -> bool:
    """Whether targets end in a per-pixel loss-weight channel: a tile weight W != 1 in a mixed batch,
    or a pool with partial annotations."""
    return tile_weighted(config) or any(p is not None and p.annotated for p in pools)


def targets_weighted(config: DataConfig, real: Pool, synthetic: Pool | None) -> bool:
    """pixel_weighted for the batches training_dataset makes (a synthetic pool that no batch draws
    from, its share rounding to 0 tiles, weighs nothing); the loss and metrics must agree with it."""
    n_syn = batch_composition(config.batch_size, config.synthetic_ratio)[1]
    return pixel_weighted(config, real, synthetic if n_syn else None)


def weighted_batch(batch: tf.Tensor, pool: Pool, weight: float) -> tf.Tensor:
    """A batch whose last channel is its pixels' loss weight: the pool's annotated area times the tile
    weight, or the tile weight alone."""
    if pool.annotated:
        return tf.concat([batch[..., :-1], batch[..., -1:] * weight], axis=-1)
    return with_tile_weight(batch, weight)


def training_dataset(real: Pool, synthetic: Pool | None, tile: int, config: DataConfig,
                     skip_batches: int = 0) -> tf.data.Dataset:
    """Endless batches of n_real real + n_syn synthetic windows (in that order), prefetched, from the
    `skip_batches`-th batch on (a resumed run continues its stream instead of repeating it); with a
    synthetic weight W != 1 or partial annotations the target ends in a pixel-weight channel
    (annotated area x tile weight: 1 real, W synthetic)."""
    n_real, n_syn = batch_composition(config.batch_size, config.synthetic_ratio)
    weighted = targets_weighted(config, real, synthetic)
    batches = window_stream(real, tile, config, config.seed, skip_batches * n_real).batch(
        n_real, drop_remainder=True)
    if weighted:
        batches = batches.map(lambda a: weighted_batch(a, real, 1.0))
    if n_syn:
        syn = window_stream(synthetic, tile, config, config.seed + 1, skip_batches * n_syn).batch(
            n_syn, drop_remainder=True)
        if weighted:
            weight = config.synthetic_weight if tile_weighted(config) else 1.0
            syn = syn.map(lambda b: weighted_batch(b, synthetic, weight))
        batches = tf.data.Dataset.zip(batches, syn).map(lambda a, b: tf.concat([a, b], axis=0))
    return batches.map(split_xy).prefetch(tf.data.AUTOTUNE)


def validation_arrays(store: TileStore, config: DataConfig, split: str = "val", weighted: bool | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Real tiles of a split as (x, y) arrays, no augmentation; `weighted` (default: a tile weight in
    the config): the targets end in a weight channel of ones, as training's do."""
    idx = store.indices(split)
    if len(idx) == 0:
        raise UserError(f"{store.path}: no '{split}' tiles left after the split")
    unannotated = (store.annotated(idx) == 0).any(axis=(1, 2)) if store.partially_annotated else None
    if unannotated is not None and unannotated.any():
        tile = store.records[int(idx[np.flatnonzero(unannotated)[0]])]
        raise UserError(f"{store.path}: its '{split}' slices must be annotated whole (slice "
                        f"{tile.get('slice', '?')} has unannotated pixels); thresholds and early stopping "
                        "score every pixel")
    stacked = stack_channels(store.images(idx), store.masks(idx), config)
    if tile_weighted(config) if weighted is None else weighted:  # the loss reads a weight channel: 1
        stacked = np.concatenate([stacked, np.ones_like(stacked[..., :1])], axis=-1)
    return stacked[..., :1], stacked[..., 1:]

