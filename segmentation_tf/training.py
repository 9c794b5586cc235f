"""One training run: build + compile under the device strategy, model.fit with callbacks, then
calibrate the threshold on whole validation slices and save the segmenter."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from segmentation_tf import data as pipeline
from segmentation_tf.artifacts import float32_copy, save_segmenter
from segmentation_tf.batchnorm import recompute_on_store
from segmentation_tf.calibration import calibrate_slices, edge_warning
from segmentation_tf.callbacks import standard_callbacks
from segmentation_tf.config import DataConfig, TrainConfig, UNetConfig, pretrain_epochs
from segmentation_tf.inference import predict_stack
from segmentation_tf.losses import BceJaccardLoss
from segmentation_tf.metrics import ForegroundDice, ForegroundIoU
from segmentation_tf.model import build_unet
from segmentation_tf.slices import store_slices
from shared.atomic import atomic_path, write_json_atomic
from shared.errors import UserError
from shared.presets import changed_fields
from shared.store import TileStore

PRETRAINED = "pretrained.weights.h5"  # the synthetic phase's weights (--synthetic-schedule pretrain)
# the last phase's weights and record, kept from the end of model.fit until the segmenter is saved:
# a run killed while its BatchNorm statistics are recomputed or its threshold calibrated resumes
# there (Keras deletes its backup when fit ends), instead of training again
TRAINED, TRAINED_RECORD = "trained.weights.h5", "trained.json"
EPOCHS = "epochs"  # --keep-epochs: every epoch's weights
BACKUP_SETTINGS = "settings.json"  # in RUN/backup/: the settings the backed-up training runs under
# the wall-time box is per process: a killed run may be resumed with another one
RESUMED_UNDER_OTHER = frozenset({"train.time_limit_minutes"})


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


def compiled_model(config: UNetConfig, train: TrainConfig, steps: int, tile_weights: bool = False
                   ) -> keras.Model:
    model = build_unet(config)
    accumulate = train.accumulate if train.accumulate > 1 else None
    ema = {"use_ema": True, "ema_momentum": train.ema_momentum} if train.ema_momentum > 0 else {}
    optimizer = keras.optimizers.Adam(learning_rate(train, steps), gradient_accumulation_steps=accumulate,
                                      **ema)
    model.compile(optimizer=optimizer, loss=BceJaccardLoss(tile_weights=tile_weights),
                  metrics=[ForegroundIoU(0.5, annotated_last=tile_weights),
                           ForegroundDice(0.5, annotated_last=tile_weights)],
                  jit_compile="auto" if train.xla is None else train.xla)
    return model


def calibrate(model: keras.Model, store: TileStore, config: TrainConfig) -> dict[str, Any]:
    """Threshold maximizing pooled IoU on the whole validation slices (overlap + blending)."""
    images, masks = store_slices(store, "val")
    return calibrate_slices(predict_stack(model, images, store.tile_size, config.overlap, config.tta), masks)


def stop_on_nan(losses: list[float], run_dir) -> None:
    """TerminateOnNaN ends model.fit quietly; a NaN model must not be calibrated or saved."""
    if losses and not np.isfinite(losses[-1]):
        raise UserError(f"training loss became NaN in epoch {len(losses)}; stopped without saving a model "
                        f"(the best checkpoint so far and the resume backup stay in {run_dir}); "
                        "lower --lr or use --precision float32")


@dataclass
class Phase:
    """One model.fit: its folder (backup, checkpoints, TensorBoard, log), data and epochs."""
    folder: Path
    data: DataConfig
    synthetic_only: bool
    train: TrainConfig


def phases(inputs: RunInputs) -> list[Phase]:
    """mix: one phase on real + synthetic batches. pretrain: synthetic tiles alone (RUN/pretrain/),
    then real tiles alone (RUN/), each resumable on its own."""
    if inputs.train.synthetic_schedule != "pretrain":
        return [Phase(inputs.run_dir, inputs.data, False, inputs.train)]
    real_only = dataclasses.replace(inputs.data, synthetic_ratio=0.0)
    first = dataclasses.replace(inputs.train, epochs=pretrain_epochs(inputs.train))
    return [Phase(inputs.run_dir / "pretrain", real_only, True, first),
            Phase(inputs.run_dir, real_only, False, inputs.train)]


def resumed_epochs(folder: Path) -> int:
    """Epochs a killed fit of this folder finished (BackupAndRestore's record; 0 for a fresh run)."""
    meta = folder / "backup" / "training_metadata.json"
    try:
        return int(json.loads(meta.read_text())["epoch"]) if meta.is_file() else 0
    except (ValueError, KeyError, TypeError):
        return 0  # unreadable: Keras itself will then start over


def guard_resumed_settings(folder: Path, done: int, settings: dict[str, Any]) -> float:
    """A killed fit resumes only under the settings it was trained with: Keras's backup restores
    weights and optimizer state whatever the flags now say. A fresh fit records its settings in the
    backup folder, which Keras deletes with the backup when fit ends. Returns the training seconds of
    the processes before this one (TrainClock's record; 0 for a fresh fit)."""
    path = folder / "backup" / BACKUP_SETTINGS
    if not done:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"settings": settings, "train_seconds": 0.0})
        return 0.0
    try:
        kept = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        kept = {}  # a backup from before settings were kept, or damaged: resume as Keras would
    changed = [n for n in settings_changed(kept, settings) if n not in RESUMED_UNDER_OTHER]
    if changed:
        raise UserError(f"{path.parent}: a training killed after {done} epoch(s) under other settings "
                        f"({', '.join(changed)}) would resume here; rerun with its flags to continue it, "
                        "or use another --out")
    return float(kept.get("train_seconds", 0.0))


