"""Train the residual U-Net segmenter.

    python -m segmentation_tf.fit --out runs/seg                       # built-in phantom, quick preset
    python -m segmentation_tf.fit --store STORE --preset real --out runs/seg_real
    python -m segmentation_tf.fit --store STORE --synthetic-store SYN --synthetic-ratio 0.3 --out runs/mix

Flags left unset take the preset's value. Rerunning with the same --out resumes a killed run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from segmentation_tf.config import DataConfig, TrainConfig
from segmentation_tf.presets import FLAGS, PRESETS
from segmentation_tf.quiet import quiet_tensorflow
from shared.errors import (
    ArgumentParser,
    UserError,
    fraction,
    non_negative_int,
    positive_float,
    positive_int,
    run_cli,
)
from shared.presets import apply_flags
from shared.sources import add_data_flags, default_synthetic_store, resolve_real_store, source_from_args
from shared.store import TileStore


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m segmentation_tf.fit", description=__doc__.split("\n")[0])
    add_data_flags(p)
    p.add_argument("--out", type=Path, default=Path("runs/segmenter"), help="run folder")
    p.add_argument("--preset", choices=sorted(PRESETS), help="default: quick on the phantom, real otherwise")
    p.add_argument("--synthetic-store", type=Path,
                   help="synthetic tile store (default with --synthetic-ratio: runs/synthetic_store, where "
                        "generation_torch.sample writes by default)")
    p.add_argument("--synthetic-ratio", type=fraction, help="share of each batch that is synthetic, [0, 1)")
    p.add_argument("--synthetic-schedule", choices=("mix", "pretrain"),
                   help="mix (default): synthetic tiles in every batch; pretrain: synthetic tiles alone, "
                        "then fine-tuning on real tiles alone")
    p.add_argument("--synthetic-weight", type=positive_float,
                   help="loss weight of a synthetic tile in a mixed batch (default 1; real tiles weigh 1)")
    p.add_argument("--pretrain-epochs", type=positive_int,
                   help="epochs on synthetic tiles before fine-tuning (default: a third of --epochs)")
    p.add_argument("--base-width", type=positive_int, help="channels at full resolution")
    p.add_argument("--depth", type=positive_int, help="poolings; tiles must divide by 2**depth")
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--epochs", type=positive_int)
    p.add_argument("--steps-per-epoch", type=positive_int,
                   help="optimizer steps per epoch (default: one pass over the real tiles)")
    p.add_argument("--lr", type=positive_float, help="peak learning rate")
    p.add_argument("--ema", type=fraction,
                   help="momentum of a weight moving average that ends training (real preset: 0.99, "
                        "quick: off; needs --no-restore-best, else the best epoch's weights replace it)")
    p.add_argument("--restore-best", action=argparse.BooleanOptionalAction,
                   help="end with the best validation epoch's weights (quick preset) or the last ones "
                        "(real preset; with its EMA unless --ema 0); --restore-best drops a preset's EMA")
    p.add_argument("--precise-bn", action=argparse.BooleanOptionalAction,
                   help="end by recomputing BatchNorm statistics under the final weights on the "
                        "un-augmented training tiles (default) or keep the training-time averages")
    p.add_argument("--keep-epochs", action="store_true", default=None,
                   help="also save every epoch's weights (RUN/epochs/epoch_NNN.weights.h5, training-time "
                        "BatchNorm statistics) to study or choose the ending later")
    p.add_argument("--schedule", choices=("cosine", "plateau"))
    p.add_argument("--accumulate", type=positive_int, help="gradient accumulation steps")
    p.add_argument("--patience", type=positive_int, help="early-stopping patience (epochs)")
    p.add_argument("--time-limit", type=positive_float, help="minutes of training before stopping")
    p.add_argument("--random-crops", action=argparse.BooleanOptionalAction,
                   help="real windows anywhere in the slices (else the store's tile grid)")
    p.add_argument("--elastic", type=float, help="elastic deformation std in pixels (0: off)")
    p.add_argument("--gray", type=float, help="gray-value variation strength (0: off)")
    p.add_argument("--weight-w0", type=float, help="U-Net border weight map amplitude (0: off)")
    p.add_argument("--weight-sigma", type=positive_float, help="border weight map length scale (pixels)")
    p.add_argument("--overlap", type=non_negative_int, help="prediction window overlap (calibration)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, help="8-fold TTA in calibration")
    p.add_argument("--seed", type=int, help="initial weights and data stream")
    p.add_argument("--data-seed", type=int,
                   help="the data stream only (default: --seed); other --data-seed, same --seed: A/A control")
    p.add_argument("--crop", type=positive_int, help="training window side in pixels (default: tile size)")
    p.add_argument("--precision", choices=("auto", "float32", "mixed_bfloat16", "mixed_float16"),
                   default="auto", help="auto: bf16 on CPUs/GPUs that support it")
    p.add_argument("--xla", action=argparse.BooleanOptionalAction,
                   help="XLA-compile the training step (default: Keras's choice, on for GPUs, off for CPUs; "
                        "float32 trained 1.6x faster with it on a CPU without avx512: "
                        "python -m bench.segmentation)")
    p.add_argument("--cpu-devices", type=non_negative_int, default=0,
                   help="split the CPU into N logical devices under MirroredStrategy (testing)")
    p.add_argument("--verbose", type=int, default=2, choices=(0, 1, 2))
    return p


def check_synthetic_plan(data: DataConfig, train: TrainConfig, synthetic_store: Path | None) -> None:
    """Refuse combinations of the synthetic-data flags that would train something other than asked."""
    pretrain = train.synthetic_schedule == "pretrain"
    if (data.synthetic_ratio > 0 or pretrain) and synthetic_store is None:
        raise UserError(f"{'--synthetic-schedule pretrain' if pretrain else '--synthetic-ratio > 0'} needs "
                        "--synthetic-store")
    if synthetic_store is not None and not pretrain and data.synthetic_ratio == 0:
        raise UserError(f"{synthetic_store}: a synthetic store without --synthetic-ratio would train on real "
                        "tiles only; give --synthetic-ratio (e.g. 0.3) or --synthetic-schedule pretrain")
    if pretrain and data.synthetic_ratio > 0:
        raise UserError("--synthetic-schedule pretrain fine-tunes on real tiles alone: "
                        "drop --synthetic-ratio")
    if data.synthetic_weight != 1.0 and (pretrain or data.synthetic_ratio == 0):
        raise UserError("--synthetic-weight weights synthetic tiles in a mixed batch: it needs "
                        "--synthetic-ratio > 0 and the mix schedule")
    if train.pretrain_epochs and not pretrain:
        raise UserError("--pretrain-epochs needs --synthetic-schedule pretrain")


def resolved_ending(train: TrainConfig, ema_flag: float | None, restore_best_flag: bool | None
                    ) -> TrainConfig:
    """How training ends. An explicit --restore-best over a preset's EMA ending (the real preset's) ends
    at the best validation epoch: flag > preset. An EMA and the best epoch at once cannot be had."""
    if restore_best_flag and ema_flag is None and train.ema_momentum > 0:
        return replace(train, ema_momentum=0.0)
    if train.ema_momentum > 0 and train.restore_best:
        raise UserError("--ema needs --no-restore-best: the best epoch's raw weights would replace the "
                        "average")
    return train


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    source = source_from_args(args)
    preset = args.preset or ("quick" if args.store is None and args.images is None else "real")
    run = apply_flags(PRESETS[preset], FLAGS, vars(args))
    model_cfg, data_cfg, train_cfg = run.model, run.data, run.train
    synthetic_path = args.synthetic_store
    wants_synthetic = data_cfg.synthetic_ratio > 0 or train_cfg.synthetic_schedule == "pretrain"
    if synthetic_path is None and wants_synthetic:
        synthetic_path = default_synthetic_store()  # the chain train -> sample -> fit needs no other flag
    check_synthetic_plan(data_cfg, train_cfg, synthetic_path)
    train_cfg = resolved_ending(train_cfg, args.ema, args.restore_best)
    store = resolve_real_store(source, args.out)
    synthetic = TileStore(synthetic_path) if synthetic_path else None
    if synthetic is not None and synthetic.tile_size != store.tile_size:
        raise UserError(f"{synthetic.path}: synthetic tiles are {synthetic.tile_size}x{synthetic.tile_size} "
                        f"but the real tiles are {store.tile_size}x{store.tile_size}")
    if store.tile_size % 2 ** model_cfg.depth:
        raise UserError(f"tile size {store.tile_size} is not divisible by 2**depth = {2 ** model_cfg.depth}")
    if data_cfg.crop > store.tile_size or data_cfg.crop % 2 ** model_cfg.depth:
        raise UserError(f"--crop {data_cfg.crop} must be at most the tile size {store.tile_size} and "
                        f"divisible by 2**depth = {2 ** model_cfg.depth}")
    quiet_tensorflow()  # before any TensorFlow import: no start-up lines
    from segmentation_tf.precision import apply_policy, choose_strategy  # imports TensorFlow
    from segmentation_tf.training import RunInputs, fit

    strategy = choose_strategy(args.cpu_devices)
    policy = apply_policy(args.precision)
    fit(RunInputs(args.out, store, synthetic, model_cfg, data_cfg, train_cfg), strategy, policy)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
