"""Below one labelled slice: held-out IoU of a real-only segmenter when a user annotates only a square
region of one slice.

    python -m bench.label_budget                    # regions of 256 and 512 px, seed 0; resumable
    python -m bench.label_budget --size 512 --seed 1

On the EPFL subset two labelled slices already reach the whole training pool under the evidence grid's
budget (bench.evidence --preset matched, seed 0: k = 2 0.889, the whole pool 0.887), so at slice-sized
label budgets there is little gap for generated pairs to fill. This probe asks where one would be: it
trains the grid's real-only arm (the same flags, steps, ending, precision and XLA rules, validation
block and test block) on a region of the grid's first labelled slice, and scores it on the grid's
test block. Regions are nested (the smaller inside the larger) and placed where their mitochondria
fraction is nearest the whole slice's: the crop an annotator would pick as typical, not the emptiest
or fullest corner. Results per cell in docs/label_budget.json, beside the grid's real-only figures.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from bench.common import ROOT, machine, print_table, shown_command
from bench.evidence import (
    PRESETS,
    Bench,
    Cell,
    Layout,
    native_precision,
    read_saved,
    results_file,
    run_cell,
    xla_measured_faster,
)
from bench.stats import t_interval
from bench.synthetic_ablation import load_volume, make_store, slice_positions
from shared.atomic import write_json_atomic
from shared.errors import UserError, non_negative_int, positive_int, run_cli
from shared.store import TileStore
from shared.tiff_io import write_stack
from shared.tiles import tile_stack

PRESET = "matched"  # the grid whose budget, layout and test block the probe shares
SIZES = (256, 512)  # region sides in px: one tile (1/12 of a 1024x768 slice) and a third of a slice
STRIDE = 64         # the region placement grid (px)


@dataclass(frozen=True)
class Region:
    """A square region of a slice: its side, top-left corner and foreground (mitochondria) fraction."""
    size: int
    y: int
    x: int
    foreground: float

    def crop(self, slice_: np.ndarray) -> np.ndarray:
        return slice_[self.y:self.y + self.size, self.x:self.x + self.size]


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


def region_store(path: Path, images: np.ndarray, masks: np.ndarray, page: int, region: Region,
                 val: list[int]) -> Path:
    """A store whose train split is the region of page `page` (its tiles re-originated at the region's
    corner, so random crops never leave it) and whose val split is the validation block; built in a
    temp folder and renamed (a killed build leaves no half store)."""
    if (path / "manifest.json").exists():
        return path
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    make_store(tmp, images, masks, [], val)
    tiles, mask_tiles, records = tile_stack(region.crop(images[page])[None], region.crop(masks[page])[None],
                                            "region", {0: "train"})
    corner = [region.y, region.x, region.size]
    TileStore(tmp).append(tiles, mask_tiles, [{**r, "slice": page, "region": corner} for r in records])
    tmp.rename(path)
    return path


@dataclass(frozen=True)
class RegionBench(Bench):
    """The grid's Bench with one labelled region instead of whole labelled slices: run_cell trains and
    scores a cell on it exactly as the grid does (one implementation of a cell)."""
    region: Region | None = None

    def store(self, k: int) -> Path:
        if self.region is None:
            raise ValueError("RegionBench without a region")
        return region_store(self.work / "store", self.images, self.masks, self.layout.first, self.region,
                            self.layout.val)


def cell_key(size: int, seed: int) -> str:
    return f"region={size}|seed={seed}"


def run_region(region: Region, seed: int, base: RegionBench) -> dict:
    """One real-only cell on the region (its own work folder), as the grid's record plus the region."""
    work = base.work / f"region{region.size}"
    work.mkdir(parents=True, exist_ok=True)
    bench = replace(base, work=work, log=work / "label_budget.log", region=region)
    for path, stack in zip(bench.test, (base.images[base.layout.test], base.masks[base.layout.test]),
                           strict=True):
        if not path.exists():
            write_stack(path, stack)
    record = run_cell(Cell(1, "real_only", 0.0, seed), bench)
    return {**record, "region": asdict(region), "labelled_pixels": region.size ** 2}


def summary_row(labelled: str, cells: list[dict]) -> dict:
    """Mean test IoU of some seeds' cells, with its 95% t interval where two or more seeds give one."""
    values = [c["test_iou"] for c in cells]
    row = {"labelled": labelled, "seeds": sorted(c["seed"] for c in cells),
           "precision": "/".join(sorted({c["precision"] for c in cells})),
           "test_iou": round(float(np.mean(values)), 4)}
    if len(values) > 1:
        interval = t_interval(values)
        row["ci95"] = [round(interval["low"], 4), round(interval["high"], 4)]
    return row


