"""Label-efficient pixel classification on the generator's own denoiser features (Baranchuk et al.,
"Label-Efficient Semantic Segmentation with Diffusion Models", ICLR 2022), on the evidence grid's
budgets: can the denoiser that learned every pool image label the pool better than the real-only
segmenter of the same labelled region (the grid's judge, whose pseudo-labels the generator learns)?

    python -m bench.feature_labels --generator GEN.pt --k 256px      # after the grid trained GEN.pt

Features: each 256 px tile is encoded by the generator's VAE (mean latent), noised to a few timesteps
(fixed noise), and passed through the denoiser under the null condition; the outputs of the up-path's
levels are upsampled to latent resolution and stacked (timesteps x levels). A small MLP learns the
labelled tiles' area-averaged masks from them; its probabilities, upsampled to pixels, are thresholded
where validation IoU is highest (the grid's validation block), then scored on the test block and, as
pseudo-labels, on the pool pages beside the judge's own pseudo-labels on the same pages.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.common import machine, print_table, shown_command
from bench.evidence import pseudo_folder
from bench.regions import parse_budget
from segmentation_tf.calibration import calibrate_threshold
from segmentation_tf.scores import iou
from shared.atomic import write_json_atomic
from shared.errors import UserError, run_cli
from shared.normalization import normalize
from shared.tiff_io import read_mask_stack

TILE = 256
TIMESTEPS = (50, 150, 250)  # the paper's choice for 256 px images: features of a little noise
THRESHOLDS = np.linspace(0.05, 0.95, 19)


def up_levels(unet) -> list:
    """The up-path layers whose outputs are one resolution level's features: those before each
    Upsample, and the last one."""
    from generation_torch.layers import Upsample

    layers = list(unet.up)
    return [
        layer
        for layer, nxt in zip(layers, [*layers[1:], None], strict=True)
        if nxt is None or isinstance(nxt, Upsample)
    ]


def tile_features(gen, tiles: np.ndarray, timesteps: Sequence[int], seed: int = 0, batch: int = 8):
    """(N, 256, 256) tiles in [-1, 1] -> (N, C, h, w) float32 features at latent resolution."""
    import torch
    import torch.nn.functional as F

    from generation_torch.unet import mask_condition, null_condition
    from shared import diffusion

    captured: list = []
    hooks = [
        layer.register_forward_hook(lambda _m, _i, out: captured.append(out)) for layer in up_levels(gen.unet)
    ]
    out = []
    try:
        with torch.no_grad():
            for start in range(0, len(tiles), batch):
                x = torch.from_numpy(tiles[start : start + batch]).float()[:, None]
                z0 = gen.latent_scale * gen.vae.encode(x)[0]
                size = z0.shape[-1]
                cond = null_condition(mask_condition(torch.zeros(len(x), TILE, TILE), size))
                noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(seed))
                feats = []
                for t in timesteps:
                    a, s = (float(c) for c in gen.schedule.coefficients(t))
                    captured.clear()
                    gen.unet(diffusion.q_sample(z0, noise, a, s), cond, torch.full((len(x),), float(t)))
                    feats += [
                        F.interpolate(f.float(), size=size, mode="bilinear", align_corners=False)
                        for f in captured
                    ]
                out.append(torch.cat(feats, dim=1).numpy())
    finally:
        for h in hooks:
            h.remove()
    return np.concatenate(out)


def page_tiles(pages: np.ndarray) -> np.ndarray:
    """(P, H, W) pages whose sides divide by 256 -> (P * H/256 * W/256, 256, 256), row-major."""
    p, h, w = pages.shape
    return pages.reshape(p, h // TILE, TILE, w // TILE, TILE).transpose(0, 1, 3, 2, 4).reshape(-1, TILE, TILE)


def untile(tiles: np.ndarray, pages: int, rows: int, cols: int) -> np.ndarray:
    """(P * rows * cols, C, t, t) tiles -> (P, C, rows * t, cols * t) pages (page_tiles' inverse)."""
    _, c, t, _ = tiles.shape
    return (
        tiles.reshape(pages, rows, cols, c, t, t)
        .transpose(0, 3, 1, 4, 2, 5)
        .reshape(pages, c, rows * t, cols * t)
    )


def denoiser_page_features(gen, timesteps: Sequence[int]):
    """pages (P, H, W) in [-1, 1] -> (P, C, H/f, W/f) denoiser features, f the VAE's downsampling."""

    def features(pages: np.ndarray) -> np.ndarray:
        p, h, w = pages.shape
        return untile(tile_features(gen, page_tiles(pages), timesteps), p, h // TILE, w // TILE)

    return features


def filter_bank(page: np.ndarray) -> np.ndarray:
    """(H, W) -> (C, H, W): ilastik's default pixel features (Gaussian smoothing, Laplacian of
    Gaussian, gradient magnitude, difference of Gaussians, Hessian eigenvalues) at five scales."""
    from scipy import ndimage

    out = [page]
    for sigma in (0.7, 1.6, 3.5, 5.0, 10.0):
        smooth = ndimage.gaussian_filter(page, sigma)
        hyy = ndimage.gaussian_filter(page, sigma, order=(2, 0))
        hxx = ndimage.gaussian_filter(page, sigma, order=(0, 2))
        hxy = ndimage.gaussian_filter(page, sigma, order=(1, 1))
        root = np.sqrt(((hxx - hyy) / 2) ** 2 + hxy**2)
        out += [
            smooth,
            hxx + hyy,
            ndimage.gaussian_gradient_magnitude(page, sigma),
            smooth - ndimage.gaussian_filter(page, 1.6 * sigma),
            (hxx + hyy) / 2 + root,
            (hxx + hyy) / 2 - root,
        ]
    return np.stack(out).astype(np.float32)


def filter_features(pages: np.ndarray) -> np.ndarray:
    return np.stack([filter_bank(p) for p in pages])


def area_average(masks: np.ndarray, f: int) -> np.ndarray:
    """(N, H, W) -> (N, H/f, W/f) means of f x f blocks."""
    n, h, w = masks.shape
    return masks.reshape(n, h // f, f, w // f, f).mean(axis=(2, 4)).astype(np.float32)


def train_classifier(feats: np.ndarray, targets: np.ndarray, steps: int = 600, seed: int = 0):
    """An MLP (C -> 64 -> 1, per latent pixel) on standardized features, BCE against soft targets."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    x = torch.from_numpy(feats.transpose(0, 2, 3, 1).reshape(-1, feats.shape[1]))
    y = torch.from_numpy(targets.reshape(-1, 1))
    mean, std = x.mean(0), x.std(0) + 1e-5
    model = nn.Sequential(nn.Linear(x.shape[1], 64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (1024,), generator=g)
        loss = nn.functional.binary_cross_entropy_with_logits(model((x[idx] - mean) / std), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()

    def predict(f: np.ndarray) -> np.ndarray:
        n, c, h, w = f.shape
        with torch.no_grad():
            flat = torch.from_numpy(f.transpose(0, 2, 3, 1).reshape(-1, c))
            return torch.sigmoid(model((flat - mean) / std)).numpy().reshape(n, h, w)

    return predict


def upsample(probs: np.ndarray, f: int) -> np.ndarray:
    """(N, h, w) -> (N, h f, w f), bilinear."""
    import torch
    import torch.nn.functional as F

    if f == 1:
        return probs
    return F.interpolate(
        torch.from_numpy(probs)[:, None], scale_factor=f, mode="bilinear", align_corners=False
    )[:, 0].numpy()


def main(argv: Sequence[str] | None = None) -> int:
    from bench.synthetic_ablation import load_volume
    from generation_torch.pipeline import load_generator

    parser = argparse.ArgumentParser(
        prog="python -m bench.feature_labels", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--generator", type=Path, help="a grid generator.pt (its VAE and denoiser)")
    parser.add_argument(
        "--features", nargs="+", choices=("denoiser", "filters"), default=["denoiser", "filters"]
    )
    parser.add_argument(
        "--k", type=parse_budget, default="256px", help="the labelled budget (a region or slices)"
    )
    parser.add_argument(
        "--work", type=Path, default=Path("runs/evidence/matched"), help="the grid's work folder"
    )
    parser.add_argument("--timesteps", type=int, nargs="+", default=list(TIMESTEPS))
    parser.add_argument("--json", type=Path, default=Path("docs/feature_labels.json"))
    args = parser.parse_args(argv)
    if "denoiser" in args.features and args.generator is None:
        parser.error("denoiser features need --generator")
    layout_file = args.work / "layout.json"
    if not layout_file.is_file():
        raise UserError(f"{layout_file}: no grid layout (run bench.evidence first)")
    layout = json.loads(layout_file.read_text())
    judge_masks(args.work, args.k)
    images, masks, source = load_volume()
    images = normalize(images)
    kinds = {"filters": (filter_features, 1)}
    if "denoiser" in args.features:
        gen = load_generator(args.generator)
        kinds["denoiser"] = (denoiser_page_features(gen, args.timesteps), gen.vae.cfg.downsample)
    rows = [classify(name, *kinds[name], images, masks, layout, args.k, args.work) for name in args.features]
    for row in rows:
        if row["features"] == "denoiser":
            row.update(timesteps=args.timesteps, generator=str(args.generator))
    print_table(
        "Pixel classifiers on one labelled budget vs the grid's judge",
        rows,
        [
            "features",
            "k",
            "channels",
            "threshold",
            "labelled_iou",
            "val_iou",
            "test_iou",
            "pseudo_iou",
            "judge_pseudo_iou",
            "pseudo_foreground",
            "real_foreground",
            "minutes",
        ],
    )
    results = {
        "machine": machine(),
        "command": shown_command("bench.feature_labels", list(argv or sys.argv[1:])),
        "source": source,
        "rows": rows,
    }
    write_json_atomic(args.json, results)
    return 0


def judge_masks(work: Path, k) -> Path:
    """The pool pages the grid's judge of k pseudo-labelled (at today's calibration version)."""
    path = pseudo_folder(work, k) / "predicted" / "mask.tif"
    if not path.is_file():
        raise UserError(f"{path}: the judge of k = {k} has not pseudo-labelled the pool yet (the grid "
                        "does so before its first main-recipe cell of that budget)")
    return path


def classify(
    name: str, features, f: int, images: np.ndarray, masks: np.ndarray, layout: dict, k, work: Path
) -> dict:
    """Train the MLP on the labelled budget's features, choose its threshold on the validation block,
    score it on the test block and on the unlabelled pool pages (as pseudo-labels, beside the judge's)."""
    start = time.time()
    labelled = layout[f"labelled_k{k}"]
    if isinstance(k, str):
        y, x, side = layout[f"region_{k}"]
        feats = features(images[labelled[:1]])[:, :, y // f : (y + side) // f, x // f : (x + side) // f]
        truth_labelled = masks[labelled[:1], y : y + side, x : x + side] > 0
    else:
        feats, truth_labelled = features(images[labelled]), masks[labelled] > 0
    targets = area_average(truth_labelled.astype(np.float32), f)
    predict = train_classifier(feats, targets)

    def page_probs(pages: list[int]) -> np.ndarray:
        return np.concatenate([upsample(predict(features(images[[z]])), f) for z in pages])

    threshold, val_iou = calibrate_threshold(page_probs(layout["val"]), masks[layout["val"]], THRESHOLDS)
    test = page_probs(layout["test"])
    others = [z for z in layout["pool"] if z not in labelled]
    pool = page_probs(others) >= threshold
    predicted = read_mask_stack(judge_masks(work, k)) > 0
    judged = [z for z in layout["pool"] if isinstance(k, str) or z not in labelled]  # the judge's pages
    judge_pool = predicted[[judged.index(z) for z in others]]
    truth = masks[others] > 0
    return {
        "features": name,
        "k": str(k),
        "channels": int(feats.shape[1]),
        "labelled_pixels": int(targets.size * f * f),
        "threshold": threshold,
        # its fit to the labels it learned (a classifier that cannot fit them lacks the features)
        "labelled_iou": round(iou(upsample(predict(feats), f), truth_labelled, threshold), 4),
        "val_iou": round(val_iou, 4),
        "test_iou": round(iou(test, masks[layout["test"]], threshold), 4),
        "pool_pages": len(others),
        "pseudo_iou": round(iou(pool, truth), 4),
        "judge_pseudo_iou": round(iou(judge_pool, truth), 4),
        "pseudo_foreground": round(float(pool.mean()), 4),
        "real_foreground": round(float(truth.mean()), 4),
        "minutes": round((time.time() - start) / 60, 2),
    }


if __name__ == "__main__":
    sys.exit(run_cli(main))
