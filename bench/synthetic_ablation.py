"""Does synthetic data help? Held-out real IoU of the segmenter trained on k labelled real slices,
with and without generated tiles, for two generator regimes.

    python -m bench.synthetic_ablation --quick          # minutes: smoke test of the whole chain
    python -m bench.synthetic_ablation                  # the full grid: hours on 2 CPU cores

Data: the EPFL CA1 subset beside the checkout (else the phantom). One z block is the test set and
one the validation set; neither model ever sees them. From the remaining training pool, a seeded
contiguous run of k slices is the labelled set.
Regimes: (a) strict: the generator learns from the k labelled slices only; (b) images plentiful,
labels scarce: the VAE learns from the images of the whole training pool, the mask-conditioned
denoiser from the k labelled slices (masks come from those only).
Resumable: each finished cell goes into the results JSON at once; a rerun skips finished cells.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from bench.common import EPFL, ROOT, machine
from shared.atomic import write_json_atomic
from shared.phantom import phantom_stack
from shared.splits import z_block_split
from shared.store import TileStore
from shared.tiff_io import read_pair, write_stack
from shared.tiles import tile_stack


@dataclass(frozen=True)
class AblationConfig:
    ks: tuple[int, ...] = (2, 4, 8, 0)              # labelled slices; 0 = the whole training pool
    ratios: tuple[float, ...] = (0.0, 0.3)
    sweep_k: int = 4                                # one k also gets the ratio sweep
    sweep_ratios: tuple[float, ...] = (0.1, 0.2, 0.4, 0.5)
    seeds: tuple[int, ...] = (0, 1, 2)
    regimes: tuple[str, ...] = ("strict", "images_plentiful")
    n_synthetic: int = 512
    generator_flags: tuple[str, ...] = ("--preset", "real")
    sample_flags: tuple[str, ...] = ("--sampler", "ddim", "--steps", "50", "--guidance", "2.0")
    segmenter_flags: tuple[str, ...] = ("--preset", "real", "--time-limit", "20")
    test_fraction: float = 0.2
    val_fraction: float = 0.15
    extra: dict = field(default_factory=dict)


QUICK = AblationConfig(
    ks=(2, 4), ratios=(0.0, 0.3), sweep_k=0, sweep_ratios=(), seeds=(0,), regimes=("strict",), n_synthetic=48,
    generator_flags=("--preset", "quick", "--vae-steps", "150", "--diffusion-steps", "300"),
    sample_flags=("--sampler", "dpmpp2m", "--steps", "15", "--guidance", "2.0"),
    segmenter_flags=("--preset", "quick", "--epochs", "6"),
)


def load_volume() -> tuple[np.ndarray, np.ndarray, str]:
    if (EPFL / "training.tif").is_file():
        images, masks = read_pair(EPFL / "training.tif", EPFL / "training_groundtruth.tif")
        return images, masks, "EPFL CA1 subset (27 slices)"
    images, masks = phantom_stack(27, seed=0)
    return images, masks, "phantom (EPFL subset absent)"


def labelled_slices(pool: list[int], k: int, seed: int) -> list[int]:
    """A seeded contiguous run of k slices of the training pool (k = 0: all of it)."""
    if k == 0 or k >= len(pool):
        return list(pool)
    start = int(np.random.default_rng(1000 + seed).integers(0, len(pool) - k + 1))
    return pool[start:start + k]


def make_store(path: Path, images: np.ndarray, masks: np.ndarray, train: list[int], val: list[int]) -> Path:
    if (path / "manifest.json").exists():
        return path
    split_of = {z: "train" for z in train} | {z: "val" for z in val}
    keep = sorted(split_of)
    tiles, mask_tiles, records = tile_stack(images[keep], masks[keep], "ablation",
                                            {i: split_of[z] for i, z in enumerate(keep)})
    for r in records:
        r["slice"] = keep[r["slice"]]
    TileStore.create(path).append(tiles, mask_tiles, records)
    return path


def run(args: list[str], log: Path) -> None:
    """Run one `python -m ...` step, its output in a log file; a failure stops the ablation."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    with open(log, "a") as fh:
        fh.write(f"\n$ {' '.join(args)}\n")
        fh.flush()
        proc = subprocess.run([sys.executable, "-m", *args], stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT,
                              env=env)
    if proc.returncode != 0:
        raise SystemExit(f"step failed (exit {proc.returncode}): {' '.join(args)}; see {log}")


def train_generator(work: Path, regime: str, labelled: Path, images_store: Path, cfg: AblationConfig,
                    seed: int, log: Path) -> Path:
    out = work / "generator"
    if (out / "generator.pt").exists():
        return out / "generator.pt"
    common = [*cfg.generator_flags, "--out", str(out), "--seed", str(seed), "--no-progress"]
    if regime == "strict":
        run(["generation_torch.train", "--store", str(labelled), *common], log)
    else:
        run(["generation_torch.train", "--store", str(images_store), "--stage", "vae", *common], log)
        run(["generation_torch.train", "--store", str(labelled), "--stage", "diffusion", *common], log)
    return out / "generator.pt"


def synthetic_store(work: Path, checkpoint: Path, labelled: Path, cfg: AblationConfig, seed: int,
                    log: Path) -> Path:
    out = work / "synthetic"
    if not (out / "manifest.json").exists():
        run(["generation_torch.sample", "--checkpoint", str(checkpoint), "--masks-from", str(labelled),
             "--n", str(cfg.n_synthetic), "--out", str(out), "--seed", str(seed), "--no-progress",
             *cfg.sample_flags], log)
    return out