class TrainClock(keras.callbacks.Callback):
    """Training seconds across the processes of one fit, written beside the backup after every epoch
    (after BackupAndRestore's own save), so a resumed run reports what its training cost in all."""

    def __init__(self, path: Path, settings: dict[str, Any], before: float):
        super().__init__()
        self.path, self.settings, self.before = path, settings, before

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = self.before + time.perf_counter() - self.start
        write_json_atomic(self.path, {"settings": self.settings, "train_seconds": seconds})


@dataclass
class Training:
    """A trained model, its per-epoch logs in this process, and what its training cost."""
    model: keras.Model
    history: dict[str, list[float]]
    seconds: float              # this process's training
    seconds_before: float = 0.0  # the training of killed processes it resumed from


def run_phase(phase: Phase, inputs: RunInputs, strategy: tf.distribute.Strategy, policy: str,
              start_weights: Path | None) -> Training:
    """model.fit of one phase from the seeded initial weights (or a previous phase's weights)."""
    phase.folder.mkdir(parents=True, exist_ok=True)
    tile = inputs.store.tile_size
    pool = (pipeline.synthetic_pool(inputs.synthetic, phase.data) if phase.synthetic_only
            else pipeline.real_train_pool(inputs.store, phase.data))
    synthetic = pipeline.synthetic_pool(inputs.synthetic, phase.data) if phase.data.synthetic_ratio else None
    n_real, n_syn = pipeline.batch_composition(phase.data.batch_size, phase.data.synthetic_ratio)
    steps = phase.train.steps_per_epoch or pipeline.steps_per_epoch(pool.tiles, n_real)
    done = resumed_epochs(phase.folder)
    settings = recorded_settings(inputs)
    before = guard_resumed_settings(phase.folder, done, settings)
    train_ds = pipeline.training_dataset(pool, synthetic, phase.data.crop or tile, phase.data, done * steps)
    weighted = pipeline.targets_weighted(phase.data, pool, synthetic)  # a loss-weight channel ends them
    val_x, val_y = pipeline.validation_arrays(inputs.store, phase.data, weighted=weighted)
    val_ds = tf.data.Dataset.from_tensor_slices((val_x, val_y)).batch(phase.data.batch_size)
    # --seed fixes the initial weights as well as the data stream, so two runs of one command (and the
    # cells of an ablation paired by seed) start from the same model
    keras.utils.set_random_seed(phase.train.init_seed)
    with strategy.scope():
        model = compiled_model(inputs.model, phase.train, steps, weighted)
        if start_weights is not None:
            model.load_weights(start_weights)
    batch = (f"{n_real} synthetic tiles (pre-training)" if phase.synthetic_only
             else f"{n_real} real + {n_syn} synthetic tiles"
             f"{pipeline.rounding_note(phase.data.batch_size, phase.data.synthetic_ratio)}")
    print(f"{model.count_params():,} parameters, policy {policy}, "
          f"{strategy.num_replicas_in_sync} replica(s); {steps} steps/epoch of {batch}")
    callbacks = standard_callbacks(phase.folder, phase.train.patience, val_x, val_y,
                                   phase.train.time_limit_minutes, phase.train.schedule == "plateau",
                                   phase.train.restore_best,
                                   phase.folder / EPOCHS if phase.train.keep_epochs else None)
    callbacks.append(TrainClock(phase.folder / "backup" / BACKUP_SETTINGS, settings, before))
    start = time.perf_counter()
    history = model.fit(train_ds, epochs=phase.train.epochs, steps_per_epoch=steps, validation_data=val_ds,
                        callbacks=callbacks, verbose=phase.train.verbose)
    seconds = time.perf_counter() - start
    stop_on_nan(history.history.get("loss", []), phase.folder)
    logs = {k: [float(np.asarray(x)) for x in v] for k, v in history.history.items()}
    return Training(model, logs, seconds, before)


