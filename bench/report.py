"""Regenerate docs/results.md from the JSON the benchmarks and experiments wrote into docs/.

    python -m bench.report            # after any of: bench.tiles, bench.generator, bench.segmentation,
                                      # bench.onnx, bench.synthetic_ablation, segmentation/generator evals
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.common import ROOT
from shared.errors import run_cli

DOCS = ROOT / "docs"
SECTIONS = [
    ("bench_tiles.json", "Tile store throughput"),
    ("bench_generator.json", "Generator speed and realism"),
    ("bench_segmentation.json", "Segmenter speed"),
    ("bench_segmentation_xla.json", "Segmenter training with and without XLA (a CPU without avx512)"),
    ("bench_onnx.json", "onnxruntime vs native frameworks"),
    ("bench_onnx_precision.json", "Reduced precision in onnxruntime (int8 on CPU)"),
    ("bench_volumes.json", "Whole volumes with Dask: memory, workers, time per slice"),
    ("bioimageio_epfl.json", "The bioimage.io package through bioimageio.core vs segmentation_tf.evaluate"),
    ("segmentation_epfl.json", "Segmenter quality on held-out real EPFL slices"),
    ("endings.json", "How a --preset real run should end: four endings of one training, scored on the "
                     "evidence grid's held-out test block"),
    ("label_budget.json", "Real only below one labelled slice: a square region of one slice, the evidence "
                          "grid's budget and blocks (bench.label_budget)"),
    ("feature_labels.json", "Pixel classifiers on one labelled region: the generator's denoiser features and "
                            "classic filters beside the grid's judge (bench.feature_labels)"),
    ("far_negatives.json", "Background known only far from the judge's objects: the margin of "
                           "copy_paste_far_negatives (bench.far_negatives)"),
    ("generator_epfl.json", "Generator quality on held-out real EPFL slices"),
    ("evidence.json",
     "The evidence instrument, standard preset (restore-best; before the border-mirroring tiler)"),
    ("evidence_final.json",
     "The evidence instrument (--preset final: last weights + EMA 0.99; generator recipes)"),
    ("evidence_matched.json",
     "The evidence instrument on the reference's tiles and tile count, EMA ending, BatchNorm statistics "
     "recomputed (--preset matched)"),
    ("evidence_thresholds.json",
     "The matched grid's saved segmenters rescored on the test block: validation-calibrated threshold, "
     "0.5, and the test block's own best (an oracle)"),
    ("edge_profiles.json",
     "How drawn tiles draw objects at their mask edges: object contrast and edge profiles per guidance, "
     "beside real slices"),
    ("evidence_matched_best.json",
     "The evidence instrument at matched's budget, best validation epoch, training-time BatchNorm "
     "statistics (--preset matched_best)"),
    ("evidence_matched_ema.json",
     "The evidence instrument at matched's budget, EMA ending, training-time BatchNorm statistics "
     "(--preset matched_ema; whole pool 0.042 short)"),
    ("evidence_tiles.json",
     "The evidence instrument on 256 px tiles at 720 steps (--preset tiles; whole pool 0.041 short)"),
    ("evidence_long.json",
     "The evidence instrument at 2000 steps (--preset long: final at 2.5x the steps; refuted budget)"),
    ("generator_levers.json",
     "Generator levers on the validation block: mask fidelity and realism per guidance"),
    ("generator_levers_matched.json",
     "Generator levers on the matched grid's generators (validation block; the 256 px region): mask "
     "fidelity and realism per guidance"),
    ("latent_stats.json", "Where generated tiles leave the real distribution: latents and decoded tiles"),
    ("latent_stats_vpred.json", "The same for the v-prediction denoiser (the vpred rung)"),
    ("latent_stats_256px_vpred.json",
     "The same for the matched grid's 256 px vpred generator (validation block): the denoiser restores "
     "structure from noised real latents, its drawn tiles lack it"),
    ("latent_stats_256px_vpred_f8.json", "The same for its d = 8 side recipe (vpred_f8)"),
    ("synthetic_ablation.json", "Does synthetic data help? (synthetic-ratio ablation, superseded)"),
    ("synthetic_variants.json", "What would make generated tiles help? (k = 2 variants)"),
    ("synthetic_variants_unseeded.json", "k = 2 variants, first run (unseeded weights, superseded)"),
    ("synthetic_ablation_guidance2.json", "Synthetic tiles that ignore their masks (guidance 2, superseded)"),
]

TABLE_TITLES = {
    "gains": "Paired gain of synthetic tiles per recipe: IoU(arm) - IoU(real only), same slices and seed; "
             "gap_closed: the gain over (real only on the whole pool - real only at k)",
    "controls": "The main recipe's arm - each of its controls, paired by seed: self-training (its "
                "pseudo-labels, no generator), its generator drawn otherwise (SDEdit), no generator at all "
                "(copy_paste: the labelled objects' own pixels pasted at composed layouts onto pool tiles; "
                "copy_paste_labelled: onto the labelled tiles; copy_paste_unlabelled: onto pool tiles with "
                "no pixel annotated, only the pasted objects known; copy_paste_far_negatives: onto pool "
                "tiles annotated as background only farther than 16 px from every pseudo-labelled object); "
                "and "
                "recipes made of others' tiles "
                "(vpred_and_copy_paste_labelled: half drawn, half pasted; "
                "vpred_sdedit_over_copy_paste_labelled: the pasted pairs re-rendered by the generator from "
                "strength 0.4) minus each of those; vpred_pool_shapes (the generator drawing composed "
                "layouts of the pool's pseudo-labelled objects at least as large as the smallest labelled "
                "one) is among the controls; the ratio probe: a recipe at ratio 0.6 minus itself at "
                "0.3, and the main recipe minus copy_paste_labelled at 0.6",
    "rise": "Does real only rise with k? IoU(next k) - IoU(k), paired by seed, 95% t interval",
    "resolution": "Can the grid resolve the generator goal? goal: half the gap (real only on the whole "
                  "pool - real only at k); seeds a paired gain of that size needs for its 95% interval to "
                  "clear 0 with 80% power, at the A/A noise and at the noisiest synthetic arm's (3+ pairs)",
    "noise_floor": "A/A noise floor: real only with another data stream - real only, paired by seed",
    "generators": "Each generator's tiles: mask fidelity (judge: the real-only segmenter of the same k "
                  "slices) beside that judge on real test tiles; realism against the test tiles beside the "
                  "real pool's floor; classifier two-sample accuracy (0.5: indistinguishable; beside it "
                  "floor_c2st_accuracy, real pool tiles against the same block; "
                  "c2st_version 2: the crop critic; a record without it came from version 1, a whole-tile "
                  "critic whose figure swung 0.48-0.92 over critic seeds on one set of tiles); object "
                  "contrast at the mask edges beside the test block's (bench.edge_profiles)",
    "cost": "Cost so far per CPU model (2 cores)",
    "diagnostics": "Per-epoch figures over the second half of training (tiles, threshold 0.5): mean and "
                   "swing (sd of epoch-to-epoch changes) of validation and test IoU under the training-time "
                   "(moving) and recomputed (precise) BatchNorm statistics, and how validation tracks test",
    "paired": "Each arm - real only, paired by seed, under each readout (mean, 95% t interval over the seeds "
              "both hold)",
    "paired_errors": "Where the errors lie at the calibrated threshold, arm - real only, paired by seed: "
                     "missed foreground within edge_px of an object's boundary (fn_edge) or deeper "
                     "(fn_core), false foreground near an object (fp_edge) or far from any (fp_far), as "
                     "shares of the mask's pixels; objects_missed: share of objects under half found",
    "recalibration": "Cells rescored when the threshold grid reached 1 - 1e-6 (calibration version 2): "
                     "the same saved segmenters, threshold recalibrated on validation",
    "tile_mean_error_by_t": "The denoiser's x0 estimate of per-tile latent means from real validation "
                            "latents noised to t, beside guessing every tile's mean as the set's mean",
    "x0_error_by_t": "The denoiser's x0 estimate from real validation latents noised to t: error of "
                     "per-tile latent means beside guessing the set's mean, and the share of the latents' "
                     "variance left unexplained beside that of a * x_t",
    "gaps": "Real only on the whole pool - real only on the region, paired by seed",
    "fidelity": "Mask fidelity: the whole-pool real-only segmenter on generated tiles vs their conditioning "
                "masks, beside the same segmenter on held-out real test tiles",
}


def cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict | list):
        return json.dumps(value)[:80]
    return str(value).replace("|", "\\|")  # a cell key like k=1|aa|r=0 stays in its column


def table(rows: list[dict]) -> list[str]:
    if not rows:
        return ["(no rows)"]
    columns = list(dict.fromkeys(k for r in rows for k in r))
    out = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    out += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return out


def section(path: Path, title: str) -> list[str]:
    data = json.loads(path.read_text())
    machine = data.get("machine", {})
    lines = [f"## {title}", "",
             f"Command: `{data.get('command', '?')}` · machine: {machine.get('cpu', '?')}, "
             f"{machine.get('cores', '?')} cores · date: {machine.get('date', '?')} · "
             f"source: `docs/{path.name}`",
             ""]
    if len(data.get("commands", [])) > 1:  # rows written by several commands
        lines += ["Commands that wrote its rows: " + "; ".join(f"`{c}`" for c in data["commands"]), ""]
    for key in ("source", "goal", "goal_met", "cells_done", "edge_px", "min_object_px", "note", "summary"):
        if key in data:
            lines.append(f"- {key.replace('_', ' ')}: {cell(data[key]) if key != 'summary' else data[key]}")
    lines.append("")
    for key in ("reference", "cost"):
        if isinstance(data.get(key), dict):
            lines.append(f"- {key}: " + ", ".join(f"{k} {cell(v)}" for k, v in data[key].items()))
    floor = data.get("noise_floor")
    if isinstance(floor, dict) and floor.get("per_k"):
        summary = {k: v for k, v in floor.items() if k != "per_k"}
        figures = ", ".join(f"{k} {cell(v)}" for k, v in summary.items())
        lines += ["", f"{TABLE_TITLES['noise_floor']}: {figures}", "", *table(floor["per_k"])]
    lines.append("")
    for name in ("rows", "gaps", "rise", "gains", "controls", "resolution", "generators", "recalibration",
                 "fidelity", "cost", "diagnostics",
                 "cells", "paired", "paired_errors", "results", "tile_mean_error_by_t", "x0_error_by_t"):
        if isinstance(data.get(name), list) and data[name]:
            title = [f"{TABLE_TITLES[name]}:", ""] if name in TABLE_TITLES else []
            lines += title + table(data[name]) + [""]
    for figure in data.get("figures", []):
        if (path.parent / figure).exists():  # a grid with one seed so far has no figure yet
            lines += [f"![{figure}]({figure})", ""]
    return lines


def build() -> str:
    lines = ["# Results", "",
             "Regenerated by `python -m bench.report` from the JSON files in `docs/`; every number comes",
             "from the command named in its section, on the machine and date given there. Quality figures",
             "are measured on held-out real slices (z blocks never used for training).", ""]
    missing = []
    for name, title in SECTIONS:
        path = DOCS / name
        if path.is_file():
            lines += section(path, title)
        else:
            missing.append(f"`{name}` ({title})")
    if missing:
        lines += ["## Not yet measured", "", *[f"- {m}" for m in missing], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    del argv  # no flags
    (DOCS / "results.md").write_text(build())
    print(f"wrote {DOCS / 'results.md'}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
