"""Slices <-> 256x256 tiles. Ingest tiling is a plain grid (1024x768 -> 4x3 = 12 tiles), other sizes
padded by reflection; whole-slice inference uses overlapping windows blended with a smooth weight, on
the slice mirrored by half the overlap at every edge."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

TILE = 256     # tile side in pixels: the stores, the generator, the segmenter
OVERLAP = 64   # default window overlap of whole-slice prediction (pixels)


def grid_origins(size: int, tile: int, overlap: int = 0) -> list[int]:
    """Tile origins along one axis: step tile - overlap, last window flush with the padded end."""
    if tile < 1 or not 0 <= overlap < tile:
        raise ValueError(f"need tile >= 1 and 0 <= overlap < tile, got tile={tile}, overlap={overlap}")
    step = tile - overlap
    n = max(1, -(-(size - overlap) // step)) if size > tile else 1
    return [i * step for i in range(n)]


def pad_reflect(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pad the last two axes at the bottom/right to (height, width) by mirror reflection."""
    pad_y, pad_x = height - image.shape[-2], width - image.shape[-1]
    if pad_y < 0 or pad_x < 0:
        raise ValueError(f"cannot pad {image.shape[-2:]} down to {(height, width)}")
    if pad_y == 0 and pad_x == 0:
        return image
    lead = [(0, 0)] * (image.ndim - 2)
    # numpy's 'reflect' repeats the reflection for pads longer than the image (1-pixel axes: edge copy)
    image = np.pad(image, [*lead, (0, pad_y), (0, 0)], mode="reflect")
    return np.pad(image, [*lead, (0, 0), (0, pad_x)], mode="reflect")


def tile_slice(image: np.ndarray, tile: int = TILE, overlap: int = 0
               ) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """One (H, W) slice -> (N, tile, tile) tiles and their (y, x) origins, row-major."""
    if image.ndim != 2:
        raise ValueError(f"expected one (H, W) slice, got shape {image.shape}")
    ys = grid_origins(image.shape[0], tile, overlap)
    xs = grid_origins(image.shape[1], tile, overlap)
    padded = pad_reflect(image, ys[-1] + tile, xs[-1] + tile)
    origins = [(y, x) for y in ys for x in xs]
    tiles = np.stack([padded[y:y + tile, x:x + tile] for y, x in origins])
    return tiles, origins


def stitch_tiles(tiles: np.ndarray, origins: list[tuple[int, int]], shape: tuple[int, int]) -> np.ndarray:
    """Inverse of a non-overlapping tile_slice: paste tiles back and crop to `shape` (exact)."""
    tile = tiles.shape[-1]
    height = max(y for y, _ in origins) + tile
    width = max(x for _, x in origins) + tile
    canvas = np.zeros((height, width), dtype=tiles.dtype)
    for t, (y, x) in zip(tiles, origins, strict=True):
        canvas[y:y + tile, x:x + tile] = t
    return canvas[: shape[0], : shape[1]]


def blend_window(tile: int, overlap: int) -> np.ndarray:
    """(tile, tile) float32 weights: 1 inside, raised-cosine ramps over `overlap` pixels at the edges.

    The ramp never reaches 0, so pixels covered by one window only (slice borders) keep their value.
    """
    ramp = np.ones(tile, np.float64)
    if overlap > 0:
        t = (np.arange(overlap) + 0.5) / overlap
        edge = 0.5 - 0.5 * np.cos(np.pi * t)
        ramp[:overlap] = edge
        ramp[-overlap:] = np.minimum(ramp[-overlap:], edge[::-1])
    return np.outer(ramp, ramp).astype(np.float32)


def predict_tiled(predict: Callable[[np.ndarray], np.ndarray], image: np.ndarray, tile: int = TILE,
                  overlap: int = OVERLAP, batch_size: int = 8) -> np.ndarray:
    """Run `predict` ((B, tile, tile) -> (B, tile, tile)) over overlapping windows of a whole (H, W)
    slice and blend the outputs; returns float32 (H, W)."""
    whole = ((0, image.shape[0]), (0, image.shape[1]))
    return predict_box(predict, image, (0, 0), image.shape, whole, tile, overlap, batch_size)


def reflect_index(index: np.ndarray, size: int) -> np.ndarray:
    """Source pixel of each (possibly out-of-range) index under numpy's 'reflect' padding (edge not
    repeated, reflections repeated for pads longer than the axis): the indices pad_reflect reads."""
    if size == 1:
        return np.zeros_like(index)
    period = 2 * (size - 1)
    folded = np.abs(index) % period
    return np.where(folded < size, folded, period - folded)


