"""Foreground IoU and Dice at a threshold in numpy (evaluation, calibration reports), per slice
and pooled over all pixels."""

from __future__ import annotations

from typing import Any

import numpy as np


def confusion(prob: np.ndarray, mask: np.ndarray, threshold: float) -> tuple[int, int, int]:
    """(intersection, predicted foreground, true foreground) pixel counts."""
    pred = np.asarray(prob) >= threshold
    truth = np.asarray(mask) > 0
    return int(np.count_nonzero(pred & truth)), int(np.count_nonzero(pred)), int(np.count_nonzero(truth))


def iou_from_counts(inter: int, pred: int, truth: int) -> float:
    union = pred + truth - inter
    return 1.0 if union == 0 else inter / union


def dice_from_counts(inter: int, pred: int, truth: int) -> float:
    total = pred + truth
    return 1.0 if total == 0 else 2.0 * inter / total


def iou(prob: np.ndarray, mask: np.ndarray, threshold: float = 0.5) -> float:
    """Foreground IoU |P ∩ T| / |P ∪ T| (1.0 when both are empty)."""
    return iou_from_counts(*confusion(prob, mask, threshold))


def per_tile_iou(probs: np.ndarray, masks: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Foreground IoU of each (H, W) tile of (N, H, W) probabilities against (N, H, W) masks."""
    return np.array([iou(p, m, threshold) for p, m in zip(probs, masks, strict=True)], np.float64)


def dice(prob: np.ndarray, mask: np.ndarray, threshold: float = 0.5) -> float:
    """Foreground Dice 2|P ∩ T| / (|P| + |T|) (1.0 when both are empty)."""
    return dice_from_counts(*confusion(prob, mask, threshold))


def score(probs: np.ndarray, masks: np.ndarray, threshold: float) -> dict[str, Any]:
    """Per-slice and pooled IoU / Dice of (Z, H, W) probabilities against (Z, H, W) masks."""
    per_slice, totals = [], np.zeros(3, np.int64)
    for z, (p, m) in enumerate(zip(probs, masks, strict=True)):
        counts = confusion(p, m, threshold)
        totals += counts
        per_slice.append({"slice": z, "iou": iou_from_counts(*counts),
                          "dice": dice_from_counts(*counts)})
    return {"threshold": threshold, "iou": iou_from_counts(*totals),
            "dice": dice_from_counts(*totals), "slices": per_slice}
