"""Whole-slice inference: overlapping windows blended (shared.tiling.predict_tiled), optionally
averaged over the 8 flips/rotations of each window (test-time augmentation, shared.tiling.with_tta)."""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np

from shared.tiling import OVERLAP, predict_tiled, with_tta

TileFn = Callable[[np.ndarray], np.ndarray]


def model_fn(model: keras.Model) -> TileFn:
    """(B, T, T) normalized tiles -> (B, T, T) float32 probabilities."""
    def predict(tiles: np.ndarray) -> np.ndarray:
        out = model.predict_on_batch(np.ascontiguousarray(tiles, np.float32)[..., None])
        return np.asarray(out, np.float32)[..., 0]
    return predict


def predict_tiles(model: keras.Model, tiles: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """(N, T, T) normalized tiles -> (N, T, T) probabilities, each tile on its own (no stitching)."""
    predict = model_fn(model)
    return np.concatenate([predict(tiles[i:i + batch_size]) for i in range(0, len(tiles), batch_size)])


def predict_slice(model: keras.Model, image: np.ndarray, tile: int, overlap: int = OVERLAP, tta: bool = False,
                  batch_size: int = 8) -> np.ndarray:
    """One normalized (H, W) slice -> (H, W) float32 foreground probability."""
    predict = model_fn(model)
    if tta:
        predict = with_tta(predict)
        batch_size = max(1, batch_size // 8) if batch_size >= 8 else 1
    return predict_tiled(predict, image, tile=tile, overlap=overlap, batch_size=batch_size)


def predict_stack(model: keras.Model, images: np.ndarray, tile: int, overlap: int = OVERLAP,
                  tta: bool = False, batch_size: int = 8,
                  progress: Callable[[int], None] | None = None) -> np.ndarray:
    """(Z, H, W) normalized slices -> (Z, H, W) float32 probabilities."""
    out = np.empty(images.shape, np.float32)
    for z, image in enumerate(images):
        out[z] = predict_slice(model, image, tile, overlap, tta, batch_size)
        if progress:
            progress(z)
    return out
