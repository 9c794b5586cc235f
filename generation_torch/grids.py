"""Image grids for TensorBoard and docs: tiles beside their masks or reconstructions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from shared.normalization import unnormalize


def to_unit(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """[-1, 1] network space (a tensor or an array) -> [0, 1] float32 for display."""
    return unnormalize(x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else x)


def pair_grid(left: np.ndarray, right: np.ndarray, columns: int = 4, gap: int = 4) -> np.ndarray:
    """(N, H, W) and (N, H, W) in [0, 1] -> one (rows*H, columns*2W) image, each left tile beside
    its right partner (e.g. a generated tile beside its conditioning mask)."""
    n, h, w = left.shape
    columns = min(columns, n)
    rows = -(-n // columns)
    inner, outer = gap // 2, 2 * gap           # pairs sit close, pairs are set apart
    cell = 2 * w + inner
    grid = np.ones((rows * (h + gap) - gap, columns * (cell + outer) - outer), np.float32)
    for i in range(n):
        r, c = divmod(i, columns)
        y, x = r * (h + gap), c * (cell + outer)
        grid[y:y + h, x:x + w] = left[i]
        grid[y:y + h, x + w + inner:x + cell] = right[i]
    return grid


def save_pairs(path: Path, images: np.ndarray, masks: np.ndarray, most: int = 16) -> None:
    """A PNG of the first `most` normalized tiles, each beside its mask (a drawn store's picture)."""
    k = min(most, len(images))
    save_png(path, pair_grid(to_unit(images[:k]), masks[:k].astype(np.float32)))


def stack_rows(rows: list[np.ndarray], gap: int = 12) -> np.ndarray:
    """Equal-width images one above the other, `gap` white pixels apart."""
    space = np.ones((gap, rows[0].shape[1]), np.float32)
    return np.concatenate([part for row in rows for part in (row, space)][:-1])


def save_png(path: Path, grid: np.ndarray) -> None:
    """An 8-bit grayscale PNG of a [0, 1] image (matplotlib's imsave writes RGBA: 4x the bytes of EM's
    incompressible grain)."""
    from PIL import Image  # Pillow comes with matplotlib; imported only where a PNG is written

    grey = np.round(np.clip(grid, 0.0, 1.0) * 255.0).astype(np.uint8)  # 2-D uint8: Pillow's mode "L"
    Image.fromarray(grey).save(path, optimize=True)
