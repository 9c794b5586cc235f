"""Typed configuration of a segmenter run (no TensorFlow import here, so the CLIs can validate their
input before paying for it). The CLI fills these from a preset and the flags left set."""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.tiling import OVERLAP


@dataclass(frozen=True)
class UNetConfig:
    base_width: int = 16       # channels at full resolution; doubled at each level down
    depth: int = 4             # number of 2x poolings; inputs must be divisible by 2**depth
    max_width: int = 512       # cap on channels per level
    dropout: float = 0.0       # spatial dropout in the bottleneck
    bn_momentum: float = 0.95  # BatchNorm moving-average momentum (short runs want < 0.99)

    def widths(self) -> list[int]:
        return [min(self.base_width * 2 ** level, self.max_width) for level in range(self.depth + 1)]


@dataclass(frozen=True)
class AugmentConfig:
    dihedral: bool = True        # the 8 flips/rotations of the square
    elastic_sigma: float = 0.0   # std of the coarse-grid displacements in pixels (0: off)
    elastic_grid: int = 5        # control points per side of the coarse displacement grid
    gray: float = 0.0            # strength of brightness/contrast/gamma variation (0: off)


@dataclass(frozen=True)
class DataConfig:
    batch_size: int = 8
    synthetic_ratio: float = 0.0     # fraction of each batch drawn from synthetic tiles, in [0, 1)
    synthetic_weight: float = 1.0    # loss weight of a synthetic tile in a mixed batch (real: 1)
    random_crops: bool = True        # real windows anywhere in the whole slices, not the tile grid
    weight_w0: float = 0.0           # U-Net border weight map amplitude (0: no weight map)
    weight_sigma: float = 5.0        # its length scale in pixels
    seed: int = 0                    # the data stream (windows, augmentation, batch order)
    crop: int = 0                    # training window side in pixels (0: the tile size)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 4                   # planned epochs (the cosine schedule spans them)
    steps_per_epoch: int = 0          # 0: one pass over the real tiles; fixed: equal budgets across ratios
    learning_rate: float = 1e-3       # peak Adam learning rate
    schedule: str = "cosine"          # "cosine" (1 warm-up epoch, then cosine to 1%) or "plateau"
    accumulate: int = 1               # gradient accumulation steps (1: update every batch)
    patience: int = 10                # EarlyStopping patience on val_iou, in epochs
    time_limit_minutes: float = 0.0   # stop after the epoch that crosses this wall time (0: none)
    overlap: int = OVERLAP                 # whole-slice prediction window overlap for calibration
    tta: bool = False                 # 8-fold test-time augmentation during calibration
    init_seed: int = 0                # initial weights (--seed sets it and the data seed)
    restore_best: bool = True         # end with the best validation epoch's weights (Keras restores
    #                                   them at the end of every fit); False: the last weights
    ema_momentum: float = 0.0         # > 0: keep an exponential moving average of the weights and
    #                                   end training with it (lowers the run-to-run spread; 0: off)
    precise_bn: bool = True           # end by recomputing BatchNorm statistics under the final weights
    #                                   on the un-augmented training tiles (segmentation_tf.batchnorm)
    keep_epochs: bool = False         # save every epoch's weights to RUN/epochs/ (to study or choose
    #                                   an ending later: bench.endings)
    synthetic_schedule: str = "mix"   # "mix": synthetic tiles in every batch; "pretrain": synthetic
    #                                   tiles alone first, then fine-tuning on real tiles alone
    pretrain_epochs: int = 0          # epochs of the synthetic phase (0: a third of --epochs, at least 1)
    xla: bool | None = None           # XLA-compile the training step (None: Keras's choice, on for GPUs and
    #                                   off for CPUs; 2 AMD EPYC cores without avx512 train 2x faster in
    #                                   float32 with it: bench.segmentation)
    verbose: int = 2


def tile_weighted(data: DataConfig) -> bool:
    """Whether targets carry a per-tile loss-weight channel (only a mixed batch with W != 1 needs one)."""
    return data.synthetic_ratio > 0 and data.synthetic_weight != 1.0


def pretrain_epochs(train: TrainConfig) -> int:
    return train.pretrain_epochs or max(1, train.epochs // 3)
