"""New mask layouts from the labelled masks (numpy + scipy; no torch): mitochondria instances (the
connected components of the labelled masks) placed at new positions, orientations and scales,
elastically deformed, never touching one another, with as many objects per tile as the labelled
tiles have.

    masks, records = compose_masks(labelled_masks, n=128, seed=0)
    layout_stats(labelled_masks), layout_stats(masks)     # side by side

Why: flips and deformations of the labelled masks add little shape or layout the segmenter had not
seen; composed layouts put the same kind of objects in arrangements no labelled tile has.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from shared.errors import UserError
from shared.store import MANIFEST, TileStore
from shared.tiling import TILE


@dataclass(frozen=True)
class ComposeConfig:
    min_area: int = 30            # components smaller than this (pixels) are noise, not instances
    scale_range: float = 1.25     # object scale drawn log-uniformly in [1 / r, r]
    elastic_sigma: float = 2.0    # displacement std (pixels) of the per-object elastic deformation
    elastic_grid: int = 4         # control points per side of the displacement grid
    gap: int = 2                  # pixels kept free between objects (no touching, no overlaps)
    tries: int = 50               # placements tried per object before it is dropped


@dataclass(frozen=True)
class Instance:
    patch: np.ndarray    # (h, w) bool, the component cropped to its bounding box
    tile: int            # index of the labelled tile it came from
    interior: bool       # not cut by the tile border (whole shapes are preferred)
    box: tuple[slice, slice] = (slice(0), slice(0))  # where the patch lies in its tile


def instances(masks: np.ndarray, config: ComposeConfig = ComposeConfig()) -> list[Instance]:
    """Every connected component (8-connectivity) of at least min_area pixels."""
    out = []
    for t, mask in enumerate(np.asarray(masks) > 0):
        labels, _ = ndimage.label(mask, structure=np.ones((3, 3)))
        for label, box in enumerate(ndimage.find_objects(labels), start=1):
            patch = labels[box] == label
            if patch.sum() < config.min_area:
                continue
            touches = box[0].start == 0 or box[1].start == 0 or box[0].stop == mask.shape[0] \
                or box[1].stop == mask.shape[1]
            out.append(Instance(patch, t, not touches, box))
    return out


def objects_per_tile(found: list[Instance], tiles: int) -> np.ndarray:
    return np.bincount([inst.tile for inst in found], minlength=tiles).astype(np.int64)


@dataclass(frozen=True)
class Transform:
    """One object's random rotation, scale, mirror and elastic deformation (drawn once, applied to its
    mask and, for pasted objects, its pixels alike)."""
    angle: float
    scale: float
    mirror: bool
    coarse: np.ndarray | None  # (2, grid, grid) displacements at the control points (None: no elastic)

    def record(self) -> dict:
        return {"angle": round(self.angle, 1), "scale": round(self.scale, 3), "mirror": self.mirror}


def draw_transform(rng: np.random.Generator, config: ComposeConfig) -> Transform:
    angle = float(rng.uniform(0, 360))
    scale = float(np.exp(rng.uniform(-1, 1) * np.log(config.scale_range)))
    mirror = bool(rng.integers(2))
    coarse = rng.normal(0, config.elastic_sigma, (2, config.elastic_grid, config.elastic_grid)) \
        if config.elastic_sigma > 0 else None
    return Transform(angle, scale, mirror, coarse)


def applied(x: np.ndarray, how: Transform, order: int = 1) -> np.ndarray:
    """x (float, 0 outside the object's frame) mirrored, padded, scaled, rotated and deformed by `how`
    (the output grows to hold the rotated frame), each step interpolated at spline `order` (the same
    geometry at any order: a mask at 1, the pixels it carries at 3, which keeps more of their grain)."""
    x = np.pad(x[:, ::-1] if how.mirror else x, 4).astype(np.float32)
    x = ndimage.zoom(x, how.scale, order=order)
    x = ndimage.rotate(x, how.angle, order=order, reshape=True)
    if how.coarse is not None:
        field = [ndimage.zoom(c, np.divide(x.shape, c.shape), order=3) for c in how.coarse]
        grid = np.indices(x.shape, np.float32)
        x = ndimage.map_coordinates(x, [grid[0] + field[0], grid[1] + field[1]], order=order)
    return x


def bounding_box(mask: np.ndarray) -> tuple[slice, slice] | None:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if len(rows) == 0:
        return None
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def transformed(patch: np.ndarray, rng: np.random.Generator, config: ComposeConfig
                ) -> tuple[np.ndarray, dict]:
    """The patch rotated by a random angle, mirrored or not, scaled and elastically deformed."""
    how = draw_transform(rng, config)
    out = applied(patch, how) > 0.5
    box = bounding_box(out)
    if box is None:
        return out[:0, :0], {}
    return out[box], how.record()


def place(canvas: np.ndarray, blocked: np.ndarray, obj: np.ndarray, rng: np.random.Generator,
          config: ComposeConfig) -> tuple[int, int] | None:
    """Paste obj at a random position (it may leave the tile, as real objects do) where it overlaps
    no blocked pixel; returns (y, x) of its top-left corner, or None after config.tries attempts."""
    size_y, size_x = canvas.shape
    h, w = obj.shape
    for _ in range(config.tries):
        y, x = int(rng.integers(-h // 2, size_y - h // 2)), int(rng.integers(-w // 2, size_x - w // 2))
        ty, tx = slice(max(y, 0), min(y + h, size_y)), slice(max(x, 0), min(x + w, size_x))
        part = obj[ty.start - y:ty.stop - y, tx.start - x:tx.stop - x]
        if part.sum() < config.min_area or (blocked[ty, tx] & part).any():
            continue
        canvas[ty, tx] |= part
        grown = ndimage.binary_dilation(part, iterations=config.gap) if config.gap else part
        blocked[ty, tx] |= grown
        return y, x
    return None


def compose_masks(masks: np.ndarray, n: int, seed: int, config: ComposeConfig = ComposeConfig()
                  ) -> tuple[np.ndarray, list[dict]]:
    """n new (T, T) uint8 {0, 1} masks, each with as many objects as a random labelled tile, drawn
    from the labelled instances (whole ones where there are any); records say how each was made."""
    masks = np.asarray(masks)
    bank = instances(masks, config)
    if not bank:
        raise ValueError("the labelled masks hold no object of at least "
                         f"{config.min_area} pixels to compose new layouts from")
    whole = [i for i in bank if i.interior] or bank
    counts = objects_per_tile(bank, len(masks))
    rng = np.random.default_rng(seed)
    out = np.zeros((n, *masks.shape[1:]), np.uint8)
    records = []
    for k in range(n):
        canvas = np.zeros(masks.shape[1:], bool)
        blocked = np.zeros_like(canvas)
        placed = []
        for _ in range(int(rng.choice(counts))):
            inst = whole[int(rng.integers(len(whole)))]
            obj, how = transformed(inst.patch, rng, config)
            if obj.size and (where := place(canvas, blocked, obj, rng, config)) is not None:
                placed.append({"from_tile": inst.tile, "y": where[0], "x": where[1], **how})
        out[k] = canvas
        records.append({"mask_layout": "composed", "layout_seed": seed, "layout_index": k,
                        "objects": placed})
    return out, records


def layout_stats(masks: np.ndarray, config: ComposeConfig = ComposeConfig()) -> dict[str, float]:
    """Objects per tile, object area and foreground fraction: what composed layouts must match."""
    masks = np.asarray(masks) > 0
    found = instances(masks, config)
    areas = [int(i.patch.sum()) for i in found]
    counts = objects_per_tile(found, len(masks))
    return {"tiles": len(masks), "objects_per_tile_mean": float(counts.mean()),
            "objects_per_tile_std": float(counts.std()),
            "object_area_median": float(np.median(areas)) if areas else 0.0,
            "object_area_mean": float(np.mean(areas)) if areas else 0.0,
            "foreground_fraction": float(masks.mean())}


def layout_line(source: np.ndarray, made: np.ndarray, source_name: str, how: str,
                config: ComposeConfig = ComposeConfig()) -> str:
    """The layout statistics of the masks objects came from beside those of the masks made of them, for
    the console: e.g. `objects_per_tile_mean: 2 in labelled / 2.1 composed`."""
    before, after = layout_stats(source, config), layout_stats(made, config)
    keys = ("objects_per_tile_mean", "object_area_median", "foreground_fraction")
    return "layouts  " + "  ".join(f"{k}: {before[k]:.3g} in {source_name} / {after[k]:.3g} {how}"
                                   for k in keys)


def source_tiles(path: Path, split: str) -> tuple[TileStore, np.ndarray]:
    """A 256 px tile store and its `split` indices (all where that split is empty): where masks to
    compose or vary, and pairs to paste or start from, are read."""
    if not (path / MANIFEST).exists():
        raise UserError(f"{path}: not a tile store (no {MANIFEST})")
    store = TileStore(path)
    if store.tile_size != TILE:
        raise UserError(f"{path}: store holds {store.tile_size}px tiles; the generator makes {TILE}px")
    idx = store.indices(split)
    idx = idx if len(idx) else store.indices()
    if len(idx) == 0:
        raise UserError(f"{path}: the store is empty, no masks to condition on")
    return store, idx
