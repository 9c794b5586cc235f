"""What would make generated tiles help? Variants of the ablation's k = 2 strict cell (the low-data
cell with the tightest real-only baseline), each at synthetic ratio 0.3 over the same 3 seeds:

    python -m bench.synthetic_variants          # ~1 h on 2 CPU cores; resumable variant by variant

- g12:               the ablation's sampling (guidance 12), from this run's generator
- g12_rescale0.7:    guidance 12 with the guided prediction rescaled to the conditional std
                     (shared.diffusion.guided; tames the flat, over-contrasted look of large guidance)
- g12_filtered:      3x as many tiles drawn; the k = 2 real-only segmenter (seed 0: it sees the same
                     2 labelled slices, nothing more) keeps the best third (segmentation_tf.filter_synthetic)
- g5_filtered:       guidance 5 (more varied, less aligned), filtered the same way

The real-only baselines are retrained here too (they are the judges), so every figure comes from
this run. Mask fidelity is judged by the seed-1 real-only segmenter, which did not filter; realism is
the intensity-histogram W1 and spectrum distance against held-out real test tiles (metrics of
generation_torch.metrics). Each finished variant goes into docs/synthetic_variants.json at once.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bench.common import ROOT, machine
from bench.synthetic_ablation import (
    PRESETS,
    labelled_slices,
    load_volume,
    make_store,
    run,
    segmenter_scores,
    train_generator,
)
from generation_torch.metrics import realism
from shared.atomic import write_json_atomic
from shared.errors import run_cli
from shared.splits import z_block_split
from shared.store import TileStore
from shared.tiff_io import read_pair, write_stack
from shared.tiles import tile_stack


@dataclass(frozen=True)
class Variant:
    name: str
    guidance: float
    rescale: float = 0.0
    oversample: int = 1       # draw oversample x n tiles, keep the n the judge scores best
    min_iou: float = 0.0


VARIANTS = (Variant("g12", 12.0), Variant("g12_rescale0.7", 12.0, rescale=0.7),
            Variant("g12_filtered", 12.0, oversample=3), Variant("g5_filtered", 5.0, oversample=3))
K, RATIO, REGIME = 2, 0.3, "strict"
NOTE = ("paired by seed: a seed fixes the segmenter's initial weights and real data stream, so the "
        "real-only and synthetic runs of a seed differ only in the synthetic tiles. Filtering judge: the "
        "seed-0 real-only segmenter; fidelity judge: the seed-1 one (both see the same 2 labelled slices "
        "only); real_tiles: that judge on held-out test tiles, and the realism floor (labelled training "
        "tiles vs test tiles)")


def variant_store(v: Variant, gen: Path, labelled: Path, judge: Path, n: int, log: Path) -> Path:
    """The variant's synthetic store: sampled (seed 0, as in the ablation), then filtered if asked."""
    base = gen.parent / "variants" / v.name
    drawn, kept = base / "drawn", base / "synthetic"
    if (kept / "manifest.json").exists():
        return kept
    if not (drawn / "manifest.json").exists():
        shutil.rmtree(drawn, ignore_errors=True)
        drawn.parent.mkdir(parents=True, exist_ok=True)
        run(["generation_torch.sample", "--checkpoint", str(gen), "--masks-from", str(labelled),
             "--n", str(n * v.oversample), "--out", str(drawn), "--seed", "0", "--no-progress",
             "--sampler", "dpmpp2m", "--steps", "20", "--guidance", str(v.guidance),
             "--guidance-rescale", str(v.rescale), "--grid", str(base / "samples.png")], log)
    if v.oversample == 1:
        drawn.rename(kept)
    else:
        run(["segmentation_tf.filter_synthetic", "--judge", str(judge), "--store", str(drawn), "--out",
             str(kept), "--min-iou", str(v.min_iou), "--keep", str(n)], log)
    return kept


def fidelity(store: TileStore, judge: Path) -> dict:
    """Mask fidelity: pooled and mean per-tile IoU of a judge's prediction against each tile's mask;
    its pooled precision and recall, and its mean probability on mask pixels (how easy the tiles are
    for it: pairs it already finds easy teach a segmenter like it little)."""
    from segmentation_tf.filter_synthetic import judge_probabilities
    from segmentation_tf.scores import confusion, iou, per_tile_iou

    masks = store.masks(store.indices())
    probs, threshold = judge_probabilities(judge, store)
    inter, predicted, true = confusion(probs, masks, threshold)
    return {"tiles": len(store), "fidelity_iou": iou(probs, masks, threshold),
            "fidelity_per_tile_mean": float(per_tile_iou(probs, masks, threshold).mean()),
            "judge_precision": inter / max(predicted, 1), "judge_recall": inter / max(true, 1),
            "judge_prob_on_mask": float(probs[masks > 0].mean()) if true else float("nan")}


def held_out_tile_store(test: tuple[Path, Path], work: Path) -> TileStore:
    """The held-out test slices as 256 px tiles (the windows the judge sees on generated tiles)."""
    path = work / "test_store"
    if not (path / "manifest.json").exists():
        shutil.rmtree(path, ignore_errors=True)
        images, masks = read_pair(*test)
        split_of = dict.fromkeys(range(len(images)), "test")
        TileStore.create(path).append(*tile_stack(images, masks, "test", split_of))
    return TileStore(path)


def variant_rows(results: dict) -> list[dict]:
    """One table row per variant (real only and real tiles first), figures rounded for reading."""
    keys = ("iou_mean", "iou_std", "gain_mean", "gain_std", "fidelity_iou", "fidelity_per_tile_mean",
            "hist_w1", "spectrum_dist")
    names = ["real_only", "real_tiles", *(v.name for v in VARIANTS)]
    return [{"variant": n, **{k: round(results[n][k], 4) for k in keys if k in results[n]}}
            for n in names if n in results]