def pretrained_weights(phase: Phase, inputs: RunInputs, strategy, policy: str) -> Path:
    """The synthetic phase's weights, trained once: the file is the phase's completion marker."""
    target = phase.folder / PRETRAINED
    if not target.exists():
        model = run_phase(phase, inputs, strategy, policy, None).model
        with atomic_path(target, suffix=".weights.h5") as tmp:
            model.save_weights(tmp)
    return target


# settings that do not decide the trained weights (applied after training, what is logged and kept, or
# how the same arithmetic is compiled): a kept model may be finished under other values of these
AFTER_TRAINING = frozenset({"overlap", "tta", "precise_bn", "verbose", "keep_epochs", "xla"})


def training_settings(inputs: RunInputs) -> dict[str, Any]:
    """What decides the trained weights: the model, data and training settings and the stores."""
    train = {k: v for k, v in asdict(inputs.train).items() if k not in AFTER_TRAINING}
    return {"model": asdict(inputs.model), "data": asdict(inputs.data), "train": train,
            "real_store": str(inputs.store.path.resolve()),  # ./s and s are one store
            "synthetic_store": str(inputs.synthetic.path.resolve()) if inputs.synthetic else None}


def recorded_settings(inputs: RunInputs) -> dict[str, Any]:
    """training_settings as a JSON record of them reads back (tuples as lists), to compare with one."""
    return json.loads(json.dumps(training_settings(inputs)))


