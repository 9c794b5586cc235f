"""Labelled budgets below one slice: a square region of one slice, where it lies and its store.

A budget is written k: an int counts whole labelled slices (0: the whole training pool), "256px" is a
square region of that side on the first labelled slice (what a user who annotates part of one slice
has). Regions of one grid are nested (the smaller inside the larger) and placed where their
mitochondria fraction is nearest the whole slice's: the crop an annotator would pick as typical, not
the emptiest or fullest corner.
"""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.synthetic_ablation import make_store
from shared.errors import UserError
from shared.store import TileStore
from shared.tiles import tile_stack

Budget = int | str  # k whole slices (0: the whole pool) or "<side>px", a region of the first labelled slice
STRIDE = 64         # the region placement grid (px)


def region_side(k: Budget) -> int:
    """The side in px of a region budget ("256px"); 0 for whole slices."""
    if isinstance(k, int):
        return 0
    if not (k.endswith("px") and k[:-2].isdigit() and int(k[:-2]) > 0):
        raise UserError(f"labelled budget {k!r}: expected a slice count (0: the whole pool) or a region "
                        "side such as 256px")
    return int(k[:-2])


def parse_budget(text: str) -> Budget:
    """A command-line budget (an argparse type): "2" (slices) or "256px" (a region)."""
    if text.isdigit():
        return int(text)
    try:
        region_side(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def budget_order(k: Budget) -> tuple[int, int]:
    """Fewest labelled pixels first: regions by side, then slices by count, the whole pool last."""
    side = region_side(k)
    return (0, side) if side else (1, int(k) or 10 ** 6)


def budget_label(k: Budget) -> str:
    """How tables and figures name a budget."""
    if side := region_side(k):
        return f"{side} px region"
    return "whole pool" if k == 0 else f"{k} slice{'s' if int(k) > 1 else ''}"


@dataclass(frozen=True)
class Region:
    """A square region of a slice: its side, top-left corner and foreground (mitochondria) fraction."""
    size: int
    y: int
    x: int
    foreground: float

    def crop(self, slice_: np.ndarray) -> np.ndarray:
        """The region of a slice (a view: assigning into it writes the slice)."""
        return slice_[self.y:self.y + self.size, self.x:self.x + self.size]

    @property
    def corner(self) -> list[int]:
        """[y, x, side]: where the region lies, as stores, layouts and records write it."""
        return [self.y, self.x, self.size]


def corner_of(recorded: dict) -> list[int]:
    """[y, x, side] of a region as a results record holds it (dataclasses.asdict of a Region)."""
    return [recorded["y"], recorded["x"], recorded["size"]]


def foreground_fraction(mask: np.ndarray) -> float:
    return float(np.count_nonzero(mask)) / mask.size


def nested_regions(mask: np.ndarray, sizes: Sequence[int], stride: int = STRIDE) -> list[Region]:
    """Square regions of one slice's mask, largest first, each inside the one before, each placed on a
    stride grid where its foreground fraction is nearest the whole slice's (ties: the first in
    row-major order)."""
    target = foreground_fraction(mask)
    y0, x0, height, width = 0, 0, *mask.shape
    out: list[Region] = []
    for size in sorted(set(sizes), reverse=True):
        if size > min(height, width):
            raise UserError(f"a {size} px region does not fit in a {height}x{width} slice")
        corners = [(y, x) for y in range(y0, y0 + height - size + 1, stride)
                   for x in range(x0, x0 + width - size + 1, stride)]
        fractions = {c: foreground_fraction(mask[c[0]:c[0] + size, c[1]:c[1] + size]) for c in corners}
        y, x = min(corners, key=lambda c: (abs(fractions[c] - target), c))
        out.append(Region(size, y, x, fractions[(y, x)]))
        y0, x0, height, width = y, x, size, size
    return out


def budget_region(mask: np.ndarray, k: Budget, budgets: Sequence[Budget]) -> Region | None:
    """Where region budget k lies on the first labelled slice (mask), nested with the other region
    budgets of its grid; None for whole slices."""
    side = region_side(k)
    if not side:
        return None
    sides = {region_side(b) for b in budgets} - {0} | {side}
    return next(r for r in nested_regions(mask, sorted(sides)) if r.size == side)


def region_store(path: Path, images: np.ndarray, masks: np.ndarray, page: int, region: Region,
                 val: list[int]) -> Path:
    """A store whose train split is the region of page `page` (its tiles re-originated at the region's
    corner, so random crops never leave it) and whose val split is the validation block (none: the
    region alone); built in a temp folder and renamed (a killed build leaves no half store)."""
    if (path / "manifest.json").exists():
        return path
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    if val:
        make_store(tmp, images, masks, [], val)
    else:
        TileStore.create(tmp)
    tiles, mask_tiles, records = tile_stack(region.crop(images[page])[None], region.crop(masks[page])[None],
                                            "region", {0: "train"})
    TileStore(tmp).append(tiles, mask_tiles, [{**r, "slice": page, "region": region.corner} for r in records])
    tmp.rename(path)
    return path