def verdict(results: dict, goal: float = 0.03) -> str:
    done = [(results[v.name]["gain_mean"], results[v.name]["gain_std"], v.name) for v in VARIANTS
            if v.name in results]
    if not done:
        return "no variant finished yet"
    gain, std, name = max(done)
    return (f"best variant {name}: {gain:+.4f} +- {std:.4f} IoU over real only at k = {K} "
            f"(goal +{goal}: {'met' if gain >= goal else 'NOT met'}); "
            f"{len(done)} of {len(VARIANTS)} variants")


def sample_grids(gen_root: Path, n: int = 8) -> list[str]:
    """The first n tiles of each variant's training store (after filtering) beside their masks, at
    half size, into docs/ for the results page."""
    from generation_torch.grids import pair_grid, save_png, to_unit

    names = []
    for v in VARIANTS:
        store_dir = gen_root / "variants" / v.name / "synthetic"
        if (store_dir / "manifest.json").exists():
            store = TileStore(store_dir)
            idx = store.indices()[:n]
            half = (slice(None), slice(None, None, 2), slice(None, None, 2))
            grid = pair_grid(to_unit(store.images(idx))[half], store.masks(idx)[half].astype(np.float32))
            save_png(ROOT / "docs" / f"variants_{v.name}.png", grid)
            names.append(f"variants_{v.name}.png")
    return names


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "variants", help="scratch folder")
    parser.add_argument("--results", type=Path, default=ROOT / "docs" / "synthetic_variants.json")
    args = parser.parse_args(argv)
    cfg = PRESETS["standard"]
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    log = work / "variants.log"
    saved = json.loads(args.results.read_text()) if args.results.is_file() else {}
    results: dict = saved.get("results", {})
    images, masks, source = load_volume()
    split = z_block_split(len(images), cfg.val_fraction, cfg.test_fraction, seed=0)
    test = (work / "test_images.tif", work / "test_masks.tif")
    write_stack(test[0], images[split["test"]])
    write_stack(test[1], masks[split["test"]])
    labelled = labelled_slices(split["train"], K, 0)
    gen_root = work / f"gen_k{K}" / REGIME
    (work / f"k{K}").mkdir(exist_ok=True)
    labelled_store = make_store(work / f"k{K}" / "labelled_store", images, masks, labelled, split["val"])

    def save() -> None:
        write_json_atomic(args.results, {
            "machine": machine(), "command": "python -m bench.synthetic_variants", "source": source,
            "k": K, "labelled_slices": labelled, "ratio": RATIO, "seeds": list(cfg.seeds),
            "test_slices": split["test"], "generator_flags": list(cfg.generator_flags),
            "segmenter_flags": list(cfg.segmenter_flags), "n_synthetic": cfg.n_synthetic,
            "note": NOTE,
            "variants": [asdict(v) for v in VARIANTS], "summary": verdict(results),
            "rows": variant_rows(results), "results": results, "figures": sample_grids(gen_root)})

    def segmenters(name: str, synthetic: Path | None) -> list[float]:
        ratio = RATIO if synthetic else 0.0
        return [segmenter_scores(work / f"s{s}" / name, labelled_store, synthetic, ratio, test, cfg, s,
                                 log)["iou"] for s in cfg.seeds]

    start = time.time()
    # retrained wherever they are missing: they are the judges too
    base_ious = segmenters("real_only", None)
    base = results["real_only"] = {"test_iou": base_ious, "iou_mean": float(np.mean(base_ious)),
                                   "iou_std": float(np.std(base_ious))}
    save()
    print(f"real only: {np.mean(base['test_iou']):.4f} +- {np.std(base['test_iou']):.4f}", flush=True)
    judge, fidelity_judge = work / "s0" / "real_only", work / "s1" / "real_only"
    test_tiles = held_out_tile_store(test, work)
    real_tiles = test_tiles.images(test_tiles.indices())
    if "real_tiles" not in results:  # the same figures for real tiles: judge on test, realism floor
        train = TileStore(labelled_store)
        results["real_tiles"] = {**fidelity(test_tiles, fidelity_judge),
                                 **realism(train.images(train.indices("train")), real_tiles)}
        save()
    gen = train_generator(gen_root, 0, REGIME, False, labelled_store, labelled_store, work,
                          cfg, log)
    for v in VARIANTS:
        if v.name in results:
            continue
        t0 = time.time()
        store_dir = variant_store(v, gen, labelled_store, judge, cfg.n_synthetic, log)
        ious = segmenters(f"seg_{v.name}", store_dir)
        store = TileStore(store_dir)
        gains = [a - b for a, b in zip(ious, base["test_iou"], strict=True)]
        results[v.name] = {"test_iou": ious, "iou_mean": float(np.mean(ious)), "iou_std": float(np.std(ious)),
                           "gain_mean": float(np.mean(gains)), "gain_std": float(np.std(gains)),
                           **fidelity(store, fidelity_judge),
                           **realism(store.images(store.indices()), real_tiles),
                           "minutes": round((time.time() - t0) / 60, 1)}
        save()
        print(f"{v.name}: IoU {np.mean(ious):.4f} (gain {np.mean(gains):+.4f} +- {np.std(gains):.4f}), "
              f"fidelity {results[v.name]['fidelity_iou']:.3f}", flush=True)
    print(f"done in {(time.time() - start) / 60:.0f} min: {args.results}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
