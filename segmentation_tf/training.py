"""One training run: build + compile under the device strategy, model.fit with callbacks, then
calibrate the threshold on whole validation slices and save the segmenter."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from segmentation_tf import data as pipeline
from segmentation_tf.artifacts import float32_copy, save_segmenter
from segmentation_tf.calibration import calibrate_threshold
from segmentation_tf.callbacks import standard_callbacks
from segmentation_tf.config import DataConfig, TrainConfig, UNetConfig
from segmentation_tf.inference import predict_stack
from segmentation_tf.losses import BceJaccardLoss
from segmentation_tf.metrics import ForegroundDice, ForegroundIoU
from segmentation_tf.model import build_unet
from segmentation_tf.scores import score
from segmentation_tf.slices import store_slices
from shared.atomic import write_json_atomic
from shared.errors import UserError
from shared.store import TileStore


@dataclass
class RunInputs:
    run_dir: Path
    store: TileStore
    synthetic: TileStore | None
    model: UNetConfig = field(default_factory=UNetConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def learning_rate(config: TrainConfig, steps: int):
    if config.schedule == "plateau":
        return config.learning_rate
    total = max(2, config.epochs * steps)
    warmup = min(steps, total // 2)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=config.learning_rate * 0.1, decay_steps=total - warmup, alpha=0.01,
        warmup_target=config.learning_rate, warmup_steps=warmup)


def compiled_model(config: UNetConfig, train: TrainConfig, steps: int) -> keras.Model:
    model = build_unet(config)
    accumulate = train.accumulate if train.accumulate > 1 else None
    optimizer = keras.optimizers.Adam(learning_rate(train, steps), gradient_accumulation_steps=accumulate)
    model.compile(optimizer=optimizer, loss=BceJaccardLoss(),
                  metrics=[ForegroundIoU(0.5), ForegroundDice(0.5)])
    return model


def calibrate(model: keras.Model, store: TileStore, config: TrainConfig) -> dict[str, Any]:
    """Threshold maximizing pooled IoU on the whole validation slices (overlap + blending)."""
    images, masks = store_slices(store, "val")
    probs = predict_stack(model, images, store.tile_size, config.overlap, config.tta)
    threshold, _ = calibrate_threshold(probs, masks)
    result = score(probs, masks, threshold)
    result["iou_at_0.5"] = score(probs, masks, 0.5)["iou"]
    return result


def stop_on_nan(losses: list[float], run_dir) -> None:
    """TerminateOnNaN ends model.fit quietly; a NaN model must not be calibrated or saved."""
    if losses and not np.isfinite(losses[-1]):
        raise UserError(f"training loss became NaN in epoch {len(losses)}; stopped without saving a model "
                        f"(the best checkpoint so far and the resume backup stay in {run_dir}); "
                        "lower --lr or use --precision float32")


def fit(inputs: RunInputs, strategy: tf.distribute.Strategy, policy: str) -> dict[str, Any]:
    run_dir, store = inputs.run_dir, inputs.store
    run_dir.mkdir(parents=True, exist_ok=True)
    tile = store.tile_size
    real = pipeline.real_train_pool(store, inputs.data)
    synthetic = pipeline.synthetic_pool(inputs.synthetic, inputs.data) if inputs.synthetic else None
    n_real, n_syn = pipeline.batch_composition(inputs.data.batch_size, inputs.data.synthetic_ratio)
    steps = inputs.train.steps_per_epoch or pipeline.steps_per_epoch(real.tiles, n_real)
    train_ds = pipeline.training_dataset(real, synthetic, inputs.data.crop or tile, inputs.data)
    val_x, val_y = pipeline.validation_arrays(store, inputs.data)
    val_ds = tf.data.Dataset.from_tensor_slices((val_x, val_y)).batch(inputs.data.batch_size)
    # --seed fixes the initial weights as well as the data stream, so two runs of one command (and the
    # cells of an ablation paired by seed) start from the same model
    init_seed = inputs.data.seed if inputs.train.init_seed is None else inputs.train.init_seed
    keras.utils.set_random_seed(init_seed)
    with strategy.scope():
        model = compiled_model(inputs.model, inputs.train, steps)
    print(f"{model.count_params():,} parameters, policy {policy}, "
          f"{strategy.num_replicas_in_sync} replica(s); "
          f"{steps} steps/epoch of {n_real} real + {n_syn} synthetic tiles")
    callbacks = standard_callbacks(run_dir, inputs.train.patience, val_x, val_y,
                                   inputs.train.time_limit_minutes, inputs.train.schedule == "plateau")
    start = time.perf_counter()
    history = model.fit(train_ds, epochs=inputs.train.epochs, steps_per_epoch=steps, validation_data=val_ds,
                        callbacks=callbacks, verbose=inputs.train.verbose)
    train_seconds = time.perf_counter() - start
    stop_on_nan(history.history.get("loss", []), run_dir)
    model = float32_copy(model, inputs.model)  # what is calibrated, saved, exported and served
    calibration = calibrate(model, store, inputs.train)
    provenance = provenance_of(inputs, policy, strategy, history, train_seconds, calibration)
    save_segmenter(model, inputs.model, run_dir, calibration["threshold"], tile, provenance,
                   inputs.train.overlap, inputs.train.tta)
    write_json_atomic(run_dir / "train_summary.json", provenance)
    print(f"validation IoU {calibration['iou']:.4f} / Dice {calibration['dice']:.4f} at the calibrated "
          f"threshold {calibration['threshold']:.2f} (IoU {calibration['iou_at_0.5']:.4f} at 0.5); "
          f"trained {train_seconds / 60:.1f} min; saved {run_dir / 'segmenter.keras'}")
    return provenance


def provenance_of(inputs: RunInputs, policy: str, strategy, history, seconds: float,
                  calibration: dict[str, Any]) -> dict[str, Any]:
    epochs_run = len(history.history.get("loss", []))
    return {
        "real_store": str(inputs.store.path), "real_train_tiles": int(len(inputs.store.indices("train"))),
        "val_tiles": int(len(inputs.store.indices("val"))),
        "synthetic_store": str(inputs.synthetic.path) if inputs.synthetic else None,
        "synthetic_tiles": len(inputs.synthetic) if inputs.synthetic else 0,
        "model": asdict(inputs.model), "data": asdict(inputs.data), "train": asdict(inputs.train),
        "policy": policy, "replicas": strategy.num_replicas_in_sync,
        "epochs_this_process": epochs_run, "train_seconds_this_process": seconds,
        "last_epoch_logs": {k: float(np.asarray(v[-1])) for k, v in history.history.items() if v},
        "calibration": calibration, "calibrated_on": "validation split, whole slices",
    }
