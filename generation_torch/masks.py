"""Conditioning masks for sampling: drawn from a real mask source and varied (dihedral transform +
elastic deformation) so every synthetic pair is new."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from generation_torch.layouts import source_tiles
from shared.errors import UserError
from shared.store import refuse_partial_annotations
from shared.tiff_io import read_mask_stack
from shared.tiling import TILE, dihedral


def load_mask_source(path: Path, split: str = "train") -> np.ndarray:
    """(N, 256, 256) uint8 {0, 1} masks from a tile store (its `split` tiles, else all) or a TIFF
    stack of 256x256 masks."""
    if path.is_dir():
        store, idx = source_tiles(path, split)
        return store.masks(idx)
    masks = read_mask_stack(path)
    if masks.shape[1:] != (TILE, TILE):
        raise UserError(f"{path}: masks are {masks.shape[2]}x{masks.shape[1]}; the generator needs "
                        f"{TILE}x{TILE} mask tiles (cut slices into a store: python -m shared.tiles build)")
    return masks


def load_pair_source(path: Path, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """The masks of load_mask_source with their own tiles, normalized float32 (N, 256, 256): from a
    tile store only (a TIFF stack of masks has no tiles)."""
    if not path.is_dir():
        raise UserError(f"{path}: a mask stack has no tiles to start from; --strength below 1 needs a "
                        "tile store (its tiles and masks)")
    store, idx = source_tiles(path, split)
    refuse_partial_annotations(store, "starting from a tile under its mask (--strength below 1)")
    return store.masks(idx), store.images(idx)


def elastic_grid(shape: tuple[int, int], rng: np.random.Generator, alpha: float = 8.0,
                 smooth: int = 32) -> torch.Tensor:
    """A smooth random displacement (up to ~alpha px) as a grid_sample grid (1, h, w, 2): coarse noise
    upsampled bicubically (smooth, no scipy needed)."""
    h, w = shape
    noise = rng.normal(0.0, 1.0, (1, 2, h // smooth + 1, w // smooth + 1)).astype(np.float32)
    field = F.interpolate(torch.from_numpy(noise), size=(h, w), mode="bicubic", align_corners=True)[0]
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    return torch.stack([xs + field[0] * 2 * alpha / w, ys + field[1] * 2 * alpha / h], dim=-1)[None]


def warp(array: np.ndarray, grid: torch.Tensor, mode: str) -> np.ndarray:
    """A 2-D array resampled on grid ('nearest' keeps masks binary; 'bilinear' for images), edges
    reflected; the array's dtype is kept."""
    src = torch.from_numpy(array.astype(np.float32))[None, None]
    out = F.grid_sample(src, grid, mode=mode, padding_mode="reflection", align_corners=True)[0, 0].numpy()
    return out.astype(array.dtype)


def elastic(mask: np.ndarray, rng: np.random.Generator, alpha: float = 8.0, smooth: int = 32) -> np.ndarray:
    """Smooth random displacement (up to ~alpha px) of a {0, 1} mask, nearest-neighbour resampled so
    it stays binary."""
    return warp(mask, elastic_grid(mask.shape, rng, alpha, smooth), "nearest").astype(np.uint8)


def varied_masks(source: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, list[dict]]:
    """n masks: a random source mask, a random dihedral transform, an elastic deformation; with a
    record of where each came from (for provenance)."""
    masks, _, origin = varied_pairs(source, None, n, seed)
    return masks, origin


def varied_pairs(masks: np.ndarray, images: np.ndarray | None, n: int, seed: int
                 ) -> tuple[np.ndarray, np.ndarray | None, list[dict]]:
    """varied_masks, and with images (the masks' own tiles, float) each image under its mask's
    transform and deformation (the same draws: the masks are varied_masks' for the same seed)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, *masks.shape[1:]), np.uint8)
    tiles = None if images is None else np.empty((n, *images.shape[1:]), np.float32)
    origin = []
    for i in range(n):
        j, k = int(rng.integers(len(masks))), int(rng.integers(8))
        grid = elastic_grid(masks.shape[1:], rng)
        out[i] = warp(dihedral(masks[j], k), grid, "nearest")
        if tiles is not None:
            tiles[i] = warp(dihedral(images[j], k).astype(np.float32), grid, "bilinear")
        origin.append({"mask_layout": "labelled", "mask_source_index": j, "dihedral": k})
    return out, tiles, origin
