"""The README figure of a trained segmenter: a held-out slice (image, truth, prediction with errors
coloured) and the training curves from RUN/log.csv.

    python -m segmentation_tf.figure --model RUN --store STORE --split val --out docs/segmenter_epfl.png
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from segmentation_tf.quiet import quiet_tensorflow
from segmentation_tf.scores import iou
from segmentation_tf.sidecar import read_sidecar
from segmentation_tf.slices import store_slices
from shared.atomic import atomic_path
from shared.errors import ArgumentParser, non_negative_int, run_cli
from shared.store import TileStore


def error_overlay(image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """RGB: gray image, true positives green, false positives red, false negatives blue."""
    gray = np.clip((image + 1.0) / 2.0, 0, 1)
    rgb = np.stack([gray] * 3, -1) * 0.7
    truth, pred = truth > 0, pred > 0
    rgb[truth & pred] = rgb[truth & pred] * 0.4 + np.array([0.0, 0.6, 0.0])
    rgb[~truth & pred] = rgb[~truth & pred] * 0.4 + np.array([0.6, 0.0, 0.0])
    rgb[truth & ~pred] = rgb[truth & ~pred] * 0.4 + np.array([0.0, 0.2, 0.7])
    return np.clip(rgb, 0, 1)


def read_log(path: Path) -> dict[str, list[float]]:
    if not path.is_file():
        return {}
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    return {k: [float(r[k]) for r in rows] for k in (rows[0] if rows else {})}


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m segmentation_tf.figure", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--split", default="val", choices=("train", "val", "test"))
    parser.add_argument("--slice", type=non_negative_int, default=0, help="which slice of the split")
    parser.add_argument("--overlap", type=non_negative_int, default=128)
    parser.add_argument("--tta", action="store_true")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    read_sidecar(args.model)
    images, masks = store_slices(TileStore(args.store), args.split)
    quiet_tensorflow()  # before any TensorFlow import: no start-up lines
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from segmentation_tf.artifacts import load_segmenter
    from segmentation_tf.inference import predict_slice

    seg = load_segmenter(args.model)
    z = min(args.slice, len(images) - 1)
    prob = predict_slice(seg.model, images[z], seg.tile_size, args.overlap, args.tta)
    pred = prob >= seg.threshold
    log = read_log(Path(args.model if Path(args.model).is_dir() else Path(args.model).parent) / "log.csv")
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.6), gridspec_kw={"width_ratios": [1, 1, 1, 0.9]})
    axes[0].imshow(images[z], cmap="gray", vmin=-1, vmax=1)
    axes[0].set_title(f"held-out slice ({args.split} #{z})")
    axes[1].imshow(masks[z], cmap="gray")
    axes[1].set_title("ground truth")
    axes[2].imshow(error_overlay(images[z], masks[z], pred))
    axes[2].set_title(f"prediction: IoU {iou(prob, masks[z], seg.threshold):.3f} "
                      f"(green TP, red FP, blue FN)")
    for ax in axes[:3]:
        ax.axis("off")
    if log:
        epochs = np.arange(1, len(log["loss"]) + 1)
        axes[3].plot(epochs, log["iou"], label="train IoU @0.5")
        axes[3].plot(epochs, log["val_iou"], label="val IoU @0.5 (tiles)")
        axes[3].set_ylim(0.5, 1.0)
        axes[3].set_xlabel("epoch")
        axes[3].legend(loc="lower right")
        axes[3].grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(args.out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=80)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
