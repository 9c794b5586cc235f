"""How should a segmenter run end? One `--preset real` training on the evidence grid's whole pool with
every epoch's weights kept, scored under four endings on the grid's test block (no model saw it).

    python -m bench.endings                 # EPFL CA1, the grid's matched layout, seed 0; resumable
    python -m bench.endings --seed 1        # another seed (results gather in one JSON)

Each ending recomputes the BatchNorm statistics under its weights and calibrates its threshold on the
validation block, as fit does, then is scored like a grid cell (whole test slices, overlap, TTA):

    best_moving   the epoch of best per-epoch validation IoU as Keras measures it, with the
                  training-time (momentum-averaged) statistics: how `--preset real` ended before
                  2026-12-06 (`--restore-best` still asks for it)
    best_precise  the epoch of best validation IoU measured after recomputing the statistics from a
                  few batches (what a per-epoch check could afford)
    last          the last epoch's raw weights (`--preset real --ema 0`)
    ema           an EMA 0.99 of the weights (`--no-restore-best --ema 0.99`): the run's own ending,
                  and `--preset real`'s since 2026-12-06

The training is the user's command plus `--no-restore-best --ema 0.99 --keep-epochs` (the first two
pin the ending the records were measured with, whatever the preset's default): the weight
average is a shadow copy that never feeds back into training, and the kept epochs hold the raw
weights, so the other three endings are picked from the very trajectory a plain `--preset real` run
of the same seed follows. Per epoch (a diagnostic; threshold 0.5, tiles without overlap or TTA):
validation and test IoU under the training-time and under recomputed statistics. Test figures never
choose an ending; they only score the choices."""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import ROOT, machine, print_table, shown_command
from bench.evidence import EMA_ENDING, PRESETS, USER_REFERENCE, Layout
from bench.synthetic_ablation import load_volume, make_store, run, slice_positions
from shared.atomic import write_json_atomic
from shared.errors import UserError, non_negative_int, run_cli
from shared.store import TileStore
from shared.tiff_io import write_stack

# the run's own ending; the kept epochs give the rest
FIT_FLAGS = (*USER_REFERENCE, *EMA_ENDING, "--keep-epochs")
ENDINGS = ("best_moving", "best_precise", "last", "ema")
STAT_BATCHES = 8  # per-epoch recomputed statistics (fit's end uses up to 64 batches)


@dataclass(frozen=True)
class Blocks:
    """The stores of one layout: the whole pool (train) + validation block, and the test block."""
    store: Path
    test_store: Path
    test_images: Path
    test_masks: Path
    slices: dict[str, list[int]]


def prepare(work: Path, preset: str = "matched") -> tuple[Blocks, str]:
    """The evidence grid's layout (blocks, guard bands) for the whole pool, written once into work."""
    cfg = PRESETS[preset]
    images, masks, source = load_volume()
    layout = Layout.of(len(images), cfg, slice_positions())
    work.mkdir(parents=True, exist_ok=True)
    pool = layout.labelled(0, cfg)
    blocks = Blocks(make_store(work / "store", images, masks, pool, layout.val),
                    make_store(work / "test_store", images, masks, [], layout.test),
                    work / "test_images.tif", work / "test_masks.tif",
                    {"train": pool, "val": layout.val, "test": layout.test})
    if not blocks.test_masks.exists():
        write_stack(blocks.test_images, images[layout.test])
        write_stack(blocks.test_masks, masks[layout.test])
    return blocks, source


def logged_val_iou(run_dir: Path) -> list[float]:
    """Keras's per-epoch validation IoU (training-time statistics), epoch 1 first."""
    with open(run_dir / "log.csv") as fh:
        return [float(row["val_iou"]) for row in csv.DictReader(fh)]


def kept_epochs(run_dir: Path) -> list[int]:
    from segmentation_tf.callbacks import epoch_weights
    from segmentation_tf.training import EPOCHS

    epochs = len(logged_val_iou(run_dir))
    missing = [e for e in range(1, epochs + 1) if not epoch_weights(run_dir / EPOCHS, e).is_file()]
    if missing:
        raise UserError(f"{run_dir / EPOCHS}: no weights kept for epoch(s) {missing[:5]} (trained without "
                        "--keep-epochs?)")
    return list(range(1, epochs + 1))


def run_meta(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "segmenter.json").read_text())


def fresh_model(run_dir: Path):
    """The run's architecture in float32 (each kept epoch's weights load into it)."""
    from segmentation_tf.config import UNetConfig
    from segmentation_tf.model import build_unet

    return build_unet(UNetConfig(**run_meta(run_dir)["model"]))


