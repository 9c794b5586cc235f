"""Does synthetic data help? Held-out real IoU of the segmenter trained on k labelled real slices,
with and without generated tiles, for two generator regimes.

    python -m bench.synthetic_ablation --quick          # minutes: smoke test of the whole chain
    python -m bench.synthetic_ablation                  # the grid with small models: ~3 h on 2 CPU cores
    python -m bench.synthetic_ablation --preset full    # the trainers' real presets: a GPU job (days on CPU)

Data: the EPFL CA1 subset beside the checkout (else the phantom). One z block is the test set and
one the validation set; neither model ever sees them. From the remaining training pool, a contiguous
run of k slices is the labelled set (standard preset: the same run for every seed, so one generator
per k and regime serves the seeds, which vary the segmenter and the sampling; --preset full: a run
and a generator per seed).
Regimes: (a) strict: the generator learns from the k labelled slices only; (b) images plentiful,
labels scarce: the VAE and the denoiser's null-condition branch learn from the images of the whole
training pool, the mask-conditioned denoiser from the k labelled slices (masks come from those only).
Every segmenter gets the same step budget, so cells differ only in their data. Mask fidelity: the
whole-pool real-only segmenter judges each generator's tiles against their conditioning masks.
Resumable: each finished cell goes into the results JSON at once; a rerun skips finished cells.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from bench.common import EPFL, ROOT, machine
from shared.atomic import write_json_atomic
from shared.errors import UserError, run_cli
from shared.phantom import phantom_stack
from shared.sampling import SamplerSettings, settings_to_flags
from shared.splits import z_block_split
from shared.store import TileStore
from shared.tiff_io import read_pair, write_stack
from shared.tiles import tile_pages, tile_stack


@dataclass(frozen=True)
class AblationConfig:
    ks: tuple[int, ...] = (2, 0, 4, 8)             # labelled slices, in run order; 0 = the whole pool
    ratios: tuple[float, ...] = (0.0, 0.3)
    sweep_k: int = 2                                # one k also gets the ratio sweep
    sweep_ratios: tuple[float, ...] = (0.1, 0.5)
    seeds: tuple[int, ...] = (0, 1, 2)
    regimes: tuple[str, ...] = ("strict", "images_plentiful")
    # False: the labelled slices of a k are the same for every seed, so one generator per (k, regime)
    # serves all seeds (seeds vary the segmenter and the sampling); True: a generator per seed too
    slices_per_seed: bool = False
    n_synthetic: int = 128
    # the real preset's models in short time boxes: the quick preset's tiny generators (downsample 8,
    # 600 denoiser steps) drew texture that ignored the masks (mask fidelity 0.0001)
    generator_flags: tuple[str, ...] = ("--preset", "real", "--vae-minutes", "4", "--diffusion-minutes", "8",
                                        "--steps-per-epoch", "50", "--visual-every", "0")
    # guidance 2 drew tiles that ignored their masks (fidelity 0.003); 12 follows them (0.54, k = 2 judge)
    sampling: SamplerSettings = SamplerSettings("dpmpp2m", 20, guidance=12.0)
    # a fixed step budget (8 x 25 steps of 8 tiles) for every k and ratio, so cells differ only in data;
    # ending as the real preset did when docs/synthetic_ablation.json was measured (2026-11-22: best
    # validation epoch, training-time BatchNorm statistics)
    segmenter_flags: tuple[str, ...] = ("--preset", "real", "--base-width", "8", "--epochs", "8",
                                        "--steps-per-epoch", "25", "--patience", "100",
                                        "--time-limit", "1000", "--overlap", "64", "--no-tta",
                                        "--restore-best", "--no-precise-bn")
    test_fraction: float = 0.2
    val_fraction: float = 0.15


class GeneratorRecipe(Protocol):
    """How a bench trains and samples its generators (AblationConfig, bench.evidence.EvidenceConfig)."""
    generator_flags: tuple[str, ...]
    n_synthetic: int


PRESETS = {
    # about 3 h on 2 CPU cores (small models, fixed budgets): what docs/synthetic_ablation.json holds
    "standard": AblationConfig(),
    # minutes: a smoke test of the whole chain
    "quick": AblationConfig(
        ks=(2, 4), sweep_ratios=(), seeds=(0,), regimes=("strict",), n_synthetic=48,
        generator_flags=("--preset", "quick", "--vae-steps", "150", "--diffusion-steps", "300",
                         "--visual-every", "0"),
        sampling=SamplerSettings("dpmpp2m", 15, guidance=12.0),
        segmenter_flags=("--preset", "quick", "--epochs", "6")),
    # the trainers' real presets (about 1.5 h per generator, 1 h per segmenter on 2 CPU cores): a GPU job
    "full": AblationConfig(
        sweep_ratios=(0.1, 0.2, 0.4, 0.5), n_synthetic=512, slices_per_seed=True,
        generator_flags=("--preset", "real"),
        sampling=SamplerSettings("ddim", 50, guidance=2.0),
        segmenter_flags=("--preset", "real", "--time-limit", "20")),
}


def load_volume() -> tuple[np.ndarray, np.ndarray, str]:
    if (EPFL / "training.tif").is_file():
        images, masks = read_pair(EPFL / "training.tif", EPFL / "training_groundtruth.tif")
        return images, masks, "EPFL CA1 subset (27 slices)"
    images, masks = phantom_stack(27, seed=0)
    return images, masks, "phantom (EPFL subset absent)"


def slice_positions() -> list[int] | None:
    """Each page's z in the original stack where the EPFL subset is used (its training_slices.json;
    the pages are unevenly spaced), None for the phantom (independent slices)."""
    if not (EPFL / "training.tif").is_file():
        return None
    path = EPFL / "training_slices.json"
    try:
        return [int(z) for z in json.loads(path.read_text())["slices"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: cannot read the slices' z positions ({exc})") from None


def labelled_slices(pool: list[int], k: int, seed: int) -> list[int]:
    """A seeded contiguous run of k slices of the training pool (k = 0: all of it)."""
    if k == 0 or k >= len(pool):
        return list(pool)
    start = int(np.random.default_rng(1000 + seed).integers(0, len(pool) - k + 1))
    return pool[start:start + k]


def make_store(path: Path, images: np.ndarray, masks: np.ndarray, train: list[int], val: list[int],
               annotated: np.ndarray | None = None) -> Path:
    """A tile store of the train and val pages of a stack (masks, and annotated areas where given, page
    for page); an existing one is kept."""
    if (path / "manifest.json").exists():
        return path
    split_of = {z: "train" for z in train} | {z: "val" for z in val}
    keep = sorted(split_of)
    tiles, mask_tiles, records = tile_stack(images[keep], masks[keep], "ablation",
                                            {i: split_of[z] for i, z in enumerate(keep)})
    for r in records:
        r["slice"] = keep[r["slice"]]
    areas = None if annotated is None else tile_pages(annotated[keep])
    TileStore.create(path).append(tiles, mask_tiles, records, annotated=areas)
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


@dataclass(frozen=True)
class Cell:
    k: int          # labelled slices (0: the whole training pool)
    regime: str     # "real_only", "strict" or "images_plentiful"
    ratio: float
    seed: int

    @property
    def key(self) -> str:
        return f"k={self.k}|{self.regime}|r={self.ratio:g}|seed={self.seed}"


def cells(cfg: AblationConfig) -> list[Cell]:
    """Every cell, in the order that answers the question soonest: per k (low k first) the real-only
    baselines, then ratio 0.3 per regime; the ratio sweep after the whole-pool cells. With k = 0 the
    two regimes coincide (every image is labelled), so only strict runs."""
    out: list[Cell] = []
    for k in cfg.ks:
        out += [Cell(k, "real_only", 0.0, s) for s in cfg.seeds]
        regimes = cfg.regimes[:1] if k == 0 else cfg.regimes
        out += [Cell(k, g, r, s) for g in regimes for r in cfg.ratios if r > 0 for s in cfg.seeds]
        if k == 0 or k == cfg.ks[-1]:
            sweep = [Cell(cfg.sweep_k, cfg.regimes[0], r, s) for r in cfg.sweep_ratios for s in cfg.seeds]
            out += [c for c in sweep if c not in out]
    return list(dict.fromkeys(out))


def generator_dir(work: Path, cell: Cell, cfg: AblationConfig) -> tuple[Path, int]:
    """Where the generator of a cell lives and the seed it trains with."""
    if cfg.slices_per_seed:
        return work / f"k{cell.k}_s{cell.seed}" / cell.regime, cell.seed
    return work / f"gen_k{cell.k}" / cell.regime, 0


def train_generator(gen_dir: Path, seed: int, regime: str, covers_pool: bool, labelled: Path, pool: Path,
                    work: Path, cfg: GeneratorRecipe, log: Path, *, vae_dir: Path | None = None,
                    vae_flags: Sequence[str] = (), denoiser_flags: Sequence[str] = ()) -> Path:
    """strict: VAE + denoiser on the labelled tiles. images_plentiful: one VAE on every pool image
    (`vae_dir`, default one per seed; shared by all k), then the denoiser on the labelled tiles, its
    null-condition branch on all pool images (`--unlabelled-store`). A strict run whose labelled tiles
    are the whole pool is the same thing, so it takes the same path. `vae_flags` and `denoiser_flags`
    go to their own stage only."""
    product = gen_dir / "generator.pt"
    if product.exists():
        return product
    # --resume: a stage killed with the grid continues from its last checkpoint (its time box counts
    # the killed minutes) instead of starting over
    common = [*cfg.generator_flags, "--seed", str(seed), "--no-progress", "--resume"]
    if regime == "strict" and not covers_pool:
        run(["generation_torch.train", "--store", str(labelled), "--out", str(gen_dir), *common, *vae_flags,
             *denoiser_flags], log)
        return product
    pool_vae = trained_vae(vae_dir or work / f"pool_vae_s{seed}", pool, common, vae_flags, log)
    gen_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(pool_vae, gen_dir / "vae.pt")
    run(["generation_torch.train", "--store", str(labelled), "--unlabelled-store", str(pool),
         "--stage", "diffusion", "--out", str(gen_dir), *common, *denoiser_flags], log)
    return product


def trained_vae(vae_dir: Path, pool: Path, common: Sequence[str], vae_flags: Sequence[str], log: Path
                ) -> Path:
    """vae_dir/vae.pt, trained on the pool's images when absent."""
    if not (vae_dir / "vae.pt").exists():
        run(["generation_torch.train", "--store", str(pool), "--stage", "vae", "--out", str(vae_dir),
             *common, *vae_flags], log)
    return vae_dir / "vae.pt"


