"""Whole slices back from a tile store: the grid tiles of each (file, slice) stitched together."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from shared.errors import UserError
from shared.store import TileStore
from shared.tiling import stitch_tiles


def slice_tiles(store: TileStore, idx: np.ndarray) -> list[tuple[np.ndarray, list[tuple[int, int]],
                                                                  tuple[int, int]]]:
    """The grid tiles of each (file, slice) among idx, in slice order: (members, their origins, the
    tile-padded slice shape)."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i in idx:
        r = store.records[int(i)]
        groups[(str(r.get("file")), int(r.get("slice", 0)))].append(int(i))
    t = store.tile_size
    out = []
    for key in sorted(groups):
        members = np.array(groups[key])
        origins = [(int(store.records[i]["y"]), int(store.records[i]["x"])) for i in members]
        out.append((members, origins, (max(y for y, _ in origins) + t, max(x for _, x in origins) + t)))
    return out


def slices_of(store: TileStore, idx: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Reassemble whole (tile-padded) slices from their grid tiles: [(image, mask)] per slice."""
    return [(stitch_tiles(store.images(members), origins, shape), stitch_tiles(store.masks(members), origins,
                                                                               shape))
            for members, origins, shape in slice_tiles(store, idx)]


def annotated_slices(store: TileStore, idx: np.ndarray) -> list[np.ndarray]:
    """The annotated areas of the same slices, in slices_of's order."""
    return [stitch_tiles(store.annotated(members), origins, shape)
            for members, origins, shape in slice_tiles(store, idx)]


def store_slices(store: TileStore, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Whole normalized slices + masks of a store split (tile-padded slices cropped back)."""
    idx = store.indices(split)
    if len(idx) == 0:
        raise UserError(f"{store.path}: no '{split}' tiles")
    pairs = slices_of(store, idx)
    rec = store.records[int(idx[0])]
    height, width = int(rec.get("height", pairs[0][0].shape[0])), int(rec.get("width", pairs[0][0].shape[1]))
    return (np.stack([img[:height, :width] for img, _ in pairs]),
            np.stack([m[:height, :width] for _, m in pairs]))
