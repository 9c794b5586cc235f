"""Conditioning masks for sampling: drawn from a real mask source and varied (dihedral transform +
elastic deformation) so every synthetic pair is new."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from shared.errors import UserError
from shared.store import MANIFEST, TileStore
from shared.tiff_io import read_mask_stack
from shared.tiling import TILE, dihedral


def load_mask_source(path: Path, split: str = "train") -> np.ndarray:
    """(N, 256, 256) uint8 {0, 1} masks from a tile store (its `split` tiles, else all) or a TIFF
    stack of 256x256 masks."""
    if path.is_dir():
        if not (path / MANIFEST).exists():
            raise UserError(f"{path}: not a tile store (no {MANIFEST})")
        store = TileStore(path)
        if store.tile_size != TILE:
            raise UserError(f"{path}: store holds {store.tile_size}px tiles; the generator makes {TILE}px")
        idx = store.indices(split)
        idx = idx if len(idx) else store.indices()
        if len(idx) == 0:
            raise UserError(f"{path}: the store is empty, no masks to condition on")
        return store.masks(idx)
    masks = read_mask_stack(path)
    if masks.shape[1:] != (TILE, TILE):
        raise UserError(f"{path}: masks are {masks.shape[2]}x{masks.shape[1]}; the generator needs "
                        f"{TILE}x{TILE} mask tiles (cut slices into a store: python -m shared.tiles build)")
    return masks


def elastic(mask: np.ndarray, rng: np.random.Generator, alpha: float = 8.0, smooth: int = 32) -> np.ndarray:
    """Smooth random displacement (up to ~alpha px) of a {0, 1} mask, nearest-neighbour resampled so
    it stays binary. The field is coarse noise upsampled bicubically: smooth, no scipy needed."""
    h, w = mask.shape
    noise = rng.normal(0.0, 1.0, (1, 2, h // smooth + 1, w // smooth + 1)).astype(np.float32)
    coarse = torch.from_numpy(noise)
    field = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)[0]
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    grid = torch.stack([xs + field[0] * 2 * alpha / w, ys + field[1] * 2 * alpha / h], dim=-1)[None]
    src = torch.from_numpy(mask.astype(np.float32))[None, None]
    out = F.grid_sample(src, grid, mode="nearest", padding_mode="reflection", align_corners=True)
    return out[0, 0].numpy().astype(np.uint8)


def varied_masks(source: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, list[dict]]:
    """n masks: a random source mask, a random dihedral transform, an elastic deformation; with a
    record of where each came from (for provenance)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, *source.shape[1:]), np.uint8)
    origin = []
    for i in range(n):
        j, k = int(rng.integers(len(source))), int(rng.integers(8))
        out[i] = elastic(dihedral(source[j], k), rng)
        origin.append({"mask_layout": "labelled", "mask_source_index": j, "dihedral": k})
    return out, origin
