"""Segment whole slices of any size: overlapping windows blended, optional 8-fold test-time
augmentation; writes a float32 probability stack and a uint8 mask stack (0/255, foreground where
probability >= the calibrated threshold) in the layout every segment command shares (shared.outputs).

    python -m segmentation_tf.predict --model RUN --images STACK.tif --out DIR [--tta] [--instances 3d]
      -> DIR/probability.tif, DIR/mask.tif [, DIR/instances.tif]
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

from segmentation_tf.quiet import quiet_tensorflow
from segmentation_tf.sidecar import add_inference_flags, inference_settings, model_pixel_size, read_sidecar
from shared import normalization
from shared.errors import ArgumentParser, positive_int, run_cli
from shared.outputs import add_instances_flag, output_folder, write_segmentation
from shared.pixel_size import warn_mismatch
from shared.tiff_io import read_image_stack, read_pixel_size


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m segmentation_tf.predict", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="run folder or segmenter.keras")
    parser.add_argument("--images", type=Path, required=True, help="image TIFF stack (any slice size)")
    parser.add_argument("--out", type=Path, required=True,
                        help="output folder: probability.tif + mask.tif (created; its parent must exist)")
    add_inference_flags(parser)
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--threshold", type=float, help="override the calibrated threshold")
    add_instances_flag(parser)
    args = parser.parse_args(argv)
    output_folder(args.out)
    meta = read_sidecar(args.model)
    overlap, tta = inference_settings(meta, args.overlap, args.tta)
    images = normalization.normalize(read_image_stack(args.images))
    pixel_size = read_pixel_size(args.images)  # the outputs lie on the input's grid
    warn_mismatch(model_pixel_size(meta), pixel_size, str(args.images))
    quiet_tensorflow()  # before any TensorFlow import: no start-up lines
    from segmentation_tf.artifacts import load_segmenter  # imports TensorFlow
    from segmentation_tf.inference import predict_stack

    seg = load_segmenter(args.model)
    threshold = seg.threshold if args.threshold is None else args.threshold
    start = time.perf_counter()
    probs = predict_stack(seg.model, images, seg.tile_size, overlap, tta, args.batch_size)
    seconds = time.perf_counter() - start
    written = write_segmentation(args.out, probs, threshold, pixel_size, args.instances)
    print(f"{len(images)} slices in {seconds:.1f} s (threshold {threshold:.6g}) -> "
          f"{', '.join(map(str, written))}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
