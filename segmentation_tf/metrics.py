"""Keras metrics: foreground IoU and Dice at a threshold, accumulating intersection and union over
an epoch (pooled, not averaged per batch). The numpy versions for evaluation are in scores.py."""

from __future__ import annotations

import keras
from keras import ops


class _CountingMetric(keras.metrics.Metric):
    """Accumulates intersection / predicted / true foreground counts at a threshold."""

    def __init__(self, threshold: float = 0.5, name: str = "metric", **kwargs):
        super().__init__(name=name, **kwargs)
        self.threshold = float(threshold)
        self.inter = self.add_variable((), initializer="zeros", name="inter", dtype="float32")
        self.pred = self.add_variable((), initializer="zeros", name="pred", dtype="float32")
        self.truth = self.add_variable((), initializer="zeros", name="truth", dtype="float32")

    def update_state(self, y_true, y_pred, sample_weight=None):
        mask = ops.cast(y_true[..., :1] > 0.5, "float32")
        pred = ops.cast(ops.cast(y_pred, "float32") >= self.threshold, "float32")
        self.inter.assign_add(ops.sum(mask * pred))
        self.pred.assign_add(ops.sum(pred))
        self.truth.assign_add(ops.sum(mask))

    def reset_state(self):
        for v in (self.inter, self.pred, self.truth):
            v.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "threshold": self.threshold}


@keras.saving.register_keras_serializable(package="segmentation_tf")
class ForegroundIoU(_CountingMetric):
    def __init__(self, threshold: float = 0.5, name: str = "iou", **kwargs):
        super().__init__(threshold, name, **kwargs)

    def result(self):
        union = self.pred + self.truth - self.inter
        return ops.where(union > 0, self.inter / ops.maximum(union, 1.0), 1.0)


@keras.saving.register_keras_serializable(package="segmentation_tf")
class ForegroundDice(_CountingMetric):
    def __init__(self, threshold: float = 0.5, name: str = "dice", **kwargs):
        super().__init__(threshold, name, **kwargs)

    def result(self):
        total = self.pred + self.truth
        return ops.where(total > 0, 2.0 * self.inter / ops.maximum(total, 1.0), 1.0)