def segmenter_iou(work: Path, labelled: Path, synthetic: Path | None, ratio: float, test: tuple[Path, Path],
                  cfg: AblationConfig, seed: int, log: Path) -> dict:
    out = work / f"seg_r{ratio:g}"
    flags = ["--synthetic-store", str(synthetic), "--synthetic-ratio", str(ratio)] if ratio > 0 else []
    if not (out / "segmenter.json").exists():
        run(["segmentation_tf.fit", "--store", str(labelled), "--out", str(out), "--seed", str(seed),
             "--verbose", "0", *cfg.segmenter_flags, *flags], log)
    scores = out / "test_scores.json"
    run(["segmentation_tf.evaluate", "--model", str(out), "--images", str(test[0]), "--masks", str(test[1]),
         "--json", str(scores)], log)
    return json.loads(scores.read_text())


def cells(cfg: AblationConfig) -> list[tuple[int, str, float, int]]:
    grid = [(k, regime, r, s) for k in cfg.ks for regime in cfg.regimes for r in cfg.ratios
            for s in cfg.seeds]
    grid += [(cfg.sweep_k, regime, r, s) for regime in cfg.regimes[:1] for r in cfg.sweep_ratios
             for s in cfg.seeds]
    return grid


def key(k: int, regime: str, ratio: float, seed: int) -> str:
    return f"k={k}|{regime}|r={ratio:g}|seed={seed}"


def summarize(results: dict) -> list[dict]:
    """Mean +- std of test IoU per (k, regime, ratio)."""
    groups: dict[tuple, list[float]] = {}
    for cell in results.values():
        groups.setdefault((cell["k"], cell["regime"], cell["ratio"]), []).append(cell["test_iou"])
    return [{"k": k, "regime": regime, "ratio": ratio, "seeds": len(v), "iou_mean": float(np.mean(v)),
             "iou_std": float(np.std(v))} for (k, regime, ratio), v in sorted(groups.items())]


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for (regime, ratio) in sorted({(r["regime"], r["ratio"]) for r in rows}):
        pts = sorted((r["k"] or 99, r["iou_mean"], r["iou_std"]) for r in rows
                     if r["regime"] == regime and r["ratio"] == ratio)
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts], marker="o", capsize=3,
                    label=f"{regime}, ratio {ratio:g}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("labelled real slices k (99 = whole training pool)")
    ax.set_ylabel("held-out test IoU")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few-minute smoke run of the whole chain")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "ablation", help="scratch folder")
    parser.add_argument("--results", type=Path, default=None, help="results JSON (resumable)")
    args = parser.parse_args()
    cfg = QUICK if args.quick else AblationConfig()
    name = "synthetic_ablation_quick" if args.quick else "synthetic_ablation"
    results_path = args.results or ROOT / "docs" / f"{name}.json"
    work = args.work / ("quick" if args.quick else "full")
    work.mkdir(parents=True, exist_ok=True)
    saved = json.loads(results_path.read_text()) if results_path.is_file() else {}
    results: dict = saved.get("results_by_cell", {})
    images, masks, source = load_volume()
    split = z_block_split(len(images), cfg.val_fraction, cfg.test_fraction, seed=0)
    pool = split["train"]
    test = (work / "test_images.tif", work / "test_masks.tif")
    write_stack(test[0], images[split["test"]])
    write_stack(test[1], masks[split["test"]])
    images_store = make_store(work / "images_store", images, masks, pool, split["val"])
    log = work / "ablation.log"
    todo = [c for c in cells(cfg) if key(*c) not in results]
    print(f"{source}: test slices {split['test']}, val {split['val']}, pool {len(pool)}; "
          f"{len(results)} cells done, {len(todo)} to run (log: {log})")
    for k, regime, ratio, seed in todo:
        if key(k, regime, ratio, seed) in results:  # a real-only cell filled in by the other regime
            continue
        start = time.time()
        labelled = labelled_slices(pool, k, seed)
        cell_dir = work / f"k{k}_s{seed}"
        cell_dir.mkdir(exist_ok=True)
        labelled_store = make_store(cell_dir / "labelled_store", images, masks, labelled, split["val"])
        synthetic = None
        if ratio > 0:
            gen_dir = cell_dir / regime
            gen_dir.mkdir(exist_ok=True)
            ckpt = train_generator(gen_dir, regime, labelled_store, images_store, cfg, seed, log)
            synthetic = synthetic_store(gen_dir, ckpt, labelled_store, cfg, seed, log)
        seg_dir = cell_dir / (regime if ratio > 0 else "real_only")
        seg_dir.mkdir(exist_ok=True)
        scores = segmenter_iou(seg_dir, labelled_store, synthetic, ratio, test, cfg, seed, log)
        results[key(k, regime, ratio, seed)] = {
            "k": k, "regime": regime if ratio > 0 else "real_only", "ratio": ratio, "seed": seed,
            "labelled_slices": labelled, "test_iou": scores["iou"], "test_dice": scores.get("dice"),
            "minutes": round((time.time() - start) / 60, 2)}
        if ratio == 0:  # real-only cells are shared by both regimes
            for regime_name in cfg.regimes:
                results[key(k, regime_name, 0.0, seed)] = {**results[key(k, regime, ratio, seed)],
                                                           "regime": regime_name}
        rows = summarize(results)
        write_json_atomic(results_path, {
            "machine": machine(), "command": f"python -m bench.synthetic_ablation{' --quick' * args.quick}",
            "source": source, "config": asdict(cfg), "split": split, "results_by_cell": results,
            "rows": rows, "figures": [f"{name}.png"]})
        plot(rows, results_path.with_suffix(".png"))
        print(f"{key(k, regime, ratio, seed)}: test IoU {scores['iou']:.4f} "
              f"({(time.time() - start) / 60:.1f} min)")
    print(f"results in {results_path}")


if __name__ == "__main__":
    main()