def settings_changed(kept: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """Dotted names of the settings that differ (none for a record kept before settings were)."""
    return changed_fields(kept["settings"], now) if "settings" in kept else []


def trained_model(inputs: RunInputs, strategy, policy: str) -> Training:
    """The last phase trained (or its weights kept by an earlier process that ended before saving
    the segmenter), with a float32 model."""
    weights, record = inputs.run_dir / TRAINED, inputs.run_dir / TRAINED_RECORD
    settings = recorded_settings(inputs)
    if not record.is_file():
        *first, last = phases(inputs)
        start_weights = pretrained_weights(first[0], inputs, strategy, policy) if first else None
        done = run_phase(last, inputs, strategy, policy, start_weights)
        with atomic_path(weights, suffix=".weights.h5") as tmp:
            done.model.save_weights(tmp)
        write_json_atomic(record, {"history": done.history, "train_seconds": done.seconds,  # last: the marker
                                   "train_seconds_before": done.seconds_before, "settings": settings})
        return dataclasses.replace(done, model=float32_copy(done.model, inputs.model))
    kept = json.loads(record.read_text())
    changed = settings_changed(kept, settings)
    if changed:
        # refusing keeps both: the finished training and the user's new intent
        raise UserError(f"{record}: this folder holds a finished training with other settings "
                        f"({', '.join(changed)}); fit again with the same flags to save it, or use another "
                        "--out")
    model = build_unet(inputs.model)  # under the run's policy, like the model the weights came from
    model.load_weights(weights)
    print(f"training had finished ({weights}); recomputing statistics and calibrating")
    return Training(float32_copy(model, inputs.model), kept["history"], float(kept["train_seconds"]),
                    float(kept.get("train_seconds_before", 0.0)))


def fit(inputs: RunInputs, strategy: tf.distribute.Strategy, policy: str) -> dict[str, Any]:
    run_dir, store = inputs.run_dir, inputs.store
    run_dir.mkdir(parents=True, exist_ok=True)
    # float32: what is calibrated, saved, exported and served
    trained = trained_model(inputs, strategy, policy)
    model, train_seconds, before = trained.model, trained.seconds, trained.seconds_before
    batchnorm = (recompute_on_store(model, store, inputs.data.batch_size) if inputs.train.precise_bn
                 else None)
    calibration = calibrate(model, store, inputs.train)
    provenance = {**provenance_of(inputs, policy, strategy, trained.history, train_seconds, calibration),
                  "train_seconds_all_processes": train_seconds + before, "batchnorm_recomputed": batchnorm}
    save_segmenter(model, inputs.model, run_dir, calibration["threshold"], store.tile_size, provenance,
                   inputs.train.overlap, inputs.train.tta, store.pixel_size)
    write_json_atomic(run_dir / "train_summary.json", provenance)
    for name in (TRAINED_RECORD, TRAINED):  # the segmenter is saved: the marker goes first
        (run_dir / name).unlink(missing_ok=True)
    print(f"validation IoU {calibration['iou']:.4f} / Dice {calibration['dice']:.4f} at the calibrated "
          f"threshold {calibration['threshold']:.6g} (IoU {calibration['iou_at_0.5']:.4f} at 0.5); "
          f"trained {train_seconds / 60:.1f} min"
          f"{f' ({(train_seconds + before) / 60:.1f} with the killed runs before)' if before else ''}; "
          f"saved {run_dir / 'segmenter.keras'}")
    if warning := edge_warning(calibration):
        print(warning)
    return provenance


def provenance_of(inputs: RunInputs, policy: str, strategy, history: dict[str, list], seconds: float,
                  calibration: dict[str, Any]) -> dict[str, Any]:
    epochs_run = len(history.get("loss", []))
    return {
        "real_store": str(inputs.store.path), "real_train_tiles": int(len(inputs.store.indices("train"))),
        "val_tiles": int(len(inputs.store.indices("val"))),
        "synthetic_store": str(inputs.synthetic.path) if inputs.synthetic else None,
        "synthetic_tiles": len(inputs.synthetic) if inputs.synthetic else 0,
        "model": asdict(inputs.model), "data": asdict(inputs.data), "train": asdict(inputs.train),
        "policy": policy, "replicas": strategy.num_replicas_in_sync,
        "epochs_this_process": epochs_run, "train_seconds_this_process": seconds,
        "last_epoch_logs": {k: float(v[-1]) for k, v in history.items() if v},
        "calibration": calibration, "calibrated_on": "validation split, whole slices",
    }
