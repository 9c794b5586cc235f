"""Quality figures (numpy): reconstruction MSE/PSNR and realism of generated tiles against real ones.

All in the normalized [-1, 1] space. PSNR uses the peak-to-peak range 2 of that space:
PSNR = 10 log10(2^2 / MSE).
"""

from __future__ import annotations

import numpy as np


def mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))


def psnr(mse_value: float, peak_to_peak: float = 2.0) -> float:
    return float(10.0 * np.log10(peak_to_peak**2 / max(mse_value, 1e-12)))


def histogram_wasserstein(a: np.ndarray, b: np.ndarray, quantiles: int = 1000) -> float:
    """1-Wasserstein distance between the pixel-intensity distributions of two tile sets (the mean
    absolute difference of their quantile functions)."""
    q = (np.arange(quantiles) + 0.5) / quantiles
    return float(np.mean(np.abs(np.quantile(a.ravel(), q) - np.quantile(b.ravel(), q))))


def radial_power_spectrum(tiles: np.ndarray) -> np.ndarray:
    """Mean radially averaged power spectrum of (N, H, W) tiles (mean removed per tile), one value
    per integer frequency radius 1 .. H/2."""
    x = np.asarray(tiles, np.float64)
    x = x - x.mean(axis=(-2, -1), keepdims=True)
    power = (np.abs(np.fft.fft2(x)) ** 2).mean(axis=0) / (x.shape[-2] * x.shape[-1])
    fy = np.fft.fftfreq(x.shape[-2]) * x.shape[-2]
    fx = np.fft.fftfreq(x.shape[-1]) * x.shape[-1]
    radius = np.rint(np.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)).astype(np.int64)
    top = x.shape[-2] // 2
    sums = np.bincount(radius.ravel(), power.ravel(), minlength=top + 1)
    counts = np.bincount(radius.ravel(), minlength=top + 1)
    return sums[1:top + 1] / counts[1:top + 1]


def spectrum_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of log10 radial power spectra (0 = same texture at every scale;
    0.1 = spectra about 26% apart on average)."""
    pa, pb = radial_power_spectrum(a), radial_power_spectrum(b)
    return float(np.mean(np.abs(np.log10(pa + 1e-12) - np.log10(pb + 1e-12))))


def realism(generated: np.ndarray, real: np.ndarray) -> dict[str, float]:
    return {"hist_w1": histogram_wasserstein(generated, real),
            "spectrum_dist": spectrum_distance(generated, real)}


EDGE_REACH = 8  # px on each side of a mask boundary: a mitochondrion's membrane and some matrix / cytosol


def signed_distances(mask: np.ndarray) -> np.ndarray:
    """Per pixel, the rounded Euclidean distance to the other side of the mask boundary: -1, -2, ...
    inside the mask, 1, 2, ... outside (never 0)."""
    from scipy import ndimage

    mask = np.asarray(mask) > 0
    inside, outside = ndimage.distance_transform_edt(mask), ndimage.distance_transform_edt(~mask)
    return np.where(mask, -np.rint(inside), np.rint(outside)).astype(np.int64)


def edge_profile(tiles: np.ndarray, masks: np.ndarray, reach: int = EDGE_REACH) -> np.ndarray:
    """Mean intensity at distances -reach .. -1, 1 .. reach from the mask boundary (2 reach values,
    pooled over tiles; tiles all foreground or all background hold no boundary and add nothing).
    How a set draws its objects where its masks say they end: contrast, membrane, halo."""
    sums, counts = np.zeros(2 * reach), np.zeros(2 * reach)
    for tile, mask in zip(np.asarray(tiles, np.float64), np.asarray(masks) > 0, strict=True):
        if mask.all() or not mask.any():
            continue
        d = signed_distances(mask)
        near = (np.abs(d) <= reach)
        bins = d[near] + reach - (d[near] > 0)  # -reach..-1 -> 0..reach-1; 1..reach -> reach..2 reach-1
        sums += np.bincount(bins, tile[near], 2 * reach)
        counts += np.bincount(bins, minlength=2 * reach)
    return sums / np.maximum(counts, 1)


def object_contrast(profile: np.ndarray, skip: int = 1) -> float:
    """Mean of an edge profile outside the mask minus inside, leaving out the `skip` px next to the
    boundary on each side (where the membrane and the mask's own edge blur)."""
    reach = len(profile) // 2
    return float(profile[reach + skip:].mean() - profile[:reach - skip].mean())


def profile_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two edge profiles (0: objects drawn alike at their edges)."""
    return float(np.mean(np.abs(np.asarray(a) - np.asarray(b))))


def edge_figures(generated: np.ndarray, generated_masks: np.ndarray, real: np.ndarray,
                 real_masks: np.ndarray, reach: int = EDGE_REACH) -> dict[str, float]:
    """Objects drawn at their masks against real ones: the object contrast of each set and the mean
    absolute difference of their edge profiles (0: drawn alike)."""
    ours, theirs = edge_profile(generated, generated_masks, reach), edge_profile(real, real_masks, reach)
    return {"object_contrast": object_contrast(ours), "object_contrast_real": object_contrast(theirs),
            "edge_profile_l1": profile_distance(ours, theirs)}
