"""Losses as small composable objects: BCE + soft Jaccard (IoU), optionally pixel-weighted.

y_true is (B, H, W, 1) with the {0, 1} mask, or (B, H, W, 2) with the mask and a per-pixel weight
map (the U-Net paper's border weights, see `weights.py`); with `tile_weights` a last channel holds
each tile's loss weight (--synthetic-weight: W on synthetic tiles, 1 on real ones), which weights both
terms; it is 0 on pixels nobody annotated (a partially annotated store), which leave both terms, the
BCE then being a mean over the annotated pixels. y_pred is the sigmoid probability. All arithmetic is
float32, whatever the mixed-precision policy.
"""

from __future__ import annotations

import keras
from keras import ops

EPS = 1e-7


def split_target(y_true, y_pred):
    """-> (mask, weight or None, probability), all float32 of shape (B, H, W, 1)."""
    y_true = ops.cast(y_true, "float32")
    y_pred = ops.cast(y_pred, "float32")
    if y_true.shape[-1] == 2:
        return y_true[..., :1], y_true[..., 1:], y_pred
    return y_true, None, y_pred


def binary_crossentropy(mask, prob, weight=None):
    """Mean of -w [y log p + (1 - y) log(1 - p)] over all pixels (w = 1 without a weight map)."""
    p = ops.clip(prob, EPS, 1.0 - EPS)
    bce = -(mask * ops.log(p) + (1.0 - mask) * ops.log(1.0 - p))
    if weight is not None:
        bce = bce * weight
    return ops.mean(bce)


def soft_jaccard(mask, prob, smooth: float = 1.0, weight=None):
    """(sum w y p + s) / (sum w y + sum w p - sum w y p + s) over the whole batch (w = 1 without
    tile weights)."""
    w = 1.0 if weight is None else weight
    intersection = ops.sum(w * mask * prob)
    union = ops.sum(w * mask) + ops.sum(w * prob) - intersection
    return (intersection + smooth) / (union + smooth)


@keras.saving.register_keras_serializable(package="segmentation_tf")
class BceJaccardLoss(keras.losses.Loss):
    """bce_weight * BCE + jaccard_weight * (1 - soft Jaccard)."""

    def __init__(self, bce_weight: float = 1.0, jaccard_weight: float = 1.0, smooth: float = 1.0,
                 tile_weights: bool = False, name: str = "bce_jaccard", **kwargs):
        super().__init__(name=name, **kwargs)
        self.bce_weight, self.jaccard_weight, self.smooth = bce_weight, jaccard_weight, smooth
        self.tile_weights = tile_weights

    def call(self, y_true, y_pred):
        tile = None
        if self.tile_weights:
            tile, y_true = ops.cast(y_true[..., -1:], "float32"), y_true[..., :-1]
        mask, weight, prob = split_target(y_true, y_pred)
        pixel = tile if weight is None else (weight if tile is None else weight * tile)
        loss = ops.convert_to_tensor(0.0, "float32")
        if self.bce_weight:
            bce = binary_crossentropy(mask, prob, pixel)
            if tile is not None:  # a mean over the annotated pixels (all of them: unchanged)
                bce = bce / ops.maximum(ops.mean(ops.cast(tile > 0, "float32")), EPS)
            loss = loss + self.bce_weight * bce
        if self.jaccard_weight:
            loss = loss + self.jaccard_weight * (1.0 - soft_jaccard(mask, prob, self.smooth, tile))
        return loss

    def get_config(self):
        return {**super().get_config(), "bce_weight": self.bce_weight, "jaccard_weight": self.jaccard_weight,
                "smooth": self.smooth, "tile_weights": self.tile_weights}