def synthetic_store(gen_dir: Path, checkpoint: Path, labelled: Path, cfg: GeneratorRecipe,
                    sampling: SamplerSettings, seed: int, log: Path, *, out: Path | None = None,
                    mask_source: str = "labelled", extra: Sequence[str] = ()) -> Path:
    """Draw cfg.n_synthetic tiles into `out` (default GEN/synthetic, its grid GEN/samples.png), with
    `extra` sample flags."""
    grid = gen_dir / "samples.png" if out is None else out.parent / f"{out.name}.png"  # g1.5: not g1.png
    out = out or gen_dir / "synthetic"
    if not (out / "manifest.json").exists():
        # a crash mid-append leaves a partial store: start it again
        shutil.rmtree(out, ignore_errors=True)
        run(["generation_torch.sample", "--checkpoint", str(checkpoint), "--masks-from", str(labelled),
             "--mask-source", mask_source, "--n", str(cfg.n_synthetic), "--out", str(out), "--seed",
             str(seed), "--no-progress", "--grid", str(grid), *settings_to_flags(sampling), *extra], log)
    return out


def segmenter_scores(seg_dir: Path, labelled: Path, synthetic: Path | None, ratio: float,
                     test: tuple[Path, Path], cfg: AblationConfig, seed: int, log: Path) -> dict:
    flags = ["--synthetic-store", str(synthetic), "--synthetic-ratio", str(ratio)] if ratio > 0 else []
    if not (seg_dir / "segmenter.json").exists():
        run(["segmentation_tf.fit", "--store", str(labelled), "--out", str(seg_dir), "--seed", str(seed),
             "--verbose", "0", *cfg.segmenter_flags, *flags], log)
    scores = seg_dir / "test_scores.json"
    if not scores.exists():
        run(["segmentation_tf.evaluate", "--model", str(seg_dir), "--images", str(test[0]), "--masks",
             str(test[1]), "--json", str(scores)], log)
    return json.loads(scores.read_text())


