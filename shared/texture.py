"""The decoder's missing texture. The VAE decodes a latent to the mean of p(x | z): the MSE-optimal,
blurred image. Real EM tiles also carry high-frequency detail the latent cannot predict. Its power
spectrum, measured once on training tiles (tile - reconstruction), lets generation draw from p(x | z)
instead of returning its mean: the decoded tile plus Gaussian noise of exactly that spectrum (a
stationary, colored covariance). Reconstruction MSE is untouched; generated tiles get EM's
high-frequency power back. numpy only, so PyTorch and onnxruntime add the same noise from the same
per-tile streams (shared.sampling.TileNoise).
"""

from __future__ import annotations

import numpy as np

from shared.sampling import TileNoise

TEXTURE_FILE = "texture_spectrum.npy"  # beside the generator's ONNX parts


def residual_spectrum(images: np.ndarray, reconstructions: np.ndarray) -> np.ndarray:
    """Mean power |rfft2(tile - reconstruction)|^2 (orthonormal FFT) over (N, T, T) tiles: (T, T//2 + 1)
    float32; its mean over frequencies is the residual's variance per pixel."""
    residual = np.asarray(images, np.float64) - np.asarray(reconstructions, np.float64)
    if residual.ndim != 3 or residual.shape[-1] != residual.shape[-2]:
        raise ValueError(f"expected (N, T, T) tiles, got {residual.shape}")
    return np.mean(np.abs(np.fft.rfft2(residual, norm="ortho")) ** 2, axis=0).astype(np.float32)


def colored_noise(spectrum: np.ndarray, white: np.ndarray) -> np.ndarray:
    """White standard normal (N, T, T) filtered to power `spectrum` (T, T//2 + 1): float32 (N, T, T)."""
    if white.shape[-2:] != (spectrum.shape[0], 2 * (spectrum.shape[1] - 1)):
        raise ValueError(f"spectrum {spectrum.shape} does not fit tiles {white.shape[-2:]}")
    shaped = np.fft.rfft2(white.astype(np.float64), norm="ortho") * np.sqrt(spectrum.astype(np.float64))
    return np.fft.irfft2(shaped, s=white.shape[-2:], norm="ortho").astype(np.float32)


def add_texture(images: np.ndarray, spectrum: np.ndarray, strength: float, noise: TileNoise) -> np.ndarray:
    """Decoded tiles (N, T, T) in [-1, 1] plus residual-spectrum noise carrying `strength` times the
    measured residual power (1: all of it), drawn as the next (T, T) draw of each tile's stream;
    clipped to [-1, 1]."""
    if strength <= 0:
        return images
    white = noise.draw(images.shape[-2:])
    return np.clip(images + colored_noise(strength * spectrum, white), -1.0, 1.0).astype(np.float32)
