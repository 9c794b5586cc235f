"""Keras metrics: foreground IoU and Dice at a threshold, accumulating intersection and union over
an epoch (pooled, not averaged per batch). The numpy versions for evaluation are in scores.py.

With `annotated_last` the targets end with the loss-weight channel (losses.py): its zeros mark pixels
nobody annotated (a partially annotated store), which the counts leave out as the loss does.
"""

from __future__ import annotations

import keras
from keras import ops


class _CountingMetric(keras.metrics.Metric):
    """Accumulates intersection / predicted / true foreground counts at a threshold."""

    def __init__(self, threshold: float = 0.5, name: str = "metric", annotated_last: bool = False, **kwargs):
        super().__init__(name=name, **kwargs)
        self.threshold = float(threshold)
        self.annotated_last = bool(annotated_last)
        self.inter = self.add_variable((), initializer="zeros", name="inter", dtype="float32")
        self.pred = self.add_variable((), initializer="zeros", name="pred", dtype="float32")
        self.truth = self.add_variable((), initializer="zeros", name="truth", dtype="float32")

    def update_state(self, y_true, y_pred, sample_weight=None):
        mask = ops.cast(y_true[..., :1] > 0.5, "float32")
        pred = ops.cast(ops.cast(y_pred, "float32") >= self.threshold, "float32")
        if self.annotated_last:
            known = ops.cast(ops.cast(y_true[..., -1:], "float32") > 0, "float32")
            mask, pred = mask * known, pred * known
        self.inter.assign_add(ops.sum(mask * pred))
        self.pred.assign_add(ops.sum(pred))
        self.truth.assign_add(ops.sum(mask))

    def reset_state(self):
        for v in (self.inter, self.pred, self.truth):
            v.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "threshold": self.threshold, "annotated_last": self.annotated_last}


@keras.saving.register_keras_serializable(package="segmentation_tf")
class ForegroundIoU(_CountingMetric):
    def __init__(self, threshold: float = 0.5, name: str = "iou", annotated_last: bool = False, **kwargs):
        super().__init__(threshold, name, annotated_last, **kwargs)

    def result(self):
        union = self.pred + self.truth - self.inter
        return ops.where(union > 0, self.inter / ops.maximum(union, 1.0), 1.0)


@keras.saving.register_keras_serializable(package="segmentation_tf")
class ForegroundDice(_CountingMetric):
    def __init__(self, threshold: float = 0.5, name: str = "dice", annotated_last: bool = False, **kwargs):
        super().__init__(threshold, name, annotated_last, **kwargs)

    def result(self):
        total = self.pred + self.truth
        return ops.where(total > 0, 2.0 * self.inter / ops.maximum(total, 1.0), 1.0)
