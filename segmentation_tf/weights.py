"""The U-Net paper's pixel weight map (Ronneberger et al. 2015, eq. 2), numpy + scipy:

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))

d1, d2: distances to the nearest and second-nearest object (connected component of the mask);
the border term applies to background pixels, so the gaps between touching objects weigh most.
w_c balances the classes (1 / (2 * class frequency), clipped to [0.1, 10]) when `balance` is set,
else w_c = 1.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def border_weight_map(mask: np.ndarray, w0: float = 10.0, sigma: float = 5.0,
                      balance: bool = False) -> np.ndarray:
    """float32 weight map of one (H, W) {0, 1} mask."""
    mask = np.asarray(mask) > 0
    weight = class_weights(mask) if balance else np.ones(mask.shape, np.float32)
    labels, n = ndimage.label(mask)
    if n >= 2 and w0 > 0:
        d1, d2 = two_nearest_distances(labels, n)
        border = w0 * np.exp(-((d1 + d2) ** 2) / (2.0 * sigma ** 2))
        weight = weight + np.where(mask, 0.0, border).astype(np.float32)
    return weight.astype(np.float32)


def class_weights(mask: np.ndarray) -> np.ndarray:
    """1 / (2 f_k) for the class k of each pixel, clipped to [0.1, 10]."""
    fg = float(mask.mean())
    if fg in (0.0, 1.0):
        return np.ones(mask.shape, np.float32)
    w_fg, w_bg = np.clip([0.5 / fg, 0.5 / (1.0 - fg)], 0.1, 10.0)
    return np.where(mask, w_fg, w_bg).astype(np.float32)


def two_nearest_distances(labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel, the Euclidean distances to the nearest and second-nearest labelled object."""
    d1 = np.full(labels.shape, np.inf, np.float32)
    d2 = np.full(labels.shape, np.inf, np.float32)
    for k in range(1, n + 1):
        d = ndimage.distance_transform_edt(labels != k).astype(np.float32)
        d2 = np.minimum(d2, np.maximum(d1, d))
        d1 = np.minimum(d1, d)
    return d1, d2


def weight_maps(masks: np.ndarray, w0: float, sigma: float, balance: bool = False) -> np.ndarray:
    """Weight maps of a (N, H, W) mask stack."""
    return np.stack([border_weight_map(m, w0, sigma, balance) for m in masks]).astype(np.float32)