@dataclass(frozen=True)
class AblationRun:
    """What every cell of one ablation run shares: config, scratch folder, volume, split, log."""
    cfg: AblationConfig
    work: Path
    images: np.ndarray
    masks: np.ndarray
    split: dict
    log: Path

    @property
    def pool(self) -> list[int]:
        return self.split["train"]

    @property
    def test(self) -> tuple[Path, Path]:
        return self.work / "test_images.tif", self.work / "test_masks.tif"

    def store(self, name: str, slices: list[int]) -> Path:
        return make_store(self.work / name, self.images, self.masks, slices, self.split["val"])


def run_cell(cell: Cell, ctx: AblationRun) -> dict:
    cfg, work, log = ctx.cfg, ctx.work, ctx.log
    start = time.time()
    labelled = labelled_slices(ctx.pool, cell.k, cell.seed if cfg.slices_per_seed else 0)
    slices_dir = f"k{cell.k}_s{cell.seed}" if cfg.slices_per_seed else f"k{cell.k}"
    (work / slices_dir).mkdir(exist_ok=True)
    labelled_store = ctx.store(f"{slices_dir}/labelled_store", labelled)
    synthetic = None
    if cell.ratio > 0:
        gen_dir, gen_seed = generator_dir(work, cell, cfg)
        ckpt = train_generator(gen_dir, gen_seed, cell.regime, labelled == ctx.pool, labelled_store,
                               ctx.store("pool_store", ctx.pool), work, cfg, log)
        synthetic = synthetic_store(gen_dir, ckpt, labelled_store, cfg, cfg.sampling, gen_seed, log)
    name = "real_only" if cell.ratio == 0 else f"seg_{cell.regime}_r{cell.ratio:g}"
    seg_dir = work / f"k{cell.k}_s{cell.seed}" / name
    seg_dir.parent.mkdir(exist_ok=True)
    scores = segmenter_scores(seg_dir, labelled_store, synthetic, cell.ratio, ctx.test, cfg, cell.seed, log)
    return {**asdict(cell), "labelled_slices": labelled, "test_iou": scores["iou"],
            "test_dice": scores.get("dice"), "minutes": round((time.time() - start) / 60, 2)}


