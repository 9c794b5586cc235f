"""Sample synthetic image + mask pairs into a tile store.

    python -m generation_torch.sample --checkpoint RUN/generator.pt --masks-from STORE_OR_MASKS.tif
        --n 64 --out SYNTH_STORE [--mask-source labelled|composed] [--min-object-area 30]
        [--sampler ddim --steps 50 --eta 0 --guidance 2 --seed 0 --batch-size 8]
        [--guidance-rescale 0 --unconditional --strength 1 --precision auto --grid tiles.png]

Each tile is drawn for a mask made from the mask source, and stored with that mask and its provenance
(checkpoint hash, seed, sampler, steps, guidance, how the mask was made): --mask-source labelled
varies a labelled mask (dihedral + elastic); composed places the labelled objects in new layouts
(generation_torch.layouts), matching their count and size per tile. With --strength below 1 (labelled
masks from a tile store) each tile starts from the mask's own real tile, under the mask's transform
and deformation, noised that far along the walk (SDEdit): the real layout stays, details are drawn
anew. Same seed, same tiles, whatever the batch size, and the same as `exporters.infer generate` draws
(shared.sampling).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from generation_torch import grids, precision
from generation_torch.config import PRECISIONS
from generation_torch.layouts import ComposeConfig, compose_masks, layout_line
from generation_torch.masks import load_mask_source, load_pair_source, varied_masks, varied_pairs
from generation_torch.pipeline import Generator, load_generator
from shared import diffusion
from shared.console import on_terminal
from shared.digest import file_digest
from shared.errors import ArgumentParser, UserError, non_negative_int, positive_int, run_cli
from shared.normalization import denormalize
from shared.sampling import SamplerSettings, add_sampler_flags, settings_from_args, tile_seeds
from shared.sources import DEFAULT_GENERATOR_RUN, DEFAULT_SYNTHETIC_STORE
from shared.store import TileStore, refuse_real_store
from shared.tiling import TILE


def add_run_flags(p: ArgumentParser) -> None:
    """The sampler flags (shared.sampling) and how PyTorch runs them (sample and evaluate)."""
    add_sampler_flags(p)
    p.add_argument("--batch-size", type=positive_int, default=8, help="tiles per denoiser call (any: "
                   "tiles do not depend on it)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto")


def sampler_settings(args: argparse.Namespace) -> SamplerSettings:
    """The sampler flags as settings, their steps checked against the schedule (at the CLI edge)."""
    settings = settings_from_args(args)
    try:
        settings.steps_for(diffusion.TIMESTEPS)
    except ValueError as exc:
        raise UserError(f"--{exc}") from None
    return settings


def generate_tiles(gen: Generator, masks: np.ndarray, settings: SamplerSettings, seed: int = 0,
                   batch_size: int = 8, progress: bool = True, init: np.ndarray | None = None) -> np.ndarray:
    """float32 (N, T, T) images in [-1, 1] for uint8 masks; tile i draws from its own noise stream
    (seed * 1_000_003 + i, shared.sampling), so the batch size does not change them. init: normalized
    (N, T, T) tiles to start from (settings.strength < 1)."""
    out = np.empty(masks.shape, np.float32)
    for start in tqdm(range(0, len(masks), batch_size), disable=not progress, desc="sample", unit="batch"):
        rows = slice(start, start + batch_size)
        m = torch.from_numpy(masks[rows].astype(np.float32))
        x = None if init is None else torch.from_numpy(init[rows])[:, None]
        out[start:start + len(m)] = gen.generate(m, settings, seed, start, x)[:, 0].cpu().numpy()
    return out


def trained_on(gen: Generator, ckpt: Path) -> Path:
    """The labelled store a generator learned from (its masks are the default source)."""
    if gen.labelled_store is None or not gen.labelled_store.is_dir():
        raise UserError(f"{ckpt}: the store it learned from is not recorded or gone; give --masks-from")
    return gen.labelled_store


def starting_pairs(path: Path, kind: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """For --strength below 1: n labelled masks varied as conditioning_masks varies them, each with its
    own real tile under the same transform (normalized), and how each was made."""
    if kind != "labelled":
        raise UserError("--strength below 1 starts from each mask's own tile: it needs --mask-source "
                        "labelled (composed layouts have no tile)")
    return varied_pairs(*load_pair_source(path), n, seed)


def conditioning_masks(source: np.ndarray, kind: str, n: int, seed: int, path: Path,
                       min_object_area: int | None = None) -> tuple[np.ndarray, list[dict]]:
    """n masks made from the labelled ones, and how each was made (one record per mask); composed
    layouts take objects of at least min_object_area pixels (default ComposeConfig's)."""
    if kind == "labelled":
        return varied_masks(source, n, seed)
    config = ComposeConfig() if min_object_area is None else ComposeConfig(min_area=min_object_area)
    try:
        masks, records = compose_masks(source, n, seed, config)
    except ValueError as exc:
        raise UserError(f"{path}: {exc}") from None
    if min_object_area is not None:
        records = [r | {"min_object_area": min_object_area} for r in records]
    print(layout_line(source, masks, path.name, "composed", config))
    return masks, records


def main(argv: Sequence[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m generation_torch.sample", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_GENERATOR_RUN / "generator.pt",
                   help="RUN/generator.pt (default: generation_torch.train's default run)")
    p.add_argument("--masks-from", type=Path,
                   help=f"tile store or TIFF stack of {TILE}x{TILE} masks (default: the labelled store the "
                        "checkpoint learned from)")
    p.add_argument("--n", type=positive_int, default=64, help="tiles to generate (default 64)")
    p.add_argument("--out", type=Path, default=DEFAULT_SYNTHETIC_STORE,
                   help="synthetic tile store, created or appended to (default: the one "
                        "segmentation_tf.fit --synthetic-ratio reads by default)")
    p.add_argument("--mask-source", choices=("labelled", "composed"), default="labelled",
                   help="labelled: varied labelled masks; composed: labelled objects in new layouts")
    p.add_argument("--min-object-area", type=positive_int,
                   help=f"composed: objects of at least this many pixels only (default "
                        f"{ComposeConfig().min_area}; smaller components are taken for noise, e.g. in "
                        "predicted masks)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--grid", type=Path, help="also write a PNG of (up to 16) tiles beside their masks")
    add_run_flags(p)
    args = p.parse_args(argv)
    settings = sampler_settings(args)
    if args.min_object_area is not None and args.mask_source != "composed":
        raise UserError("--min-object-area picks the objects of composed layouts: it needs --mask-source "
                        "composed")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gen = load_generator(args.checkpoint, device, precision.resolve(args.precision, device))
    masks_from = args.masks_from or trained_on(gen, args.checkpoint)
    refuse_real_store(args.out)
    init = None
    if settings.strength < 1.0:
        masks, init, origins = starting_pairs(masks_from, args.mask_source, args.n, args.seed)
    else:
        masks, origins = conditioning_masks(load_mask_source(masks_from), args.mask_source, args.n, args.seed,
                                            masks_from, args.min_object_area)
    images = generate_tiles(gen, masks, settings, args.seed, args.batch_size,
                            not args.no_progress and on_terminal(), init)
    store = TileStore.open_or_create(args.out, TILE, kind="synthetic", pixel_size=gen.pixel_size)
    provenance = {"source": "synthetic", "checkpoint": str(args.checkpoint),
                  "checkpoint_sha256": file_digest(args.checkpoint), **settings.provenance(),
                  "mask_source": str(masks_from), "split": "train"}
    seeds = tile_seeds(args.seed, 0, args.n)
    records = [{**provenance, "seed": args.seed, "tile_seed": s, **o}
               for s, o in zip(seeds, origins, strict=True)]
    store.append(denormalize(images, np.uint8), masks, records)
    if args.grid:
        grids.save_pairs(args.grid, images, masks)
    print(f"wrote {args.n} synthetic tiles + masks to {args.out} ({len(store)} tiles in the store)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