def grid_real_only(results: dict) -> list[dict]:
    """The grid's real-only cells per k (whole slices), for the rows beside the regions."""
    by_k: dict[int, list[dict]] = {}
    for c in results.values():
        if c["arm"] == "real_only":
            by_k.setdefault(c["k"], []).append(c)
    return [summary_row("whole pool" if k == 0 else f"{k} slice{'s' if k > 1 else ''}", cells)
            for k, cells in sorted(by_k.items(), key=lambda kv: kv[0] or 10 ** 6)]


def region_rows(records: dict, slice_px: int) -> list[dict]:
    by_size: dict[int, list[dict]] = {}
    for r in records.values():
        by_size.setdefault(r["region"]["size"], []).append(r)
    return [summary_row(f"{size}x{size} px of 1 slice ({size * size / slice_px:.2f} of it)", cells)
            for size, cells in sorted(by_size.items())]


def gaps_to_pool(records: dict, grid: dict) -> list[dict]:
    """Whole pool minus region, paired by seed where the grid holds the whole pool's cell of that seed."""
    pool = {c["seed"]: c for c in grid.values() if c["arm"] == "real_only" and c["k"] == 0}
    return [{"cell": key, "gap_to_whole_pool": round(pool[r["seed"]]["test_iou"] - r["test_iou"], 4),
             "same_precision": pool[r["seed"]]["precision"] == r["precision"]}
            for key, r in sorted(records.items()) if r["seed"] in pool]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=positive_int, action="append",
                        help=f"region side in px (repeatable; default {' and '.join(map(str, SIZES))})")
    parser.add_argument("--seed", type=non_negative_int, action="append", help="seed (repeatable; default 0)")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "label_budget", help="scratch folder")
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "label_budget.json",
                        help="results (resumable; one record per region and seed)")
    parser.add_argument("--xla", action=argparse.BooleanOptionalAction, default=True,
                        help="train XLA-compiled where that was measured faster (as the grid opens groups)")
    args = parser.parse_args(argv)
    sizes, seeds = args.size or list(SIZES), args.seed or [0]
    cfg = PRESETS[PRESET]
    images, masks, source = load_volume()
    layout = Layout.of(len(images), cfg, slice_positions())
    regions = {r.size: r for r in nested_regions(masks[layout.first], sizes)}
    native = native_precision()
    base = RegionBench(cfg, args.work, images, masks, layout, args.work / "label_budget.log", native=native,
                 native_xla=args.xla and xla_measured_faster(native))
    saved = read_saved(args.json)
    records: dict[str, dict] = saved.get("results_by_cell", {})
    grid = read_saved(results_file(PRESET)).get("results_by_cell", {})
    slice_px = int(masks.shape[1] * masks.shape[2])

    def save() -> None:
        write_json_atomic(args.json, {  # a killed probe keeps what it measured
            "machine": machine(),
            "command": shown_command("bench.label_budget", sys.argv[1:] if argv is None else list(argv)),
            "source": source, "grid": f"bench.evidence --preset {PRESET} (docs/{results_file(PRESET).name})",
            "slices": {"labelled_page": layout.first, "labelled_z": layout.z[layout.first],
                       "val": layout.val, "test": layout.test,
                       "slice_foreground": round(foreground_fraction(masks[layout.first]), 4)},
            "regions": {str(s): asdict(r) for s, r in sorted(regions.items())},
            "rows": region_rows(records, slice_px) + grid_real_only(grid),
            "gaps": gaps_to_pool(records, grid), "results_by_cell": records,
            "note": "regions: train tiles of one square region of the grid's first labelled slice; every "
                    "other setting is the grid's real-only cell (segmenter flags, validation block, test "
                    "block, threshold calibration). Rows of whole slices come from the grid's JSON; "
                    "their precision may differ from the regions' (see each row)"})

    for seed in seeds:
        for size in sizes:
            key = cell_key(size, seed)
            if key in records:
                continue
            print(f"{key} (region y {regions[size].y}, x {regions[size].x}, foreground "
                  f"{regions[size].foreground:.3f}) ...", flush=True)
            records[key] = run_region(regions[size], seed, base)
            save()
            print(f"  test IoU {records[key]['test_iou']:.4f}, val IoU {records[key]['val_iou']:.4f} "
                  f"({records[key]['minutes']} min)", flush=True)
    save()
    print_table("Real only below one labelled slice (test IoU on the grid's held-out block)",
                region_rows(records, slice_px) + grid_real_only(grid),
                ["labelled", "seeds", "precision", "test_iou", "ci95"])
    print(f"results in {args.json}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