def summarize(results: dict) -> list[dict]:
    """Mean +- std (over seeds) of test IoU per (k, regime, ratio)."""
    groups: dict[tuple, list[float]] = {}
    for cell in results.values():
        groups.setdefault((cell["k"], cell["regime"], cell["ratio"]), []).append(cell["test_iou"])
    return [{"k": k or "all", "regime": regime, "ratio": ratio, "seeds": len(v),
             "iou_mean": float(np.mean(v)), "iou_std": float(np.std(v))}
            for (k, regime, ratio), v in sorted(groups.items(), key=lambda g: (g[0][0] or 99, *g[0][1:]))]


def paired_gains(results: dict, ratio: float = 0.3) -> list[dict]:
    """IoU(ratio) - IoU(real only) per (k, regime), paired by seed (same labelled slices, same seed)."""
    base = {(c["k"], c["seed"]): c["test_iou"] for c in results.values() if c["regime"] == "real_only"}
    groups: dict[tuple, list[float]] = {}
    for c in results.values():
        if c["ratio"] == ratio and (c["k"], c["seed"]) in base:
            groups.setdefault((c["k"], c["regime"]), []).append(c["test_iou"] - base[(c["k"], c["seed"])])
    return [{"k": k or "all", "regime": regime, "ratio": ratio, "seeds": len(v),
             "gain_mean": float(np.mean(v)), "gain_std": float(np.std(v))}
            for (k, regime), v in sorted(groups.items(), key=lambda g: (g[0][0] or 99, g[0][1]))]


