"""Reduced precision in onnxruntime on CPU: the int8 segmenter beside float32, held-out IoU and speed.

    python -m exporters.keras_onnx --model runs/seg_real --out seg.onnx --int8-store epfl_store
    python -m bench.onnx_precision --onnx seg.onnx --store epfl_store      # uses seg.int8.onnx too

IoU is measured on the store's validation z block (whole slices, the calibrated threshold, overlap and
TTA as stored in the file, and without TTA); int8 is calibrated on training tiles only.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import ROOT, print_table, write_json
from exporters.runtime import Segmenter
from shared.errors import run_cli
from shared.store import TileStore
from shared.tiff_io import read_pair


def held_out_slices(store: TileStore) -> tuple[np.ndarray, np.ndarray, list[int]]:
    val = sorted({store.records[i]["slice"] for i in store.indices("val")})
    source = store.records[int(store.indices("val")[0])]["file"]
    images, masks = read_pair(source, source.replace("training.tif", "training_groundtruth.tif"))
    return images[val], masks[val], val


def score(model: Segmenter, images: np.ndarray, masks: np.ndarray, tta: bool) -> dict:
    start, inter, union = time.perf_counter(), 0, 0
    for image, mask in zip(images, masks, strict=True):
        pred, truth = model.segment(image, tta=tta).astype(bool), mask.astype(bool)
        inter, union = inter + (pred & truth).sum(), union + (pred | truth).sum()
    return {"iou": float(inter / union), "slices/s": len(images) / (time.perf_counter() - start)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path, required=True,
                        help="float32 segmenter.onnx (X.int8.onnx beside it)")
    parser.add_argument("--store", type=Path, required=True, help="real store with a 'val' z block")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench_onnx_precision.json")
    args = parser.parse_args(argv)
    images, masks, slices = held_out_slices(TileStore(args.store))
    rows = []
    for precision, path in (("float32", args.onnx), ("int8", args.onnx.with_suffix(".int8.onnx"))):
        model = Segmenter(path, device="cpu")
        for tta in (False, True):
            rows.append({"precision": precision, "tta": tta, **score(model, images, masks, tta)})
    for row in rows:
        base = next(r for r in rows if r["precision"] == "float32" and r["tta"] == row["tta"])
        row["speed vs float32"] = row["slices/s"] / base["slices/s"]
        row["IoU - float32"] = row["iou"] - base["iou"]
    print_table(f"Segmenter in onnxruntime (CPU), held-out slices {slices}", rows,
                ["precision", "tta", "iou", "IoU - float32", "slices/s", "speed vs float32"])
    write_json(args.out, {"benchmark": "onnx_precision", "command": "python -m bench.onnx_precision",
                          "held_out_slices": slices, "rows": rows,
                          "goal": "reduced precision keeps IoU within 0.005 of float32",
                          "goal_met": all(abs(r["IoU - float32"]) <= 0.005 for r in rows)})


if __name__ == "__main__":
    sys.exit(run_cli(main))
