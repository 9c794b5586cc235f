"""Recalibrate a saved segmenter's foreground threshold on labelled validation slices, without
training: for segmenters calibrated on an older threshold grid (see segmentation_tf.calibration), or
on new validation slices. Rewrites RUN/segmenter.json atomically; the earlier calibration is kept in
its provenance. --precise-bn first recomputes the BatchNorm statistics under the saved weights on the
training store's tiles (segmentation_tf.batchnorm; what fit now does by default), rewriting
RUN/segmenter.keras atomically: a segmenter trained before that gains it without retraining.

    python -m segmentation_tf.recalibrate --model RUN                  # the store it was trained on, val
    python -m segmentation_tf.recalibrate --model RUN --images V.tif --masks VM.tif
    python -m segmentation_tf.recalibrate --model RUN --precise-bn
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from segmentation_tf.evaluate import load_labelled
from segmentation_tf.quiet import quiet_tensorflow
from segmentation_tf.sidecar import (
    SIDECAR_NAME,
    add_inference_flags,
    inference_settings,
    model_paths,
    read_sidecar,
)
from shared.atomic import write_json_atomic
from shared.errors import ArgumentParser, UserError, positive_int, run_cli


def recalibrated(meta: dict[str, Any], calibration: dict[str, Any], source: str) -> dict[str, Any]:
    """The sidecar with a new threshold and calibration record; the earlier ones kept in
    provenance['earlier_calibrations']."""
    provenance = dict(meta.get("provenance") or {})
    earlier = [*provenance.get("earlier_calibrations", [])]
    if "calibration" in provenance:
        earlier.append(provenance["calibration"])
    provenance.update(calibration=calibration, calibrated_on=source, earlier_calibrations=earlier)
    return {**meta, "threshold": calibration["threshold"], "provenance": provenance}


def default_store(meta: dict[str, Any], model: Path, hint: str = "give --store or --images/--masks") -> Path:
    store = (meta.get("provenance") or {}).get("real_store")
    if not store:
        raise UserError(f"{model}: its sidecar names no training store; {hint}")
    return Path(store)


def batchnorm_store(args, meta: dict[str, Any]) -> Path:
    """Where --precise-bn takes its training tiles: --store's, else the store the model was trained on."""
    return args.store or default_store(meta, args.model, "--precise-bn needs training tiles; give --store")


def with_precise_batchnorm(model, meta: dict[str, Any], path: Path, store_path: Path) -> dict[str, Any]:
    """Recompute the model's BatchNorm statistics on the store's training tiles (batches of its
    training batch size), save it atomically; returns the sidecar with the record in its provenance."""
    from segmentation_tf.artifacts import save_model_atomic
    from segmentation_tf.batchnorm import recompute_on_store
    from shared.store import TileStore

    store = TileStore(store_path)
    batch = int((meta.get("provenance") or {}).get("data", {}).get("batch_size", 8))
    record = recompute_on_store(model, store, batch)
    save_model_atomic(model, model_paths(path)[0])
    print(f"BatchNorm statistics recomputed on {record['tiles']} training tiles "
          f"({record['batches']} batches)")
    return {**meta, "provenance": {**(meta.get("provenance") or {}), "batchnorm_recomputed": record}}


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m segmentation_tf.recalibrate", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="run folder or segmenter.keras")
    parser.add_argument("--store", type=Path, help="tile store (default: the one the model was trained on)")
    parser.add_argument("--split", default="val", choices=("train", "val", "test"))
    parser.add_argument("--images", type=Path, help="validation image TIFF stack instead of a store")
    parser.add_argument("--masks", type=Path, help="validation mask TIFF stack")
    add_inference_flags(parser)
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--precise-bn", action="store_true",
                        help="first recompute the BatchNorm statistics on the training tiles of --store "
                             "or of the store the model was trained on (rewrites segmenter.keras)")
    args = parser.parse_args(argv)
    meta = read_sidecar(args.model)
    if args.images is None and args.masks is None and args.store is None:
        args.store = default_store(meta, args.model)
    overlap, tta = inference_settings(meta, args.overlap, args.tta)
    bn_store = batchnorm_store(args, meta) if args.precise_bn else None  # checked before any work
    images, masks = load_labelled(args)
    quiet_tensorflow()  # before any TensorFlow import: no start-up lines
    from segmentation_tf.artifacts import load_segmenter  # imports TensorFlow
    from segmentation_tf.calibration import calibrate_slices, edge_warning
    from segmentation_tf.inference import predict_stack

    seg = load_segmenter(args.model)
    if bn_store is not None:
        meta = with_precise_batchnorm(seg.model, meta, args.model, bn_store)
    probs = predict_stack(seg.model, images, seg.tile_size, overlap, tta, args.batch_size)
    calibration = calibrate_slices(probs, masks)
    source = f"{args.store} ({args.split})" if args.store is not None else f"{args.images}"
    write_json_atomic(model_paths(args.model)[1], recalibrated(meta, calibration, source))
    print(f"threshold {meta['threshold']:.6g} -> {calibration['threshold']:.6g}: validation IoU "
          f"{calibration['iou']:.4f} on {len(images)} slices ({SIDECAR_NAME} rewritten)")
    if warning := edge_warning(calibration):
        print(warning)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
