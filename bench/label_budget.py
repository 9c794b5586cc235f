"""Below one labelled slice: held-out IoU of a real-only segmenter when a user annotates only a square
region of one slice.

    python -m bench.label_budget                    # regions of 256 and 512 px, seed 0; resumable
    python -m bench.label_budget --size 512 --seed 1

On the EPFL subset two labelled slices already reach the whole training pool under the evidence grid's
budget (bench.evidence --preset matched, seed 0: k = 2 0.889, the whole pool 0.887), so at slice-sized
label budgets there is little gap for generated pairs to fill. This probe asked where one would be,
and since 2026-12-06 the grid's own budgets are its regions (bench.evidence SUB_SLICE). It runs the
grid's real-only cell of a region budget (bench.regions: nested regions of the first labelled slice
where their mitochondria fraction is nearest the whole slice's; the same flags, steps, ending,
precision and XLA rules, validation block and test block) for any region sides and seeds, each side
in its own work folder. Results per cell in docs/label_budget.json, beside the grid's real-only figures.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, replace
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
from bench.regions import Budget, budget_label, budget_order, corner_of, foreground_fraction, region_side
from bench.stats import t_interval
from bench.synthetic_ablation import load_volume, slice_positions
from shared.atomic import write_json_atomic
from shared.errors import non_negative_int, positive_int, run_cli
from shared.tiff_io import write_stack

PRESET = "matched"  # the grid whose budget, layout and test block the probe shares
SIZES = (256, 512)  # region sides in px: one tile (1/12 of a 1024x768 slice) and a third of a slice


def cell_key(size: int, seed: int) -> str:
    return f"region={size}|seed={seed}"


def run_region(size: int, seed: int, base: Bench) -> dict:
    """The grid's real-only cell of region budget `size` (its own work folder), as the grid records
    it (the region with it), plus its labelled pixels."""
    work = base.work / f"region{size}"
    work.mkdir(parents=True, exist_ok=True)
    bench = replace(base, work=work, log=work / "label_budget.log")
    for path, stack in zip(bench.test, (base.images[base.layout.test], base.masks[base.layout.test]),
                           strict=True):
        if not path.exists():
            write_stack(path, stack)
    return {**run_cell(Cell(f"{size}px", "real_only", 0.0, seed), bench), "labelled_pixels": size ** 2}


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
    """The grid's real-only cells per labelled budget, for the rows beside the probe's regions."""
    by_k: dict[Budget, list[dict]] = {}
    for c in results.values():
        if c["arm"] == "real_only":
            by_k.setdefault(c["k"], []).append(c)
    return [summary_row(f"{budget_label(k)} (grid)", cells)
            for k, cells in sorted(by_k.items(), key=lambda kv: budget_order(kv[0]))]


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
    grid_cfg = PRESETS[PRESET]
    # the grid's cell on these region budgets, nested with the grid's own regions (so a 256 px region
    # is the grid's; a size the grid lacks nests between them and may move them: such cells run again)
    grid_sides = {region_side(k) for k in grid_cfg.ks} - {0}
    cfg = replace(grid_cfg, ks=tuple(f"{s}px" for s in sorted(grid_sides | set(sizes))))
    images, masks, source = load_volume()
    layout = Layout.of(len(images), grid_cfg, slice_positions())
    native = native_precision()
    base = Bench(cfg, args.work, images, masks, layout, args.work / "label_budget.log", native=native,
                 native_xla=args.xla and xla_measured_faster(native))
    regions = {s: base.region(f"{s}px") for s in sizes}
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
            if key in records and corner_of(records[key]["region"]) == regions[size].corner:
                continue
            print(f"{key} (region y {regions[size].y}, x {regions[size].x}, foreground "
                  f"{regions[size].foreground:.3f}) ...", flush=True)
            records[key] = run_region(size, seed, base)
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
