"""Foreground IoU and Dice of a saved segmenter on a labelled stack (or a store split), per slice
and overall (pooled over all pixels), at the calibrated threshold.

    python -m segmentation_tf.evaluate --model RUN --images STACK.tif --masks MASKS.tif [--tta]
    python -m segmentation_tf.evaluate --model RUN --store STORE --split val [--json out.json]
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from segmentation_tf.quiet import quiet_tensorflow
from segmentation_tf.scores import score
from segmentation_tf.sidecar import add_inference_flags, inference_settings, model_pixel_size, read_sidecar
from segmentation_tf.slices import store_slices
from shared import normalization
from shared.atomic import write_json_atomic
from shared.errors import ArgumentParser, UserError, positive_int, run_cli
from shared.pixel_size import PixelSize, warn_mismatch
from shared.store import TileStore
from shared.tiff_io import read_pair, read_pixel_size


def load_labelled(args) -> tuple[np.ndarray, np.ndarray]:
    if args.store is not None:
        return store_slices(TileStore(args.store), args.split)
    if args.images is None or args.masks is None:
        raise UserError("give --images and --masks, or --store (with --split)")
    images, masks = read_pair(args.images, args.masks)
    return normalization.normalize(images), masks


def data_pixel_size(args) -> tuple[PixelSize | None, str]:
    """The evaluated data's pixel size and where it comes from."""
    if args.store is not None:
        return TileStore(args.store).pixel_size, str(args.store)
    return read_pixel_size(args.images), str(args.images)


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m segmentation_tf.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="run folder or segmenter.keras")
    parser.add_argument("--images", type=Path, help="image TIFF stack")
    parser.add_argument("--masks", type=Path, help="mask TIFF stack")
    parser.add_argument("--store", type=Path, help="a tile store instead of stacks")
    parser.add_argument("--split", default="val", choices=("train", "val", "test"))
    add_inference_flags(parser)
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--threshold", type=float, help="override the calibrated threshold")
    parser.add_argument("--json", type=Path, help="also write the scores here")
    args = parser.parse_args(argv)
    meta = read_sidecar(args.model)
    overlap, tta = inference_settings(meta, args.overlap, args.tta)
    images, masks = load_labelled(args)
    warn_mismatch(model_pixel_size(meta), *data_pixel_size(args))
    quiet_tensorflow()  # before any TensorFlow import: no start-up lines
    from segmentation_tf.artifacts import load_segmenter  # imports TensorFlow
    from segmentation_tf.inference import predict_stack

    seg = load_segmenter(args.model)
    start = time.perf_counter()
    probs = predict_stack(seg.model, images, seg.tile_size, overlap, tta, args.batch_size)
    seconds = time.perf_counter() - start
    result = score(probs, masks, seg.threshold if args.threshold is None else args.threshold)
    result.update({"model": str(args.model), "tta": tta, "overlap": overlap,
                   "seconds": seconds, "slices_per_s": len(images) / seconds})
    for s in result["slices"]:
        print(f"slice {s['slice']:>4}  IoU {s['iou']:.4f}  Dice {s['dice']:.4f}")
    print(f"overall  IoU {result['iou']:.4f}  Dice {result['dice']:.4f}  "
          f"(threshold {result['threshold']:.6g}, {len(images)} slices, "
          f"{result['slices_per_s']:.2f} slices/s)")
    if args.json:
        write_json_atomic(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
