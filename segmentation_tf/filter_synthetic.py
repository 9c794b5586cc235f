"""Keep the generated pairs whose image shows its mask: a judge segmenter (trained on real tiles only)
scores every synthetic tile against the mask that conditioned it, and a new synthetic store keeps
those at or above --min-iou (and at most the --keep best).

    python -m segmentation_tf.filter_synthetic --judge RUN --store SYNTHETIC --out FILTERED \
        [--min-iou 0.5] [--keep 128]

Draw more tiles than you need (generation_torch.sample --n 3N), then keep N. The judge should see only
the labels the segmenter may use (e.g. the real-only segmenter of the same labelled slices).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from segmentation_tf.quiet import quiet_tensorflow
from segmentation_tf.scores import per_tile_iou
from segmentation_tf.sidecar import read_sidecar
from shared.errors import ArgumentParser, UserError, positive_int, run_cli, unit_interval
from shared.store import TileStore


def chosen_tiles(scores: np.ndarray, min_iou: float, keep: int | None) -> np.ndarray:
    """Indices of the tiles scoring >= min_iou, best first, at most `keep` of them (stable: ties keep
    their store order)."""
    order = np.argsort(-scores, kind="stable")
    order = order[scores[order] >= min_iou]
    return order if keep is None else order[:keep]


def judge_probabilities(judge_dir: Path, store: TileStore, batch_size: int = 16) -> tuple[np.ndarray, float]:
    """The judge's foreground probabilities for every tile of a store, and its calibrated threshold."""
    from segmentation_tf.artifacts import load_segmenter  # imports TensorFlow
    from segmentation_tf.inference import predict_tiles

    judge = load_segmenter(judge_dir)
    if judge.tile_size != store.tile_size:
        raise UserError(f"{store.path}: {store.tile_size}px tiles, the judge takes {judge.tile_size}px")
    return predict_tiles(judge.model, store.images(store.indices()), batch_size), judge.threshold


def write_filtered(store: TileStore, keep: np.ndarray, scores: np.ndarray, out: Path, extra: dict) -> None:
    """A new synthetic store with the kept tiles and their records (+ judge IoU), and their annotated
    areas where the store holds them (pairs pasted onto partly annotated tiles: without them, the
    unknown pixels would turn into known background); built beside `out` and renamed into place, so an
    interrupted run leaves no half store."""
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    kept = np.sort(keep)  # store order, so tiles stay next to their neighbours from the same batch
    records = [{**store.records[int(i)], "judge_iou": float(scores[i]), **extra} for i in kept]
    filtered = TileStore.create(tmp, store.tile_size, kind="synthetic", pixel_size=store.pixel_size)
    annotated = store.annotated(kept) if store.partially_annotated else None
    filtered.append(store.raw_images(kept), store.masks(kept), records, annotated=annotated)
    tmp.rename(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m segmentation_tf.filter_synthetic",
                            description=__doc__.split("\n")[0])
    parser.add_argument("--judge", type=Path, required=True, help="segmenter run folder (real tiles only)")
    parser.add_argument("--store", type=Path, required=True, help="synthetic tile store to filter")
    parser.add_argument("--out", type=Path, required=True, help="new synthetic store (must not exist)")
    parser.add_argument("--min-iou", type=unit_interval, default=0.5, help="keep tiles at or above this IoU")
    parser.add_argument("--keep", type=positive_int, default=None, help="keep at most the N best tiles")
    args = parser.parse_args(argv)
    read_sidecar(args.judge)  # a bad --judge fails before TensorFlow loads
    store = TileStore(args.store)
    if len(store) == 0:
        raise UserError(f"{args.store}: the store is empty")
    if args.out.exists():
        raise UserError(f"{args.out}: already exists (choose a new folder)")
    if not args.out.parent.is_dir():
        raise UserError(f"{args.out.parent}: output folder does not exist")
    quiet_tensorflow()  # before any TensorFlow import: no start-up lines
    probs, threshold = judge_probabilities(args.judge, store)
    scores = per_tile_iou(probs, store.masks(store.indices()), threshold)
    keep = chosen_tiles(scores, args.min_iou, args.keep)
    if len(keep) == 0:
        raise UserError(f"{args.store}: no tile reaches IoU {args.min_iou} under the judge "
                        f"(best {scores.max():.3f}); lower --min-iou or draw more tiles")
    extra = {"judge": str(args.judge), "judge_threshold": threshold, "min_iou": args.min_iou}
    write_filtered(store, keep, scores, args.out, extra)
    print(f"kept {len(keep)} of {len(store)} tiles (judge IoU >= {args.min_iou:g}"
          f"{f', best {args.keep}' if args.keep else ''}): mean judge IoU {scores.mean():.3f} -> "
          f"{scores[keep].mean():.3f}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
