"""Copy-paste pairs, no generator: the labelled objects (mitochondria), each with its own pixels, pasted
at composed positions (generation_torch.layouts: new place, orientation and scale, elastically
deformed, never touching) onto real background tiles; each mask is the background's mask plus the
pasted objects. The standard baseline for synthetic pairs (Ghiasi et al. 2021, "Simple Copy-Paste"):
a generator's pairs earn their keep only where they beat these.

    python -m generation_torch.copy_paste --labelled STORE --n 128 --out SYNTH_STORE
        [--backgrounds STORE --seed 0 --grid tiles.png]

--labelled: a tile store whose masks hold the objects (its images give their pixels); --backgrounds: a
tile store whose tiles receive them, with its masks (default: the labelled store itself, real masks
only; pseudo-labels of unlabelled tiles miss some of their objects, which are then taught as
background: on the 256 px region of docs/evidence.md that undid the gain). Both read their train split
(all tiles where it is empty). Backgrounds annotated in part (shared.tiles build --annotated) give pairs
annotated in part: the background's area plus the pasted objects with their rings. Same seed, same
pairs.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from generation_torch import layouts
from generation_torch.layouts import ComposeConfig, Instance, Transform
from shared.console import on_terminal
from shared.errors import ArgumentParser, UserError, non_negative_int, positive_int, run_cli
from shared.normalization import denormalize
from shared.store import TileStore, refuse_real_store
from shared.tiling import TILE, dihedral


@dataclass(frozen=True)
class PasteConfig:
    # 4 px between objects (composed masks keep 2): room for each one's ring of own pixels
    compose: ComposeConfig = ComposeConfig(gap=4)
    ring: int = 2          # pixels around the mask carried with the object (its membrane lies on the edge)
    feather: float = 1.0   # std (pixels) of the alpha edge: no hard seam for a segmenter to learn

    @property
    def margin(self) -> int:
        return self.ring + math.ceil(3 * self.feather)


@dataclass(frozen=True)
class Cutout:
    """One transformed object: its mask, and its pixels and alpha with `margin` pixels around the mask's
    bounding box."""
    mask: np.ndarray     # (h, w) bool
    pixels: np.ndarray   # (h + 2 margin, w + 2 margin) float32, normalized
    alpha: np.ndarray    # same shape, 1 on the object and its ring, feathered to 0 beyond
    margin: int


def cut_out(inst: Instance, image: np.ndarray, how: Transform, config: PasteConfig) -> Cutout | None:
    """The instance's mask and pixels (from its tile `image`) under `how`; None if nothing is left."""
    m = config.margin
    rows = slice(max(inst.box[0].start - m, 0), min(inst.box[0].stop + m, image.shape[0]))
    cols = slice(max(inst.box[1].start - m, 0), min(inst.box[1].stop + m, image.shape[1]))
    frame = np.zeros((rows.stop - rows.start, cols.stop - cols.start), np.float32)
    top, left = inst.box[0].start - rows.start, inst.box[1].start - cols.start
    frame[top:top + inst.patch.shape[0], left:left + inst.patch.shape[1]] = inst.patch
    # the frame's own pixels only: outside it (a tile border) the transform fills zeros, not EM
    inside = layouts.applied(np.ones_like(frame), how) > 0.99
    mask = np.pad(layouts.applied(frame, how) > 0.5, m)
    pixels = np.pad(layouts.applied(image[rows, cols], how, order=3), m)  # cubic: keeps EM grain
    support = ndimage.binary_dilation(mask, iterations=config.ring) if config.ring else mask
    # truncated at 3 sigma: the alpha ends within the margin, nothing beyond it changes
    alpha = ndimage.gaussian_filter(support.astype(np.float32), config.feather, truncate=3.0)
    alpha *= np.pad(inside, m)
    box = layouts.bounding_box(mask)
    if box is None:
        return None
    grown = (slice(box[0].start - m, box[0].stop + m), slice(box[1].start - m, box[1].stop + m))
    return Cutout(mask[box], pixels[grown], alpha[grown], m)


def blend(tile: np.ndarray, cut: Cutout, y: int, x: int, keep: np.ndarray) -> None:
    """Alpha-blend the cutout's pixels into `tile` with its mask's top-left corner at (y, x) (clipped
    to the tile), except on `keep` (the other objects: a ring never darkens another object's edge)."""
    y0, x0 = y - cut.margin, x - cut.margin
    h, w = cut.pixels.shape
    ty = slice(max(y0, 0), min(y0 + h, tile.shape[0]))
    tx = slice(max(x0, 0), min(x0 + w, tile.shape[1]))
    part = (slice(ty.start - y0, ty.stop - y0), slice(tx.start - x0, tx.stop - x0))
    a = cut.alpha[part] * ~keep[ty, tx]
    tile[ty, tx] = a * cut.pixels[part] + (1 - a) * tile[ty, tx]


