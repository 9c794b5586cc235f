"""Precise BatchNorm statistics: recompute every BatchNormalization layer's moving mean and variance
under the weights a run ends with.

During training the moving statistics are a momentum average (0.95: about the last 20 batches) of
batch statistics taken while the weights still moved and the tiles were augmented (elastic, gray
values). The weights a run ends with (the best epoch's, or an EMA of the last ones, which Keras swaps
in without touching BatchNorm) were never run with exactly those statistics. Averaging the batch
statistics of un-augmented training tiles under the final weights instead ("PreciseBN", Wu & Johnson,
Rethinking "Batch" in BatchNorm, 2021) raised held-out EPFL IoU of the whole-pool segmenter from 0.875
(best epoch) and 0.838 (EMA) to 0.896 and 0.897 (docs/evidence.md)."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from shared.errors import UserError
from shared.store import TileStore

DIHEDRAL = 8      # the tiles' rotations and flips: more distinct batches from few labelled slices
MAX_BATCHES = 64  # enough for stable statistics (the whole pool: 216 tiles, 3 passes at batch 10)


def batchnorm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


def dihedral(tiles: np.ndarray, k: int) -> np.ndarray:
    """(N, H, W, C) tiles in the k-th of the 8 rotations/flips."""
    out = np.rot90(tiles, k % 4, axes=(1, 2))
    return np.ascontiguousarray(out[:, :, ::-1] if k >= 4 else out)


def batches_of(tiles: np.ndarray, batch_size: int, max_batches: int, seed: int) -> list[np.ndarray]:
    """Shuffled batches over the tiles in each dihedral view, at most max_batches of them."""
    rng = np.random.default_rng(seed)
    order = [(k, i) for k in range(DIHEDRAL) for i in rng.permutation(len(tiles))]
    size = min(batch_size, len(tiles))
    count = min(max_batches, len(order) // size)
    picks = [order[b * size:(b + 1) * size] for b in range(count)]
    return [np.stack([dihedral(tiles[i:i + 1], k)[0] for k, i in batch]) for batch in picks]


def recompute_batchnorm(model: keras.Model, tiles: np.ndarray, batch_size: int,
                        max_batches: int = MAX_BATCHES, seed: int = 0) -> int:
    """Set each BatchNorm layer's moving statistics to the mean of its batch statistics over batches
    of `tiles` ((N, H, W, 1), normalized) under the model's current weights; returns the number of
    batches. Forward passes run in training mode, where every layer normalizes with its batch's own
    statistics, so later layers see the same inputs whatever the moving statistics hold; the layer's
    momentum i / (i + 1) at batch i makes its moving average the running mean of the batches."""
    if len(tiles) == 0:
        raise ValueError("no tiles to recompute BatchNorm statistics from")
    layers = batchnorm_layers(model)
    momenta = [layer.momentum for layer in layers]
    batches = batches_of(tiles, batch_size, max_batches, seed)
    try:
        for i, batch in enumerate(batches):
            for layer in layers:
                layer.momentum = i / (i + 1)
            model(batch, training=True)
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
    return len(batches)


def tiles_for_statistics(store: TileStore, batch_size: int, max_batches: int = MAX_BATCHES,
                         seed: int = 0) -> np.ndarray:
    """The store's real training tiles as (N, T, T, 1) in [-1, 1], whole and un-augmented (what
    prediction sees); a seeded subset when there are more than the batches can use, so a large store
    is never loaded whole."""
    idx = store.indices("train")
    if len(idx) == 0:
        raise UserError(f"{store.path}: no 'train' tiles to recompute BatchNorm statistics from")
    cap = batch_size * max_batches
    if len(idx) > cap:
        idx = np.sort(np.random.default_rng(seed).choice(idx, cap, replace=False))
    return store.images(idx)[..., None]  # float32 already: no second copy of up to 640 tiles


def recompute_on_store(model: keras.Model, store: TileStore, batch_size: int) -> dict[str, Any]:
    """recompute_batchnorm on the store's real training tiles; returns the provenance record."""
    images = tiles_for_statistics(store, batch_size)
    batches = recompute_batchnorm(model, images, batch_size)
    return {"store": str(store.path), "split": "train", "tiles": int(len(images)), "batches": batches,
            "batch_size": int(min(batch_size, len(images)))}
