"""Segmenter throughput on this machine, one run:

1. training tiles/s with the real input pipeline (random crops, elastic + gray + dihedral augmentation
   in tf.data) vs the same model fed one in-memory batch over and over (goal: ratio >= 0.9);
2. float32 vs mixed precision (the automatic policy) training and prediction throughput (goal >= 2x);
3. training with XLA (`fit --xla`) vs without, per policy (Keras turns XLA off on CPUs by default);
4. whole-slice prediction slices/s (overlap + blending) with and without 8-fold test-time augmentation.

    python -m bench.segmentation [--steps 20] [--policies float32,mixed] [--out docs/bench_segmentation.json]
                                 [--quick]

Uses the EPFL subset beside the checkout when present, else the phantom. Run it alone (flock the
heavy lock): two cores shared with another job halve every number.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import ROOT, print_table, write_json
from bench.tiles import build_bench_store

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from segmentation_tf import data as pipeline  # noqa: E402
from segmentation_tf.config import AugmentConfig, DataConfig, TrainConfig, UNetConfig  # noqa: E402
from segmentation_tf.inference import predict_slice  # noqa: E402
from segmentation_tf.precision import resolve_policy  # noqa: E402
from segmentation_tf.slices import store_slices  # noqa: E402
from segmentation_tf.training import compiled_model  # noqa: E402
from shared.errors import run_cli  # noqa: E402


class EpochTimer(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.times: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self.start)


def train_rate(policy: str, dataset, model_cfg: UNetConfig, steps: int, batch: int, xla: bool = False
               ) -> float:
    """Tiles/s of model.fit over `steps` batches, after a 3-step warm-up fit (tracing, compiling)."""
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(0)
    model = compiled_model(model_cfg, TrainConfig(epochs=2, xla=xla), steps)
    model.fit(dataset, epochs=1, steps_per_epoch=3, verbose=0)
    timer = EpochTimer()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, callbacks=[timer], verbose=0)
    return steps * batch / timer.times[-1]


def predict_rate(policy: str, model_cfg: UNetConfig, weights, images: np.ndarray, tile: int, overlap: int,
                 tta: bool, n: int) -> float:
    """Whole slices per second (first slice is a warm-up)."""
    keras.mixed_precision.set_global_policy(policy)
    from segmentation_tf.model import build_unet

    model = build_unet(model_cfg)
    model.set_weights(weights)
    predict_slice(model, images[0], tile, overlap, tta)
    start = time.perf_counter()
    for image in images[1:n + 1]:
        predict_slice(model, image, tile, overlap, tta)
    return n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per measurement")
    parser.add_argument("--slices", type=int, default=2, help="timed slices per prediction measurement")
    parser.add_argument("--overlap", type=int, default=128)
    parser.add_argument("--policies", default="float32,mixed",
                        help="comma-separated: float32 and/or mixed (the automatic mixed policy); a CPU "
                             "without native bf16 takes long over mixed")
    parser.add_argument("--quick", action="store_true", help="tiny model and few steps (smoke test)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench_segmentation.json")
    args = parser.parse_args(argv)
    model_cfg = UNetConfig(base_width=4, depth=4) if args.quick else UNetConfig(base_width=16, depth=4)
    steps, n_slices = (3, 1) if args.quick else (args.steps, args.slices)
    mixed = resolve_policy("auto")
    mixed = mixed if mixed != "float32" else "mixed_bfloat16"
    policies = [{"float32": "float32", "mixed": mixed}[p] for p in args.policies.split(",")]
    config = DataConfig(batch_size=8, augment=AugmentConfig(elastic_sigma=6.0, gray=0.15))
    with tempfile.TemporaryDirectory() as tmp:
        store, source = build_bench_store(Path(tmp))
        tile = store.tile_size
        real = pipeline.real_train_pool(store, config)
        piped = pipeline.training_dataset(real, None, tile, config)
        x, y = next(iter(piped))
        in_memory = tf.data.Dataset.from_tensors((tf.identity(x), tf.identity(y))).repeat()
        images, _ = store_slices(store, "val")
    train_rows = []
    for policy in policies:
        for xla in (False, True):
            fed = train_rate(policy, in_memory, model_cfg, steps, 8, xla)
            real_rate = train_rate(policy, piped, model_cfg, steps, 8, xla)
            train_rows.append({"policy": policy, "xla": xla, "in-memory tiles/s": fed,
                               "pipeline tiles/s": real_rate, "pipeline / in-memory": real_rate / fed})
    keras.mixed_precision.set_global_policy("float32")
    from segmentation_tf.model import build_unet

    weights = build_unet(model_cfg).get_weights()
    predict_rows = []
    for policy in policies:
        for tta in (False, True):
            rate = predict_rate(policy, model_cfg, weights, images, tile, args.overlap, tta, n_slices)
            predict_rows.append({"policy": policy, "tta": tta, "slices/s": rate,
                                 "slice": f"{images.shape[2]}x{images.shape[1]}", "overlap": args.overlap})
    keras.mixed_precision.set_global_policy("float32")

    def pipeline_rate(policy: str, xla: bool) -> float | None:
        return next((r["pipeline tiles/s"] for r in train_rows if r["policy"] == policy and r["xla"] == xla),
                    None)

    def slice_rate(policy: str) -> float | None:
        return next((r["slices/s"] for r in predict_rows if r["policy"] == policy and not r["tta"]), None)

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a and b else None

    speedup_train = ratio(pipeline_rate(mixed, False), pipeline_rate("float32", False))
    speedup_predict = ratio(slice_rate(mixed), slice_rate("float32"))
    xla_speedup = {p: ratio(pipeline_rate(p, True), pipeline_rate(p, False)) for p in policies}
    params = build_unet(model_cfg).count_params()
    print_table(f"Training, batch 8, {params:,}-parameter U-Net, tiles of {source}", train_rows,
                ["policy", "xla", "in-memory tiles/s", "pipeline tiles/s", "pipeline / in-memory"])
    print_table("Whole-slice prediction (overlap + blending)", predict_rows,
                ["policy", "tta", "slices/s", "slice", "overlap"])
    lines = [f"XLA / no XLA, training with the pipeline: {p} {x:.2f}x" for p, x in xla_speedup.items()]
    if speedup_train:
        lines.append(f"{mixed} / float32: training {speedup_train:.2f}x, prediction {speedup_predict:.2f}x "
                     "(goal >= 2x)")
    worst = min(r["pipeline / in-memory"] for r in train_rows)
    print("\n" + "\n".join([*lines, f"pipeline / in-memory at worst {worst:.2f} (goal >= 0.9)"]))
    goals = {"pipeline_ratio_ge_0.9": worst >= 0.9,
             "mixed_train_speedup_ge_2": speedup_train >= 2.0 if speedup_train else None,
             "mixed_predict_speedup_ge_2": speedup_predict >= 2.0 if speedup_predict else None}
    rows = ([{"measure": "training tiles/s", **r} for r in train_rows]
            + [{"measure": "whole-slice prediction", **r} for r in predict_rows])
    write_json(args.out, {
        "benchmark": "segmentation", "command": "python -m bench.segmentation", "source": source,
        "goal": "pipeline >= 0.9 of in-memory; mixed precision >= 2x float32 (training and prediction)",
        "goal_met": goals,
        "summary": "; ".join(lines),
        "rows": rows,
        "parameters": params, "model": model_cfg.__dict__, "quick": args.quick,
        "train": train_rows, "predict": predict_rows, "mixed_policy": mixed,
        "speedup_train": speedup_train, "speedup_predict": speedup_predict, "xla_speedup_train": xla_speedup,
        "policies": policies})


if __name__ == "__main__":
    sys.exit(run_cli(main))
