"""Does the validation-calibrated threshold decide a paired comparison of the evidence grid?

    python -m bench.thresholds --k 1 --seeds 0 1    # the matched grid's k = 1 cells of seeds 0 and 1

Rescores saved grid segmenters on the test block three ways: at the threshold calibrated on the
validation block (what the grid reports, and what a user gets), at a fixed 0.5, and at the test block's
own best threshold (an oracle no user has). Each arm is paired with real only of the same seed under
each readout. If a synthetic arm's loss vanished at 0.5 or at the oracle, the validation block's
threshold, not the model, would have caused it. At the calibrated threshold the errors are also split
by where they lie (object edges, object cores, far from any object; objects missed), so a paired loss
says what the arm gets wrong. Test probabilities are cached beside each segmenter (test_probs.npz), so
a rerun costs no prediction.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from bench.common import ROOT, print_table, write_json
from bench.regions import parse_budget
from bench.stats import paired_interval
from generation_torch.metrics import signed_distances
from segmentation_tf.calibration import calibrate_threshold, iou_curve
from shared.errors import UserError, run_cli
from shared.outputs import instance_labels
from shared.tiff_io import read_pair

READOUTS = ("calibrated", "at_0.5", "oracle")
ERRORS = ("fn_edge", "fn_core", "fp_edge", "fp_far", "objects_missed")
EDGE_PX = 3          # boundary band half-width: EPFL masks include the double membrane, a few px wide
MIN_OBJECT_PX = 200  # smaller components (object ends cut by the slice) are not counted as objects


def readout(probs: np.ndarray, masks: np.ndarray, calibrated: float) -> dict[str, float]:
    """Pooled test IoU at the calibrated threshold, at 0.5, and at the best threshold of the default
    grid (the oracle), with that threshold."""
    fixed = iou_curve(probs, masks, np.array([calibrated, 0.5], np.float32))
    oracle_threshold, oracle = calibrate_threshold(probs, masks)  # calibrated on the test block itself
    return {"calibrated": float(fixed[0]), "at_0.5": float(fixed[1]), "oracle": oracle,
            "oracle_threshold": oracle_threshold, "threshold": float(calibrated)}


def edge_band(masks: np.ndarray, width: int = EDGE_PX) -> np.ndarray:
    """Per slice, the pixels within `width` px (rounded Euclidean distance, as the edge profiles
    measure it) of a mask boundary, inside or outside; the image border is not a boundary."""
    return np.stack([np.abs(signed_distances(mask)) <= width for mask in masks])


def missed_objects(pred: np.ndarray, masks: np.ndarray, min_px: int = MIN_OBJECT_PX) -> float:
    """Share of the mask's objects (shared.outputs.instance_labels per slice, >= min_px) with under
    half their pixels predicted."""
    labels = instance_labels(masks, "2d").ravel()
    areas = np.bincount(labels)[1:]
    hits = np.bincount(labels, weights=np.asarray(pred, bool).ravel(), minlength=len(areas) + 1)[1:]
    counted = areas >= min_px
    return int((counted & (hits < areas / 2)).sum()) / max(int(counted.sum()), 1)


def error_budget(pred: np.ndarray, masks: np.ndarray, width: int = EDGE_PX,
                 min_object_px: int = MIN_OBJECT_PX) -> dict[str, float]:
    """Where a prediction's errors lie, as fractions of the mask's pixels: foreground missed within
    `width` px of an object's boundary (fn_edge) or deeper inside (fn_core), false foreground near an
    object (fp_edge) or away from every object (fp_far); and the share of objects missed.
    1 - IoU = (fn_edge + fn_core + fp_edge + fp_far) / (1 + fp_edge + fp_far)."""
    pred, truth = np.asarray(pred, bool), np.asarray(masks) > 0
    band, total = edge_band(truth, width), max(int(truth.sum()), 1)
    fn, fp = truth & ~pred, pred & ~truth
    return {"fn_edge": int((fn & band).sum()) / total, "fn_core": int((fn & ~band).sum()) / total,
            "fp_edge": int((fp & band).sum()) / total, "fp_far": int((fp & ~band).sum()) / total,
            "objects_missed": missed_objects(pred, truth, min_object_px)}


def paired_readouts(scores: dict[str, dict[int, dict[str, float]]], control: str = "real_only",
                    names: tuple[str, ...] = READOUTS) -> list[dict]:
    """Per arm (other than the control) and figure: the mean paired difference with its t interval."""
    rows = []
    for arm, by_seed in scores.items():
        if arm == control:
            continue
        row: dict = {"arm": arm}
        for name in names:
            interval = paired_interval({s: v[name] for s, v in by_seed.items()},
                                       {s: v[name] for s, v in scores.get(control, {}).items()})
            if interval is None:
                continue
            row["seeds"] = interval["seeds"]
            row[name] = round(interval["mean"], 4)
            row[f"{name}_95"] = None if interval["low"] is None else \
                [round(interval["low"], 4), round(interval["high"], 4)]
        rows.append(row)
    return rows


def model_digest(seg_dir: Path) -> str:
    """sha256 of the saved segmenter: a cache from other weights (a recalibration with recomputed
    BatchNorm statistics, a retrained folder) is not reused."""
    return hashlib.sha256((seg_dir / "segmenter.keras").read_bytes()).hexdigest()


def test_probs(seg_dir: Path, images: np.ndarray) -> np.ndarray:
    """The segmenter's test-block probabilities with its own inference settings (cached per weights)."""
    cache, digest = seg_dir / "test_probs.npz", model_digest(seg_dir)
    if cache.is_file():
        with np.load(cache) as saved:
            if str(saved.get("model_sha256", "")) == digest:
                return saved["probs"].astype(np.float32)
    from segmentation_tf.artifacts import load_segmenter  # imports TensorFlow
    from segmentation_tf.inference import predict_stack
    from segmentation_tf.sidecar import inference_settings, read_sidecar

    overlap, tta = inference_settings(read_sidecar(seg_dir), None, None)
    seg = load_segmenter(seg_dir)
    probs = predict_stack(seg.model, images, seg.tile_size, overlap, tta)
    tmp = cache.with_name("test_probs.tmp.npz")
    np.savez_compressed(tmp, probs=probs.astype(np.float16), model_sha256=digest)
    tmp.replace(cache)
    return probs


