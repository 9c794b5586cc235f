"""Training callbacks: the standard Keras ones wired to a run folder, plus four small ones:
an atomic best-model checkpoint, every epoch's weights (--keep-epochs), TensorBoard image panels
(input | truth | prediction) and a wall-clock limit.

    RUN/best.keras           best validation model (written to a temp file, then renamed)
    RUN/backup/              BackupAndRestore state: a killed run resumes at the next epoch
    RUN/log.csv              one row per epoch
    RUN/epochs/              with --keep-epochs: epoch_001.weights.h5, ...
    RUN/tensorboard/         scalars (train/, validation/) and image panels (images/)
"""

from __future__ import annotations

import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from segmentation_tf.artifacts import save_model_atomic
from shared.atomic import atomic_path
from shared.normalization import unnormalize


class AtomicBestCheckpoint(keras.callbacks.Callback):
    """ModelCheckpoint(save_best_only=True) that never leaves a half-written file."""

    def __init__(self, path: Path, monitor: str = "val_iou", mode: str = "max"):
        super().__init__()
        self.path, self.monitor, self.mode = Path(path), monitor, mode
        self.best = -np.inf if mode == "max" else np.inf

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            return
        better = value > self.best if self.mode == "max" else value < self.best
        if better:
            self.best = float(value)
            save_model_atomic(self.model, self.path)


class ImagePanels(keras.callbacks.Callback):
    """After each epoch, write TensorBoard images of a few validation tiles: input, truth,
    prediction (tags panels/input, panels/truth, panels/prediction)."""

    def __init__(self, log_dir: Path, x: np.ndarray, y: np.ndarray, max_images: int = 4):
        super().__init__()
        self.x = x[:max_images].astype(np.float32)
        self.truth = y[:max_images, ..., :1].astype(np.float32)
        self.writer = tf.summary.create_file_writer(str(Path(log_dir) / "images"))

    def on_epoch_end(self, epoch, logs=None):
        pred = np.asarray(self.model.predict_on_batch(self.x), np.float32)
        with self.writer.as_default():
            tf.summary.image("panels/input", unnormalize(self.x), step=epoch, max_outputs=len(self.x))
            tf.summary.image("panels/truth", self.truth, step=epoch, max_outputs=len(self.x))
            tf.summary.image("panels/prediction", pred, step=epoch, max_outputs=len(self.x))
        self.writer.flush()

    def on_train_end(self, logs=None):
        self.writer.close()


class TimeLimit(keras.callbacks.Callback):
    """Stop training after the epoch during which `minutes` of wall-clock time have passed."""

    def __init__(self, minutes: float):
        super().__init__()
        self.seconds = minutes * 60.0
        self.start = time.monotonic()

    def on_train_begin(self, logs=None):
        self.start = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        if time.monotonic() - self.start >= self.seconds:
            print(f"time limit of {self.seconds / 60:.1f} min reached after epoch {epoch + 1}; stopping")
            self.model.stop_training = True


class EpochWeights(keras.callbacks.Callback):
    """Every epoch's weights as FOLDER/epoch_NNN.weights.h5 (1-based, as Keras prints epochs), each
    written atomically: the raw weights with their training-time BatchNorm statistics (a weight
    average, if any, is applied only when fit ends)."""

    def __init__(self, folder: Path):
        super().__init__()
        self.folder = Path(folder)

    def on_epoch_end(self, epoch, logs=None):
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(epoch_weights(self.folder, epoch + 1), suffix=".weights.h5") as tmp:
            self.model.save_weights(tmp)


def epoch_weights(folder: Path, epoch: int) -> Path:
    return Path(folder) / f"epoch_{epoch:03d}.weights.h5"


def standard_callbacks(run_dir: Path, patience: int, val_x: np.ndarray, val_y: np.ndarray,
                       time_limit_minutes: float = 0.0, plateau: bool = False, restore_best: bool = True,
                       keep_epochs: Path | None = None) -> list[keras.callbacks.Callback]:
    """BackupAndRestore first (after the kept epoch weights, if any), so an epoch is only logged once
    its state is safe."""
    callbacks: list[keras.callbacks.Callback] = [
        keras.callbacks.BackupAndRestore(str(run_dir / "backup")),
        keras.callbacks.TerminateOnNaN(),
        AtomicBestCheckpoint(run_dir / "best.keras"),
        # Keras restores the best epoch at the end of every fit, stopped early or not (and after a
        # weight average was applied): restore_best=False keeps the last (or averaged) weights
        keras.callbacks.EarlyStopping(monitor="val_iou", mode="max", patience=patience,
                                      restore_best_weights=restore_best),
        keras.callbacks.TensorBoard(str(run_dir / "tensorboard"), write_graph=False, profile_batch=0),
        ImagePanels(run_dir / "tensorboard", val_x, val_y),
        keras.callbacks.CSVLogger(str(run_dir / "log.csv"), append=True),
    ]
    if plateau:
        callbacks.insert(2, keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5,
                                                              patience=max(2, patience // 3), min_lr=1e-6))
    if keep_epochs is not None:
        # before the backup: a run killed between the two trains that epoch again and rewrites its file
        callbacks.insert(0, EpochWeights(keep_epochs))
    if time_limit_minutes > 0:
        callbacks.append(TimeLimit(time_limit_minutes))
    return callbacks
