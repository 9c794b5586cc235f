r"""Generator levers on the validation block: how closely each recipe's tiles follow their masks and how
real they look, per guidance scale, so the guidance a recipe draws at is chosen where a user would
choose it (validation slices, never the test block).

    python -m bench.generator_levers                                   # k = 1: spade, minsnr at 1.5/2/3/5
    python -m bench.generator_levers --k 2 --recipes minsnr --guidances 2,3
    python -m bench.generator_levers --preset matched --k 256px --recipes vpred --guidances 1.5,2 \
        --results docs/generator_levers_matched.json --figure docs/generator_levers_256px_RECIPE.png

Generators are the evidence grid's (`bench.evidence --preset final`, the same folders: trained once,
reused by the grid). The judge is the grid's real-only segmenter of the same k slices, seed 0 (trained
here when absent; a user has only those labels). One row per (k, recipe, guidance), written to
docs/generator_levers.json as it finishes; a rerun skips finished rows (a row of an older two-sample
test runs again). Per recipe, the chosen guidance
is the lowest that reaches the mask-fidelity goal (0.9 of the judge on real validation tiles), else the
one with the highest fidelity.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from bench.common import ROOT, machine, shown_command
from bench.evidence import (
    PRESETS,
    Bench,
    Cell,
    Layout,
    claim_work,
    grid_precisions,
    native_precision,
    pseudo_kept_dir,
    results_file,
    run_cell,
    two_sample_current,
)
from bench.regions import parse_budget
from bench.synthetic_ablation import load_volume, slice_positions
from shared.atomic import write_json_atomic
from shared.errors import run_cli
from shared.tiff_io import write_stack

FIDELITY_GOAL = 0.9  # of the judge's IoU on real validation tiles (the generator issue's goal)


def val_tiles(bench: Bench):
    """The validation block as 256 px tiles (a TileStore), for the judge and the realism figures."""
    from bench.synthetic_variants import held_out_tile_store

    folder = bench.work / "val_block"
    folder.mkdir(parents=True, exist_ok=True)
    pair = folder / "images.tif", folder / "masks.tif"
    if not pair[0].exists():
        write_stack(pair[0], bench.images[bench.layout.val])
        write_stack(pair[1], bench.masks[bench.layout.val])
    return held_out_tile_store(pair, folder)


def real_figures(bench: Bench, judge: Path) -> dict:
    """The floors: the judge on real validation tiles, realism of real pool tiles against them."""
    from bench.synthetic_variants import fidelity
    from generation_torch.metrics import realism
    from generation_torch.two_sample import c2st_figures
    from shared.store import TileStore

    val, pool = val_tiles(bench), TileStore(bench.store(0))
    pool_tiles, val_images = pool.images(pool.indices("train")), val.images(val.indices())
    floor = realism(pool_tiles, val_images)
    return {"judge_on_real_val": round(fidelity(val, judge)["fidelity_iou"], 4),
            "floor_hist_w1": round(floor["hist_w1"], 4),
            "floor_spectrum_dist": round(floor["spectrum_dist"], 4),
            "floor_c2st_accuracy": c2st_figures(pool_tiles, val_images)["c2st_accuracy"]}


def saved_rows(path: Path) -> tuple[dict[tuple, dict], list[str]]:
    """A results file's rows by (k, recipe, guidance), and every command that wrote rows there,
    oldest first (a file from before the list: its one command)."""
    saved = json.loads(path.read_text()) if path.is_file() else {}
    rows = {(r["k"], r["recipe"], r["guidance"]): r for r in saved.get("rows", [])}
    return rows, saved.get("commands", [saved["command"]] if "command" in saved else [])


def lever_row(bench: Bench, cell: Cell, guidance: float, judge: Path, floors: dict) -> dict:
    """Draw the recipe's tiles at `guidance` and measure them against the validation block."""
    from bench.synthetic_variants import fidelity
    from generation_torch.metrics import realism
    from generation_torch.two_sample import c2st_figures
    from shared.store import TileStore

    start = time.time()
    recipe = bench.cfg.recipe(cell.recipe)
    store = TileStore(bench.generator(cell, replace(recipe.sampling, guidance=guidance)))
    val = val_tiles(bench)
    generated, real = store.images(store.indices()), val.images(val.indices())
    fid = fidelity(store, judge)["fidelity_iou"]
    started = {"strength": recipe.sampling.strength, "masks_from": recipe.masks_from} \
        if recipe.sampling.strength < 1 else {}  # tiles started from real ones (SDEdit)
    return {"k": cell.k, "recipe": cell.recipe, "guidance": guidance, "mask_source": recipe.mask_source,
            "texture": recipe.sampling.texture, **started, "tiles": len(store), "fidelity_iou": round(fid, 4),
            **floors, "fidelity_share": round(fid / floors["judge_on_real_val"], 3),
            **{k: round(v, 4) for k, v in realism(generated, real).items()},
            **c2st_figures(generated, real),
            "minutes": round((time.time() - start) / 60, 2)}