def goal_verdict(gains: list[dict], low_k: int = 4, low_gain: float = 0.03, max_loss: float = 0.005) -> str:
    """The issue's goal, judged on the cells that exist: k <= 4 gains >= 0.03; the whole pool loses
    <= 0.005."""
    low = [g for g in gains if g["k"] != "all" and g["k"] <= low_k]
    full = [g for g in gains if g["k"] == "all"]
    parts = [f"k={g['k']} {g['regime']}: {g['gain_mean']:+.4f} +- {g['gain_std']:.4f} "
             f"({_met(g['gain_mean'] >= low_gain)})" for g in low]
    parts += [f"whole pool: {g['gain_mean']:+.4f} +- {g['gain_std']:.4f} "
              f"({_met(g['gain_mean'] >= -max_loss)})" for g in full]
    if not low or not full:
        parts.append("incomplete: " + ("no low-data cells" if not low else "no whole-pool cells") + " yet")
    return "; ".join(parts)


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for regime, ratio in sorted({(r["regime"], r["ratio"]) for r in rows}):
        pts = sorted((_k_axis(r["k"]), r["iou_mean"], r["iou_std"]) for r in rows
                     if r["regime"] == regime and r["ratio"] == ratio)
        label = "real only" if regime == "real_only" else f"{regime}, ratio {ratio:g}"
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts], marker="o", capsize=3,
                    label=label, alpha=0.85)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("labelled real slices k (rightmost: the whole training pool)")
    ax.set_ylabel("held-out test IoU (mean +- std over seeds)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _k_axis(k: int | str) -> int:
    return 32 if k == "all" else int(k)


def best_judge(work: Path) -> Path | None:
    """The whole-pool real-only segmenter with the best validation IoU (chosen on validation, never on
    the test block it is then scored on)."""
    judges = [d for d in work.glob("k0_s*/real_only") if (d / "segmenter.json").exists()]

    def val_iou(d: Path) -> float:
        return json.loads((d / "segmenter.json").read_text())["provenance"]["calibration"]["iou"]
    return max(judges, key=val_iou, default=None)


def mask_fidelity(work: Path, test: tuple[Path, Path], extra_stores: list[Path] = ()) -> list[dict]:
    """The best whole-pool real-only segmenter run on every generated tile against its conditioning
    mask, and on the held-out real test tiles: pooled foreground IoU at its calibrated threshold (the
    same 256 px windows, no stitching, so the two compare)."""
    judge_dir = best_judge(work)
    if judge_dir is None:
        return []
    from segmentation_tf.artifacts import load_segmenter  # TensorFlow: imported only when needed
    from segmentation_tf.inference import predict_tiles
    from segmentation_tf.scores import iou
    from shared.normalization import normalize

    test_images, test_masks = read_pair(*test)
    split_of = dict.fromkeys(range(len(test_images)), "test")
    real_tiles, real_masks, _ = tile_stack(test_images, test_masks, "test", split_of)
    judge = load_segmenter(judge_dir)
    real = iou(predict_tiles(judge.model, normalize(real_tiles)), real_masks, judge.threshold)
    rows = []
    own = sorted(work.glob("gen_k*/*/synthetic")) + sorted(work.glob("k*_s*/*/synthetic"))
    for store_dir in own + list(extra_stores):
        store = TileStore(store_dir)
        idx = store.indices()
        probs = predict_tiles(judge.model, store.images(idx))
        guidance = store.records[int(idx[0])].get("guidance")
        rows.append({"generator": str(store_dir.parent.relative_to(work)), "guidance": guidance,
                     "tiles": len(idx), "judge": str(judge_dir.relative_to(work)),
                     "iou_generated": iou(probs, store.masks(idx), judge.threshold),
                     "iou_real_heldout": real})
    return rows


def guidance_stores(work: Path, cfg: AblationConfig, log: Path, guidances=(2.0, 5.0, 8.0, 12.0),
                    n: int = 32) -> list[Path]:
    """The k = 2 strict generator sampled at several guidance scales (same masks and seeds): how
    mask fidelity depends on guidance."""
    generator = work / "gen_k2" / "strict" / "generator.pt"
    if not generator.exists():
        return []
    out = []
    for g in guidances:
        store = work / "guidance_sweep" / f"g{g:g}" / "synthetic"
        if not (store / "manifest.json").exists():
            shutil.rmtree(store, ignore_errors=True)
            store.parent.mkdir(parents=True, exist_ok=True)
            run(["generation_torch.sample", "--checkpoint", str(generator), "--masks-from",
                 str(work / "k2" / "labelled_store"), "--n", str(n), "--out", str(store), "--seed", "7",
                 "--no-progress", *settings_to_flags(replace(cfg.sampling, guidance=g))], log)
        out.append(store)
    return out


def write_results(path: Path, results: dict, fidelity: list[dict], cfg_name: str, cfg: AblationConfig,
                  source: str, split: dict, note: str | None = None) -> None:
    """The results JSON (and its figure); `note` is a reader's remark on the run, carried over on resume."""
    rows, gains = summarize(results), paired_gains(results)
    # the goal is judged on the ablation's own generators, not on the guidance sweep
    fid = [f["iou_generated"] for f in fidelity if not f["generator"].startswith("guidance_sweep")]
    write_json_atomic(path, {
        "machine": machine(), "command": f"python -m bench.synthetic_ablation --preset {cfg_name}",
        "source": source, "config": asdict(cfg), "split": split, **({"note": note} if note else {}),
        "goal": "k <= 4: ratio 0.3 raises held-out IoU by >= 0.03 over real only; whole pool: lowers it by "
                "<= 0.005; mask fidelity >= 0.6",
        "goal_met": goal_verdict(gains) + (f"; mask fidelity {np.mean(fid):.3f} "
                                           f"({'met' if np.mean(fid) >= 0.6 else 'NOT met'})" if fid else ""),
        "cells_done": f"{len(results)} of {len(cells(cfg))}",
        "rows": rows, "gains": gains, "fidelity": fidelity, "results_by_cell": results,
        "figures": [f"{path.stem}.png"]})
    if rows:
        plot(rows, path.with_suffix(".png"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="standard",
                        help="standard: ~3 h on 2 CPU cores (default); quick: minutes; full: real presets")
    parser.add_argument("--quick", action="store_true", help="same as --preset quick")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "ablation", help="scratch folder")
    parser.add_argument("--results", type=Path, default=None, help="results JSON (resumable)")
    parser.add_argument("--max-cells", type=int, default=0, help="stop after this many new cells (0: all)")
    parser.add_argument("--fidelity-only", action="store_true",
                        help="run no new cell: measure mask fidelity of the generators trained so far")
    args = parser.parse_args(argv)
    name = "quick" if args.quick else args.preset
    cfg = PRESETS[name]
    stem = {"standard": "synthetic_ablation"}.get(name, f"synthetic_ablation_{name}")
    results_path = args.results or ROOT / "docs" / f"{stem}.json"
    work = args.work / name
    work.mkdir(parents=True, exist_ok=True)
    saved = json.loads(results_path.read_text()) if results_path.is_file() else {}
    results: dict = saved.get("results_by_cell", {})
    images, masks, source = load_volume()
    split = z_block_split(len(images), cfg.val_fraction, cfg.test_fraction, seed=0)
    ctx = AblationRun(cfg, work, images, masks, split, work / "ablation.log")
    test, log = ctx.test, ctx.log
    write_stack(test[0], images[split["test"]])
    write_stack(test[1], masks[split["test"]])
    ctx.store("pool_store", ctx.pool)
    todo = [c for c in cells(cfg) if c.key not in results]
    print(f"{source}: test slices {split['test']}, val {split['val']}, pool {len(ctx.pool)}; "
          f"{len(results)} cells done, {len(todo)} to run (log: {log})", flush=True)
    for n, cell in enumerate([] if args.fidelity_only else todo):
        if args.max_cells and n >= args.max_cells:
            break
        results[cell.key] = run_cell(cell, ctx)
        write_results(results_path, results, saved.get("fidelity", []), name, cfg, source, split,
                      saved.get("note"))
        done = results[cell.key]
        print(f"{cell.key}: test IoU {done['test_iou']:.4f} ({done['minutes']} min)", flush=True)
    fidelity = mask_fidelity(work, test, guidance_stores(work, cfg, log))
    write_results(results_path, results, fidelity or saved.get("fidelity", []), name, cfg, source, split,
                  saved.get("note"))
    print(f"results in {results_path}: {json.loads(results_path.read_text())['goal_met']}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