def main(argv: list[str] | None = None) -> None:
    from bench.evidence import PRESETS, cell_of, results_file, segmenter_dir
    from segmentation_tf.quiet import quiet_tensorflow
    from shared import normalization

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="matched")
    parser.add_argument("--k", type=parse_budget, default=1,
                        help="labelled budget: slices (0: the whole pool) or a region, e.g. 256px")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "evidence",
                        help="the grid's scratch folder")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "evidence_thresholds.json")
    args = parser.parse_args(argv)
    quiet_tensorflow()
    results_path = results_file(args.preset, ROOT / "docs")
    if not results_path.is_file():
        raise UserError(f"{results_path}: no results of the {args.preset} grid to rescore")
    work = args.work / args.preset
    images, masks = read_pair(work / "test_images.tif", work / "test_masks.tif")
    images = normalization.normalize(images)
    records = json.loads(results_path.read_text())["results_by_cell"].values()
    scores: dict[str, dict[int, dict[str, float]]] = {}
    for record in records:
        cell = cell_of(record)
        seg_dir = segmenter_dir(cell, work)
        if cell.k != args.k or cell.seed not in args.seeds or not (seg_dir / "segmenter.json").is_file():
            continue
        arm = cell.arm if cell.ratio == 0 else f"{cell.arm}_r{cell.ratio:g}_{cell.recipe}"
        probs = test_probs(seg_dir, images)
        pred = probs >= np.float32(record["threshold"])  # as iou_curve compares
        figures = {**readout(probs, masks, record["threshold"]), **error_budget(pred, masks)}
        scores.setdefault(arm, {})[cell.seed] = figures
        print(f"{cell.key}: " + ", ".join(f"{k} {v:.4f}" for k, v in figures.items()), flush=True)
    if "real_only" not in scores:
        raise UserError(f"{work}: no saved real-only segmenter at k = {args.k} for seeds {args.seeds}")
    cells = [{"arm": a, "seed": s, **v} for a, by_seed in scores.items() for s, v in sorted(by_seed.items())]
    rows, errors = paired_readouts(scores), paired_readouts(scores, names=ERRORS)
    print_table("test IoU per cell and readout", cells,
                ["arm", "seed", "threshold", "calibrated", "at_0.5", "oracle", "oracle_threshold"])
    print_table("arm - real only, paired by seed", rows, ["arm", "seeds", *READOUTS])
    print_table("errors at the calibrated threshold (share of mask pixels; objects: share missed)", cells,
                ["arm", "seed", *ERRORS])
    print_table("errors, arm - real only, paired by seed", errors, ["arm", "seeds", *ERRORS])
    write_json(args.out, {"command": "python -m bench.thresholds " + " ".join(argv or sys.argv[1:]),
                          "preset": args.preset, "k": args.k, "edge_px": EDGE_PX,
                          "min_object_px": MIN_OBJECT_PX, "cells": cells, "paired": rows,
                          "paired_errors": errors})


if __name__ == "__main__":
    sys.exit(run_cli(main))