def lever_figure(path: Path, bench: Bench, cell: Cell, guidances: list[float], n: int = 4) -> None:
    """The n validation tiles with the most mitochondria beside their masks (top row), then per
    guidance the recipe's first n drawn tiles beside theirs: what the figures measure, to the eye."""
    import numpy as np

    from generation_torch.grids import pair_grid, save_png, stack_rows, to_unit
    from shared.store import TileStore

    val, sampling = val_tiles(bench), bench.cfg.recipe(cell.recipe).sampling
    drawn = [TileStore(bench.synthetic_dir(cell, replace(sampling, guidance=g))) for g in guidances]
    shown = [(val, sorted(val.indices(), key=lambda i: -float(val.masks([i]).mean()))[:n])]
    shown += [(store, store.indices()[:n]) for store in drawn]
    rows = [pair_grid(to_unit(store.images(i)), store.masks(i).astype(np.float32), columns=n)
            for store, i in shown]
    save_png(path, stack_rows(rows))


def chosen_guidance(rows: list[dict]) -> dict[str, float]:
    """Per (k, recipe): the lowest guidance reaching the fidelity goal, else the most faithful one."""
    out = {}
    for key in sorted({(r["k"], r["recipe"]) for r in rows}):
        own = sorted((r for r in rows if (r["k"], r["recipe"]) == key), key=lambda r: r["guidance"])
        met = [r for r in own if r["fidelity_share"] >= FIDELITY_GOAL]
        best = met[0] if met else max(own, key=lambda r: r["fidelity_iou"])
        out[f"k={key[0]}|{key[1]}"] = best["guidance"]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=parse_budget, default=1,
                        help="labelled budget: slices (the grid's nested runs) or a region, e.g. 256px")
    parser.add_argument("--recipes", default="spade,minsnr", help="comma-separated recipe names")
    parser.add_argument("--guidances", default="1.5,2,3,5", help="comma-separated guidance scales")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="final")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "evidence", help="scratch folder")
    parser.add_argument("--results", type=Path, default=ROOT / "docs" / "generator_levers.json")
    parser.add_argument("--figure", type=Path, default=None, metavar="PNG",
                        help="also draw real validation tiles (top) and each guidance's tiles, per recipe "
                             "(RECIPE in the name is replaced by the recipe's)")
    args = parser.parse_args(argv)
    cfg = PRESETS[args.preset]
    names = [n for n in args.recipes.split(",") if n]
    known = [r.name for r in (*cfg.recipes, *cfg.side_recipes) if not cfg.pastes(r.name)]  # no guidance
    unknown = sorted(set(names) - set(known))
    if unknown:
        parser.error(f"unknown recipe(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    images, masks, _ = load_volume()
    work = args.work / args.preset
    work.mkdir(parents=True, exist_ok=True)
    layout = Layout.of(len(images), cfg, slice_positions())
    claim_work(work, layout, cfg)
    # the judge is the grid's own cell: it trains in its pairing group's recorded precision, if any;
    # pseudo-labels are the grid's kept ones where they match, so levers and grid learn from the same
    bench = Bench(cfg, work, images, masks, layout, work / "evidence.log", native=native_precision(),
                  precisions=grid_precisions(args.preset), kept=pseudo_kept_dir(results_file(args.preset)))
    rows, _ = saved_rows(args.results)
    command = shown_command("bench.generator_levers", sys.argv[1:] if argv is None else argv)
    judge_cell = Cell(args.k, "real_only", 0.0, cfg.seeds[0])
    run_cell(judge_cell, bench)  # the grid's own cell: trained once, reused by the grid
    judge = bench.judge(args.k)
    floors = real_figures(bench, judge)
    for name in names:
        for guidance in (float(g) for g in args.guidances.split(",")):
            if two_sample_current(rows.get((args.k, name, guidance), {})):
                continue  # finished; a row of an older two-sample test is measured again
            cell = Cell(args.k, "images_plentiful", cfg.lever_ratio, 0, name)
            row = lever_row(bench, cell, guidance, judge, floors)
            print(json.dumps(row), flush=True)
            # read again: another run may have written rows since this one started (hours of training)
            rows, commands = saved_rows(args.results)
            rows[(args.k, name, guidance)] = row
            commands = list(dict.fromkeys([*commands, command]))
            ordered = sorted(rows.values(), key=lambda r: (r["k"], r["recipe"], r["guidance"]))
            write_json_atomic(args.results, {
                "machine": machine(),
                "command": command, "commands": commands,
                "summary": "validation block only: fidelity judged by the real-only segmenter of the same k "
                           f"slices (goal {FIDELITY_GOAL} of its score on real validation tiles); realism "
                           "against the validation tiles beside the real pool's floor",
                "slices": {"val": bench.layout.val, "labelled": bench.layout.labelled(args.k, cfg)},
                "chosen_guidance": chosen_guidance(ordered), "rows": ordered})
        if args.figure:
            cell = Cell(args.k, "images_plentiful", cfg.lever_ratio, 0, name)
            figure = args.figure.with_name(args.figure.name.replace("RECIPE", name))
            lever_figure(figure, bench, cell, [float(g) for g in args.guidances.split(",")])
            print(f"figure in {figure}")
    print(f"results in {args.results}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