def tiles_of(store: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    tiles = TileStore(store)
    idx = tiles.indices(split)
    return tiles.images(idx), tiles.masks(idx)


def tile_iou(model, images: np.ndarray, masks: np.ndarray) -> float:
    """Pooled foreground IoU at 0.5 over whole tiles (how Keras's val_iou counts)."""
    from segmentation_tf.inference import predict_tiles
    from segmentation_tf.scores import iou

    return iou(predict_tiles(model, images), masks)


def epoch_row(model, weights: Path, blocks: Blocks, batch_size: int, stat_batches: int) -> dict[str, float]:
    """Validation and test tile IoU of one kept epoch, under its training-time statistics and under
    statistics recomputed from `stat_batches` batches of the pool's un-augmented tiles."""
    from segmentation_tf.batchnorm import recompute_batchnorm, tiles_for_statistics

    model.load_weights(weights)
    val, test = tiles_of(blocks.store, "val"), tiles_of(blocks.test_store, "val")
    row = {"val_moving": tile_iou(model, *val), "test_moving": tile_iou(model, *test)}
    pool = TileStore(blocks.store)
    recompute_batchnorm(model, tiles_for_statistics(pool, batch_size, stat_batches), batch_size, stat_batches)
    return row | {"val_precise": tile_iou(model, *val), "test_precise": tile_iou(model, *test)}


def picked_epochs(rows: dict[int, dict[str, float]], logged: list[float]) -> dict[str, int]:
    """The epoch each weight-picking ending takes (1-based; the first of ties, as Keras keeps it);
    best_precise only once every epoch has its row."""
    picks = {"best_moving": 1 + int(np.argmax(logged)), "last": len(logged)}
    if len(rows) == len(logged):
        picks["best_precise"] = max(sorted(rows), key=lambda e: (rows[e]["val_precise"], -e))
    return picks


def finish_ending(run_dir: Path, epoch: int, out: Path, blocks: Blocks) -> None:
    """The kept epoch's weights finished as fit finishes a run: statistics recomputed on the pool's
    tiles, threshold calibrated on the validation block, saved as a segmenter into out."""
    from segmentation_tf.artifacts import save_segmenter
    from segmentation_tf.batchnorm import recompute_on_store
    from segmentation_tf.callbacks import epoch_weights
    from segmentation_tf.config import TrainConfig, UNetConfig
    from segmentation_tf.training import EPOCHS, calibrate

    meta = run_meta(run_dir)
    train = TrainConfig(**meta["provenance"]["train"])
    store = TileStore(blocks.store)
    model = fresh_model(run_dir)
    model.load_weights(epoch_weights(run_dir / EPOCHS, epoch))
    batchnorm = recompute_on_store(model, store, meta["provenance"]["data"]["batch_size"])
    calibration = calibrate(model, store, train)
    out.mkdir(parents=True, exist_ok=True)
    save_segmenter(model, UNetConfig(**meta["model"]), out, calibration["threshold"], store.tile_size,
                   {"ending_of": str(run_dir), "epoch": epoch, "calibration": calibration,
                    "batchnorm_recomputed": batchnorm}, train.overlap, train.tta, store.pixel_size)


def test_score(seg_dir: Path, blocks: Blocks, log: Path) -> dict[str, Any]:
    """segmentation_tf.evaluate on the test block, as the grid scores a cell (kept in seg_dir)."""
    path = seg_dir / "test_scores.json"
    if not path.exists():
        run(["segmentation_tf.evaluate", "--model", str(seg_dir), "--images", str(blocks.test_images),
             "--masks", str(blocks.test_masks), "--json", str(path)], log)
    scores = json.loads(path.read_text())
    meta = json.loads((seg_dir / "segmenter.json").read_text())
    return {"test_iou": round(scores["iou"], 4),
            "val_iou": round(meta["provenance"]["calibration"]["iou"], 4),
            "threshold": round(meta["threshold"], 6),
            "test_iou_per_slice": [round(s["iou"], 4) for s in scores["slices"]]}


def swing(values: list[float]) -> float | None:
    """Standard deviation of the epoch-to-epoch changes (how noisy a pick by this figure is)."""
    return round(float(np.std(np.diff(values), ddof=1)), 4) if len(values) > 2 else None


def diagnostics(rows: dict[int, dict[str, float]], logged: list[float]) -> dict[str, Any]:
    """Over the second half of training (after warm-up and the largest steps): swings of the
    validation figures and how well each tracks the test figure of the same statistics."""
    epochs = sorted(rows)[len(rows) // 2:]
    out: dict[str, Any] = {"epochs": [epochs[0], epochs[-1]] if epochs else []}
    for stats in ("moving", "precise"):
        val = [rows[e][f"val_{stats}"] for e in epochs]
        test = [rows[e][f"test_{stats}"] for e in epochs]
        out[stats] = {"val_mean": round(float(np.mean(val)), 4), "val_swing": swing(val),
                      "test_mean": round(float(np.mean(test)), 4), "test_swing": swing(test),
                      "val_test_correlation": round(float(np.corrcoef(val, test)[0, 1]), 3)
                      if len(val) > 2 else None}
    out["logged_minus_measured_val"] = round(max(abs(logged[e - 1] - rows[e]["val_moving"]) for e in rows), 5)
    return out


def study_seed(seed: int, blocks: Blocks, work: Path, record: dict, save, precision: str,
               stat_batches: int) -> None:
    """Train (resumes); score the endings that need no per-epoch figures; each kept epoch's figures;
    the ending picked by them. `record` is saved after every step: a killed study resumes there."""
    run_dir, log = work / f"seed{seed}", work / "endings.log"
    record.setdefault("machine", machine())  # where it trained: its minutes and precision depend on it
    if not (run_dir / "segmenter.json").exists():
        print(f"seed {seed}: training (--preset real, every epoch kept; log in {log})", flush=True)
        start = time.time()
        run(["segmentation_tf.fit", "--store", str(blocks.store), "--out", str(run_dir), "--verbose", "0",
             *FIT_FLAGS, "--seed", str(seed), "--precision", precision], log)
        record["train_minutes"] = round((time.time() - start) / 60, 1)
    record["policy"] = run_meta(run_dir)["provenance"]["policy"]
    logged = logged_val_iou(run_dir)
    rows = {int(e): r for e, r in record.get("epochs", {}).items()}
    endings = record.setdefault("endings", {})

    def score(names: tuple[str, ...]) -> None:
        picks = picked_epochs(rows, logged)
        for name in names:
            if name in endings:
                continue
            seg_dir = run_dir if name == "ema" else run_dir / f"ending_{name}"
            if name != "ema" and not (seg_dir / "segmenter.json").exists():
                finish_ending(run_dir, picks[name], seg_dir, blocks)
            endings[name] = {"epoch": picks.get(name), **test_score(seg_dir, blocks, log)}
            save()
            print(f"seed {seed} ending {name}: {endings[name]}", flush=True)

    score(("ema", "best_moving", "last"))  # the comparison that needs no per-epoch figures first
    from segmentation_tf.callbacks import epoch_weights
    from segmentation_tf.training import EPOCHS

    model, batch_size = fresh_model(run_dir), run_meta(run_dir)["provenance"]["data"]["batch_size"]
    for epoch in kept_epochs(run_dir):
        if epoch in rows:
            continue
        rows[epoch] = {k: round(v, 4) for k, v in
                       epoch_row(model, epoch_weights(run_dir / EPOCHS, epoch), blocks, batch_size,
                                 stat_batches).items()}
        rows[epoch]["val_logged"] = round(logged[epoch - 1], 4)
        record["epochs"] = {str(e): rows[e] for e in sorted(rows)}
        save()
        print(f"seed {seed} epoch {epoch}/{len(logged)}: {rows[epoch]}", flush=True)
    score(("best_precise",))
    record["diagnostics"] = diagnostics(rows, logged)
    save()


def summary_rows(seeds: dict[str, dict]) -> list[dict]:
    rows = []
    for seed, record in sorted(seeds.items()):
        for name in ENDINGS:
            ending = record.get("endings", {}).get(name)
            if ending:
                rows.append({"seed": seed, "ending": name, "epoch": ending["epoch"] or "-",
                             "val_iou": ending["val_iou"], "test_iou": ending["test_iou"]})
    return rows


def diagnostic_rows(seeds: dict[str, dict]) -> list[dict]:
    rows = []
    for seed, record in sorted(seeds.items()):
        d = record.get("diagnostics", {})
        rows += [{"seed": seed, "epochs": "-".join(map(str, d["epochs"])), "statistics": stats, **d[stats]}
                 for stats in ("moving", "precise") if stats in d]
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=non_negative_int, action="append",
                        help="training seed (repeatable; default 0)")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "endings", help="scratch folder")
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "endings.json",
                        help="results (resumable; one record per seed)")
    parser.add_argument("--precision", choices=("auto", "float32", "mixed_bfloat16"), default="auto",
                        help="the training's precision (auto: as a user's fit picks it)")
    parser.add_argument("--stat-batches", type=non_negative_int, default=STAT_BATCHES,
                        help="batches of recomputed statistics behind each epoch's 'precise' figures")
    args = parser.parse_args(argv)
    seeds = args.seed or [0]
    blocks, source = prepare(args.work)
    saved = json.loads(args.json.read_text()) if args.json.is_file() else {}
    records: dict[str, dict] = saved.get("seeds", {})

    def save() -> None:
        write_json_atomic(args.json, {  # a killed study keeps what it measured
            "machine": machine(), "command": shown_command("bench.endings", sys.argv[1:] if argv is None
                                                           else list(argv)),
            "source": source, "slices": blocks.slices, "fit_flags": list(FIT_FLAGS),
            "stat_batches": args.stat_batches, "endings": list(ENDINGS),
            "rows": summary_rows(records), "diagnostics": diagnostic_rows(records), "seeds": records,
            "note": "per-epoch figures: tiles at threshold 0.5, no overlap or TTA; endings: whole test "
                    "slices, overlap 128, 8-fold TTA, threshold calibrated on the validation block"})

    for seed in seeds:
        study_seed(seed, blocks, args.work, records.setdefault(str(seed), {}), save, args.precision,
                   args.stat_batches)
    print_table("Endings of one --preset real run (test IoU on the held-out block)", summary_rows(records),
                ["seed", "ending", "epoch", "val_iou", "test_iou"])
    print_table("Per-epoch figures, second half of training", diagnostic_rows(records),
                ["seed", "epochs", "statistics", "val_mean", "val_swing", "test_mean", "test_swing",
                 "val_test_correlation"])
    print(f"results in {args.json}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