def border_margin(overlap: int) -> int:
    """Mirrored context added before the first and after the last pixel of a slice: half the window
    overlap, so border pixels get the context an interior pixel gets from its neighbour window (the
    halo bioimageio.core pads with; without it the outer band scored 0.47 IoU instead of 0.51)."""
    return overlap // 2


def window_origins(size: int, tile: int, overlap: int) -> list[int]:
    """Window origins along one axis of whole-slice prediction: the grid of the slice padded by
    border_margin on both sides, in slice coordinates (the first one is negative when the margin is
    not 0; pixels outside the slice are read by reflection)."""
    margin = border_margin(overlap)
    return [o - margin for o in grid_origins(size + 2 * margin, tile, overlap)]


def predict_box(predict: Callable[[np.ndarray], np.ndarray], block: np.ndarray, block_start: tuple[int, int],
                shape: tuple[int, int], box: tuple[tuple[int, int], tuple[int, int]], tile: int = TILE,
                overlap: int = 64, batch_size: int = 8) -> np.ndarray:
    """Blended prediction of `box` ((y0, y1), (x0, x1)) of an (H, W) = `shape` slice, from `block`, the
    slice's pixels starting at `block_start`. The windows are those of the whole slice's grid (the ones
    predict_tiled uses), blended in the same order, so cutting a slice into boxes gives predict_tiled's
    values box by box: this is what lets a volume be predicted chunk by chunk without seams.

    `block` must hold every pixel those windows read (their reflected sources past the slice's ends;
    one tile of context beyond the box is always enough)."""
    (y0, y1), (x0, x1) = box
    ys = [o for o in window_origins(shape[0], tile, overlap) if o < y1 and o + tile > y0]
    xs = [o for o in window_origins(shape[1], tile, overlap) if o < x1 and o + tile > x0]
    rows = reflect_index(np.arange(ys[0], ys[-1] + tile), shape[0]) - block_start[0]
    cols = reflect_index(np.arange(xs[0], xs[-1] + tile), shape[1]) - block_start[1]
    if rows.min() < 0 or cols.min() < 0 or rows.max() >= block.shape[0] or cols.max() >= block.shape[1]:
        raise ValueError(f"block of shape {block.shape} at {block_start} does not cover the windows of "
                         f"box {box}")
    padded = block[np.ix_(rows, cols)]  # the windows' pixels, reflected where they pass the slice's end
    origins = [(y - ys[0], x - xs[0]) for y in ys for x in xs]  # row-major, as predict_tiled blends them
    weight = blend_window(tile, overlap)
    total = np.zeros(padded.shape, np.float32)
    norm = np.zeros(padded.shape, np.float32)
    for start in range(0, len(origins), batch_size):
        batch = origins[start:start + batch_size]
        out = np.asarray(predict(np.stack([padded[y:y + tile, x:x + tile] for y, x in batch])), np.float32)
        for k, (y, x) in enumerate(batch):
            total[y:y + tile, x:x + tile] += out[k] * weight
            norm[y:y + tile, x:x + tile] += weight
    return (total / norm)[y0 - ys[0]:y1 - ys[0], x0 - xs[0]:x1 - xs[0]]


def dihedral(tiles: np.ndarray, k: int) -> np.ndarray:
    """Transform k in 0..7 of the last two axes: rotate by (k % 4) quarter turns, mirror if k >= 4."""
    out = np.rot90(tiles, k % 4, axes=(-2, -1))
    return out[..., ::-1] if k >= 4 else out


def inverse_dihedral(tiles: np.ndarray, k: int) -> np.ndarray:
    out = tiles[..., ::-1] if k >= 4 else tiles
    return np.rot90(out, -(k % 4), axes=(-2, -1))


def with_tta(predict: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    """Average a (B, T, T) -> (B, T, T) tile predictor over the 8 dihedral transforms, in one batch."""
    def predict_tta(tiles: np.ndarray) -> np.ndarray:
        views = np.concatenate([dihedral(tiles, k) for k in range(8)])
        out = np.asarray(predict(np.ascontiguousarray(views))).reshape(8, *tiles.shape)
        return np.mean([inverse_dihedral(out[k], k) for k in range(8)], axis=0).astype(np.float32)
    return predict_tta
