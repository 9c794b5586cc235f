"""Presets of the segmenter: configs that fit a data size and a time budget (no TensorFlow import).
Explicit flags always win: flag > preset > dataclass default, through shared.presets.apply_flags,
the same mechanism the generator's trainer uses.

quick  the built-in phantom on 2 CPU cores: a narrow net, minutes.
real   EPFL CA1 on 2 CPU cores in under an hour (see docs/segmenter.md). It ends with an EMA 0.99 of
       the last weights, not at the best validation epoch: picked by a validation IoU measured under
       training-time BatchNorm averages, that epoch is a noisy choice (bench.endings).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from segmentation_tf.config import AugmentConfig, DataConfig, TrainConfig, UNetConfig


@dataclass(frozen=True)
class SegmenterRun:
    """Every config of one segmenter run."""
    model: UNetConfig = field(default_factory=UNetConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


PRESETS: dict[str, SegmenterRun] = {
    "quick": SegmenterRun(UNetConfig(base_width=8, depth=4),
                          DataConfig(batch_size=8, augment=AugmentConfig(gray=0.1)),
                          TrainConfig(epochs=8, learning_rate=2e-3, patience=10, overlap=32)),
    "real": SegmenterRun(UNetConfig(base_width=16, depth=4),
                         DataConfig(batch_size=8, random_crops=True,
                                    augment=AugmentConfig(elastic_sigma=6.0, elastic_grid=5, gray=0.15)),
                         TrainConfig(epochs=55, learning_rate=2e-3, patience=100, time_limit_minutes=50.0,
                                     overlap=128, tta=True, restore_best=False, ema_momentum=0.99)),
}

# flag (argparse dest) -> the field(s) it sets; order is precedence (--data-seed refines --seed)
FLAGS: dict[str, str | tuple[str, ...]] = {
    "base_width": "model.base_width", "depth": "model.depth",
    "batch_size": "data.batch_size", "synthetic_ratio": "data.synthetic_ratio",
    "synthetic_weight": "data.synthetic_weight", "random_crops": "data.random_crops",
    "weight_w0": "data.weight_w0", "weight_sigma": "data.weight_sigma", "crop": "data.crop",
    "seed": ("data.seed", "train.init_seed"), "data_seed": "data.seed",
    "elastic": "data.augment.elastic_sigma", "gray": "data.augment.gray",
    "epochs": "train.epochs", "steps_per_epoch": "train.steps_per_epoch", "lr": "train.learning_rate",
    "schedule": "train.schedule", "accumulate": "train.accumulate", "patience": "train.patience",
    "time_limit": "train.time_limit_minutes", "overlap": "train.overlap", "tta": "train.tta",
    "synthetic_schedule": "train.synthetic_schedule", "pretrain_epochs": "train.pretrain_epochs",
    "verbose": "train.verbose", "ema": "train.ema_momentum",
    "restore_best": "train.restore_best", "precise_bn": "train.precise_bn",
    "keep_epochs": "train.keep_epochs", "xla": "train.xla",
}
