"""Sample synthetic image + mask pairs into a tile store.

    python -m generation_torch.sample --checkpoint RUN/generator.pt --masks-from STORE_OR_MASKS.tif
        --n 64 --out SYNTH_STORE [--sampler ddim --steps 50 --eta 0 --guidance 2 --seed 0 --batch-size 8]

Each tile is drawn for a mask taken from the mask source and varied (dihedral + elastic), and stored
with that mask and its provenance (checkpoint hash, seed, sampler, steps, guidance). Same seed, same tiles.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from generation_torch import checkpoint, grids, precision
from generation_torch.masks import load_mask_source, varied_masks
from generation_torch.pipeline import Generator, load_generator
from shared import diffusion
from shared.errors import ArgumentParser, UserError, non_negative_int, positive_int, run_cli, unit_interval
from shared.normalization import denormalize
from shared.store import TileStore


def add_sampler_flags(p: ArgumentParser) -> None:
    p.add_argument("--sampler", choices=diffusion.SAMPLERS, default="ddim",
                   help="ddpm (1000 steps), ddim (50), dpmpp2m (DPM-Solver++ 2M, 20)")
    p.add_argument("--steps", type=positive_int, help="sampler steps (default per sampler)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM noise: 0 deterministic, 1 = DDPM variance")
    p.add_argument("--guidance", type=float, default=2.0,
                   help="classifier-free guidance scale (1 = conditional only)")
    p.add_argument("--guidance-rescale", type=unit_interval, default=0.0,
                   help="0-1: rescale the guided prediction to the conditional one's std (tames the "
                        "over-saturated contrast of large guidance; Lin et al. 2024 use 0.7); 0 = off")
    p.add_argument("--unconditional", action="store_true", help="ignore the masks (null condition)")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--precision", choices=precision.CHOICES, default="auto")


def generate_tiles(gen: Generator, masks: np.ndarray, seed: int, args, progress: bool = True) -> np.ndarray:
    """float32 (N, 256, 256) images in [-1, 1] for uint8 masks; tile i uses seed * 1_000_003 + i."""
    steps = args.steps or diffusion.DEFAULT_STEPS[args.sampler]
    if steps > diffusion.TIMESTEPS:
        raise UserError(f"--steps must be <= {diffusion.TIMESTEPS}, got {steps}")
    out = np.empty(masks.shape, np.float32)
    batches = range(0, len(masks), args.batch_size)
    for start in tqdm(batches, disable=not progress, desc="sample", unit="batch"):
        m = torch.from_numpy(masks[start:start + args.batch_size].astype(np.float32))
        seeds = [seed * 1_000_003 + i for i in range(start, start + len(m))]
        images = gen.generate(m, seeds, args.sampler, steps, args.guidance, args.eta, args.unconditional,
                              args.guidance_rescale)
        out[start:start + len(m)] = images[:, 0].cpu().numpy()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m generation_torch.sample", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="RUN/generator.pt")
    p.add_argument("--masks-from", type=Path, required=True, help="tile store or TIFF stack of 256x256 masks")
    p.add_argument("--n", type=positive_int, required=True, help="tiles to generate")
    p.add_argument("--out", type=Path, required=True, help="synthetic tile store (created or appended to)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--grid", type=Path, help="also write a PNG of (up to 16) tiles beside their masks")
    add_sampler_flags(p)
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gen = load_generator(args.checkpoint, device, precision.resolve(args.precision, device))
    source = load_mask_source(args.masks_from)
    masks, origins = varied_masks(source, args.n, args.seed)
    images = generate_tiles(gen, masks, args.seed, args, not args.no_progress)
    store = TileStore.open_or_create(args.out, 256, kind="synthetic")
    steps = args.steps or diffusion.DEFAULT_STEPS[args.sampler]
    provenance = {"source": "synthetic", "checkpoint": str(args.checkpoint),
                  "checkpoint_sha256": checkpoint.file_hash(args.checkpoint), "sampler": args.sampler,
                  "steps": steps, "eta": args.eta, "guidance": 0.0 if args.unconditional else args.guidance,
                  "guidance_rescale": args.guidance_rescale,
                  "mask_source": str(args.masks_from), "split": "train"}
    records = [{**provenance, "seed": args.seed, "tile_seed": args.seed * 1_000_003 + i, **o}
               for i, o in enumerate(origins)]
    store.append(denormalize(images, np.uint8), masks, records)
    if args.grid:
        k = min(16, args.n)
        grids.save_png(args.grid, grids.pair_grid(grids.to_unit(images[:k]), masks[:k].astype(np.float32)))
    print(f"wrote {args.n} synthetic tiles + masks to {args.out} ({len(store)} tiles in the store)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