def paste_pairs(objects: tuple[np.ndarray, np.ndarray], backgrounds: tuple[np.ndarray, np.ndarray], n: int,
                seed: int, config: PasteConfig = PasteConfig(), progress: bool = False
                ) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """n pairs: normalized float32 (n, T, T) images and uint8 {0, 1} masks, each a background tile
    (random, under a random dihedral transform) with as many labelled objects pasted as a random
    labelled tile holds, and one record each saying how it was made. objects and backgrounds are
    (masks, normalized images) of tiles."""
    masks, images = objects
    bank = layouts.instances(masks, config.compose)
    if not bank:
        raise ValueError(f"the labelled masks hold no object of at least {config.compose.min_area} pixels "
                         "to paste")
    whole = [i for i in bank if i.interior] or bank
    counts = layouts.objects_per_tile(bank, len(masks))
    rng = np.random.default_rng(seed)
    out_images = np.empty((n, *backgrounds[1].shape[1:]), np.float32)
    out_masks = np.empty((n, *backgrounds[0].shape[1:]), np.uint8)
    records = []
    for t in tqdm(range(n), disable=not progress, desc="paste", unit="tile"):
        b, turn = int(rng.integers(len(backgrounds[0]))), int(rng.integers(8))
        tile = dihedral(backgrounds[1][b], turn).copy()
        below = dihedral(backgrounds[0][b], turn) > 0
        canvas = np.zeros_like(below)
        gap = config.compose.gap  # (scipy dilates until nothing changes at 0 iterations)
        blocked = ndimage.binary_dilation(below, iterations=gap) if gap else below.copy()
        placed = []
        for _ in range(int(rng.choice(counts))):
            inst = whole[int(rng.integers(len(whole)))]
            how = layouts.draw_transform(rng, config.compose)
            cut = cut_out(inst, images[inst.tile], how, config)
            keep = below | canvas  # before place() adds this object to the canvas
            where = None if cut is None else layouts.place(canvas, blocked, cut.mask, rng, config.compose)
            if where is not None:
                blend(tile, cut, *where, keep)
                placed.append({"from_tile": inst.tile, "y": where[0], "x": where[1], **how.record()})
        out_images[t], out_masks[t] = tile, below | canvas
        records.append({"mask_layout": "composed", "pasted": True, "layout_seed": seed, "layout_index": t,
                        "background": b, "background_dihedral": turn, "objects": placed})
    return out_images, out_masks, records


def pasted_areas(areas: np.ndarray, below: np.ndarray, masks: np.ndarray, records: list[dict],
                 config: PasteConfig = PasteConfig()) -> np.ndarray:
    """The annotated areas of pasted pairs whose backgrounds were annotated only in part (`areas`, with
    their masks `below`): each background's area under its turn, plus the pasted objects and their
    rings (their own pixels: known)."""
    out = np.empty_like(masks, dtype=np.uint8)
    for t, r in enumerate(records):
        b, turn = r["background"], r["background_dihedral"]
        pasted = (masks[t] > 0) & ~(dihedral(below[b], turn) > 0)
        ring = ndimage.binary_dilation(pasted, iterations=config.ring) if config.ring else pasted
        out[t] = (dihedral(areas[b], turn) > 0) | ring
    return out


def pair_tiles(path: Path) -> tuple[TileStore, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """A 256 px tile store, the indices of its train split (all tiles where that split is empty), and
    their (masks, normalized images)."""
    store, idx = layouts.source_tiles(path, "train")
    return store, idx, (store.masks(idx), store.images(idx))


def main(argv: Sequence[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m generation_torch.copy_paste", description=__doc__.splitlines()[0])
    p.add_argument("--labelled", type=Path, required=True, help="tile store of the labelled tiles (objects)")
    p.add_argument("--backgrounds", type=Path,
                   help="tile store of the tiles to paste onto, with their masks (default: the labelled "
                        "tiles themselves: real masks under every pasted object)")
    p.add_argument("--n", type=positive_int, default=64, help="pairs to make (default 64)")
    p.add_argument("--out", type=Path, required=True, help="synthetic tile store, created or appended to")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--grid", type=Path, help="also write a PNG of (up to 16) tiles beside their masks")
    args = p.parse_args(argv)
    labelled, labelled_idx, objects = pair_tiles(args.labelled)
    background_store, background_idx, backgrounds = (pair_tiles(args.backgrounds) if args.backgrounds
                                                     else (labelled, labelled_idx, objects))
    args.backgrounds = args.backgrounds or args.labelled
    refuse_real_store(args.out, "pasted pairs")
    try:
        images, masks, origins = paste_pairs(objects, backgrounds, args.n, args.seed,
                                             progress=not args.no_progress and on_terminal())
    except ValueError as exc:
        raise UserError(f"{args.labelled}: {exc}") from None
    print(layouts.layout_line(objects[0], masks, args.labelled.name, "pasted"))
    # backgrounds annotated in part: so are the pairs (their areas, and the pasted objects with rings)
    areas = pasted_areas(background_store.annotated(background_idx), backgrounds[0], masks, origins) \
        if background_store.partially_annotated else None
    store = TileStore.open_or_create(args.out, TILE, kind="synthetic", pixel_size=labelled.pixel_size)
    provenance = {"source": "copy_paste", "mask_source": str(args.labelled),
                  "backgrounds": str(args.backgrounds), "seed": args.seed, "split": "train"}
    records = [{**provenance, **o, "background": int(background_idx[o["background"]])} for o in origins]
    store.append(denormalize(images, np.uint8), masks, records, annotated=areas)  # background: its record
    if args.grid:
        from generation_torch import grids  # torch: only for the picture
        grids.save_pairs(args.grid, images, masks)
    print(f"wrote {args.n} pasted tiles + masks to {args.out} ({len(store)} tiles in the store)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
