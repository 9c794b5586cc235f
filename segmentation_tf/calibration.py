"""Threshold calibration: the foreground threshold that maximizes pooled IoU on validation slices.

Computed from two histograms (probabilities of true-foreground and true-background pixels), so a
sweep over many thresholds costs one pass over the pixels."""

from __future__ import annotations

import numpy as np

BINS = 1000


def iou_curve(probs: np.ndarray, masks: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Pooled foreground IoU at each threshold (prediction = prob >= t)."""
    probs = np.asarray(probs, np.float32).ravel()
    truth = np.asarray(masks).ravel() > 0
    edges = np.linspace(0.0, 1.0, BINS + 1)
    fg, _ = np.histogram(probs[truth], bins=edges)
    bg, _ = np.histogram(probs[~truth], bins=edges)
    # pixels with prob >= edges[i]: suffix sums
    tp = np.concatenate([np.cumsum(fg[::-1])[::-1], [0]])
    fp = np.concatenate([np.cumsum(bg[::-1])[::-1], [0]])
    at = np.clip(np.rint(np.asarray(thresholds) * BINS).astype(int), 0, BINS)
    n_true = int(truth.sum())
    union = n_true + fp[at]
    return np.where(union > 0, tp[at] / np.maximum(union, 1), 1.0)


def calibrate_threshold(probs: np.ndarray, masks: np.ndarray,
                        thresholds: np.ndarray | None = None) -> tuple[float, float]:
    """(threshold, IoU) maximizing pooled IoU over a grid (default 0.02 .. 0.98, step 0.01)."""
    if thresholds is None:
        thresholds = np.round(np.arange(0.02, 0.981, 0.01), 4)
    curve = iou_curve(probs, masks, thresholds)
    best = int(np.argmax(curve))
    return float(thresholds[best]), float(curve[best])
