"""How honest is background known only far from a judge's objects? The margin of the evidence grid's
copy_paste_far_negatives, chosen on the validation block.

    python -m bench.far_negatives                  # the matched grid's 256 px judge (its seed-0 cell)

A real-only segmenter trained on few labels (the judge) finds some mitochondria of an unlabelled slice
and misses others; taking everything it does not find as background teaches the missed ones as
background. Pixels far from every object it finds are safer: its misses lie mostly near its finds.
For margins of 0 (every pixel it calls background) to 32 px this prints and writes
(docs/far_negatives.json), on the validation block (where the margin is chosen: the smallest whose
known background holds under 1% mitochondria pixels) and on the training pool (what the recipe uses;
the benchmark's pool is labelled throughout, a user's is not): the share of pixels known, the share of
known pixels that are mitochondria, and the share of mitochondria pixels taught as background.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import ROOT, machine, print_table, shown_command
from bench.evidence import (
    COPY_PASTE_FAR,
    FAR_MARGIN,
    PRESETS,
    Bench,
    Layout,
    far_negatives,
    judge_threshold,
    known_background_shares,
    pseudo_kept_dir,
    results_file,
)
from bench.regions import parse_budget
from bench.synthetic_ablation import load_volume, run, slice_positions
from shared.atomic import write_json_atomic
from shared.errors import UserError, run_cli
from shared.tiff_io import read_mask_stack, write_stack

MARGINS = (0, 4, 8, 12, 16, 24, 32)  # px; 0: every pixel the judge calls background
MAX_SHARE = 0.01                     # mitochondria pixels among the known background, at most


def negatives_row(predicted: np.ndarray, real: np.ndarray, margin: int) -> dict:
    """Background known farther than `margin` px from every predicted object, against the real masks
    (boolean stacks): share of pixels known, of known pixels that are real foreground, and of real
    foreground pixels known as background."""
    shares = known_background_shares(far_negatives(predicted, margin) > 0, real)
    return {"margin_px": margin, **{key: round(v, 4) for key, v in zip(
        ("known", "known_foreground", "foreground_taught_background"), shares, strict=True)}}


def chosen_margin(rows: list[dict], max_share: float = MAX_SHARE) -> int | None:
    """The smallest margin whose known background holds at most `max_share` foreground (None: none)."""
    fits = [r["margin_px"] for r in rows if r["known_foreground"] <= max_share]
    return min(fits) if fits else None


def judged_validation(bench: Bench, k, version: int) -> np.ndarray:
    """The judge of k's masks (at its threshold of calibration `version`) on the validation pages,
    predicted once into the work folder."""
    folder = bench.work / f"k{k}" / f"far_negatives_val_c{version}"
    mask = folder / "predicted" / "mask.tif"
    if not mask.exists():
        folder.mkdir(parents=True, exist_ok=True)
        write_stack(folder / "val.tif", bench.images[bench.layout.val])
        threshold = judge_threshold(bench.judge(k), version)
        run(["segmentation_tf.predict", "--model", str(bench.judge(k)), "--images", str(folder / "val.tif"),
             "--out", str(folder / "predicted"), "--threshold", repr(threshold)], bench.log)
    return read_mask_stack(mask) > 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=parse_budget, default="256px", help="the grid budget whose judge labels "
                        "(default 256px)")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "evidence",
                        help="the evidence grid's work folder (its judge cell must be trained)")
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "far_negatives.json")
    args = parser.parse_args(argv)
    cfg = PRESETS["matched"]
    images, masks, _ = load_volume()
    layout = Layout.of(len(images), cfg, slice_positions())
    work = args.work / "matched"
    bench = Bench(cfg, work, images, masks, layout, work / "evidence.log",
                  kept=pseudo_kept_dir(results_file("matched")))
    if not (bench.judge(args.k) / "segmenter.json").exists():
        cell = f"k={args.k}|real_only|r=0|seed={cfg.seeds[0]}"
        raise UserError(f"{bench.judge(args.k)}: no judge here; run the grid's cell '{cell}' first "
                        "(python -m bench.evidence --preset matched --cell KEY)")
    version = COPY_PASTE_FAR.pseudo_masks
    bench.pseudo_store(args.k, version)  # the pool's pseudo-labels (kept ones where they match)
    pool = sorted(layout.pool)
    blocks = {"validation": (judged_validation(bench, args.k, version), masks[layout.val] > 0),
              "pool": (bench.pseudo_pages(args.k, version)[pool] > 0, masks[pool] > 0)}
    rows = {name: [negatives_row(predicted, real, m) for m in MARGINS]
            for name, (predicted, real) in blocks.items()}
    chosen = chosen_margin(rows["validation"])
    for name, block in rows.items():
        print_table(f"{name} block (judge {bench.judge(args.k).name} of k={args.k})", block, list(block[0]))
    print(f"chosen on the validation block: {chosen} px (copy_paste_far_negatives uses {FAR_MARGIN} px)")
    write_json_atomic(args.json, {
        "machine": {**machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
        "command": shown_command("bench.far_negatives", argv or sys.argv[1:]), "k": args.k,
        "judge": str(bench.judge(args.k).relative_to(args.work)),
        "threshold": judge_threshold(bench.judge(args.k), version), "calibration_version": version,
        "slices": {"validation": list(layout.val), "pool": pool}, "max_known_foreground": MAX_SHARE,
        "chosen_margin_px": chosen, "recipe_margin_px": FAR_MARGIN,
        "note": f"chosen on the validation block: {chosen} px, the smallest margin whose known background "
                f"holds at most {MAX_SHARE:.0%} mitochondria pixels (copy_paste_far_negatives uses "
                f"{FAR_MARGIN} px); judge: the grid's k={args.k} real-only cell of seed {cfg.seeds[0]}",
        "rows": [{"block": name, **row} for name, block in rows.items() for row in block]})
    print(f"wrote {args.json}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
