"""The one definition of pixel normalization: pixel / dtype-range, then (x - MEAN) / STD -> [-1, 1]."""

from __future__ import annotations

import numpy as np

MEAN = 0.5
STD = 0.5

# Pixel scale per stored dtype: integer images use their full range, float images are taken as [0, 1].
_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0, np.dtype(np.float32): 1.0}


def pixel_scale(dtype: np.dtype) -> float:
    """The value that maps to 1.0 for a stored dtype (255 for uint8)."""
    try:
        return _SCALE[np.dtype(dtype)]
    except KeyError:
        raise ValueError(f"unsupported pixel dtype {np.dtype(dtype)} (uint8, uint16 or float32)") from None


def to_unit(pixels: np.ndarray) -> np.ndarray:
    """Stored pixels -> float32 in [0, 1]."""
    return pixels.astype(np.float32) * np.float32(1.0 / pixel_scale(pixels.dtype))


def normalize(pixels: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Stored pixels -> float32 in [-1, 1] (the network input space), optionally into `out`.

    (pixel / scale - MEAN) / STD computed as one multiply and one subtract, no temporaries.
    """
    pixels = np.asarray(pixels)
    if out is None:
        out = np.empty(pixels.shape, np.float32)
    np.multiply(pixels, np.float32(1.0 / (pixel_scale(pixels.dtype) * STD)), out=out, casting="unsafe")
    out -= np.float32(MEAN / STD)
    return out


def unnormalize(x: np.ndarray) -> np.ndarray:
    """Network space [-1, 1] -> float32 in [0, 1] (clipped): the inverse of normalize up to the pixel
    scale, e.g. for display."""
    return np.clip(np.asarray(x, dtype=np.float32) * np.float32(STD) + np.float32(MEAN), 0.0, 1.0)


def denormalize(x: np.ndarray, dtype: np.dtype = np.uint8) -> np.ndarray:
    """Network space [-1, 1] -> stored pixels of `dtype` (clipped, rounded)."""
    unit = unnormalize(x)
    if np.dtype(dtype) == np.float32:
        return unit.astype(np.float32)
    return np.rint(unit * pixel_scale(dtype)).astype(dtype)


def metadata() -> dict[str, str]:
    """How a client reproduces the normalization, for checkpoints and ONNX metadata."""
    return {
        "normalization": "x = (pixel / pixel_scale - mean) / std",
        "norm_mean": str(MEAN),
        "norm_std": str(STD),
        "pixel_scale_uint8": "255",
        "pixel_scale_uint16": "65535",
        "pixel_scale_float32": "1",
    }
