"""Train the generator: VAE, then the mask-conditioned latent DDPM on cached latents.

    python -m generation_torch.train [--store STORE | --images I.tif --masks M.tif] [--stage all]
        [--unlabelled-store STORE] [--out runs/generator] [--preset quick|real|full|none] [--resume] [...]

With no data flags: the built-in phantom and the quick preset (minutes on 2 CPU cores).
Images plentiful, labels scarce: --unlabelled-store adds its train images (masks ignored) to the VAE's
training and to the null-condition (condition-dropout) rows of the denoiser; masks, and so the
conditioned rows, come from the labelled data only. A VAE trained elsewhere can be reused: copy its
vae.pt into the run folder and run --stage diffusion (latents.pt is re-encoded unless it was encoded
by that vae.pt from these very stores).
Under torchrun (WORLD_SIZE > 1) the run is data-parallel (DDP; gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

import sys
import types
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from generation_torch import cli_args, precision
from generation_torch.distributed import barrier, setup, teardown
from generation_torch.stages import train_diffusion, train_vae
from generation_torch.train_loop import LoopContext
from shared.console import on_terminal
from shared.errors import run_cli
from shared.sources import open_unlabelled_store, resolve_real_store, source_from_args
from shared.store import TileStore


def main(argv: Sequence[str] | None = None) -> int:
    args = cli_args.parser().parse_args(argv)
    stages = cli_args.stages_from_args(args)
    source = source_from_args(args)
    dist = setup(args.device)
    try:
        out: Path = args.out
        if dist.main:
            out.mkdir(parents=True, exist_ok=True)
        store = resolve_real_store(source, out) if dist.main else None  # rank 0 ingests once
        barrier(dist)
        store = store or resolve_real_store(source, out)
        unlabelled = (open_unlabelled_store(args.unlabelled_store, store.tile_size)
                      if args.unlabelled_store is not None else None)
        dtype = precision.resolve(args.precision, dist.device)
        writer = _writer(out, dist.main)
        ctx = LoopContext(out, dist, dtype, args.seed, args.resume, writer, args.stop_after, None,
                          not args.no_progress and on_terminal(), args.visual_every)
        if dist.main:
            print(f"data: {_describe(store, unlabelled)}; preset {cli_args.preset_name(args)}; precision "
                  f"{precision.name(dtype)}; {dist.world} process(es) on {dist.device}")
        vae_done = False
        if args.stage in ("vae", "all"):
            vae_ctx = replace(ctx, max_minutes=stages.vae.minutes)
            vae_done = train_vae(store, stages.vae, vae_ctx, unlabelled)
        if args.stage == "diffusion" or (args.stage == "all" and vae_done):
            diff_ctx = replace(ctx, max_minutes=stages.diffusion.minutes)
            train_diffusion(store, stages.diffusion, diff_ctx, precision.name(dtype), unlabelled,
                            args.init_denoiser)
        if writer is not None:
            writer.close()
    finally:
        teardown(dist)
    return 0


def _describe(store: TileStore, unlabelled: TileStore | None) -> str:
    text = f"{store.path} ({len(store.indices('train'))} train / {len(store.indices('val'))} val tiles)"
    if unlabelled is not None:
        text += f" + unlabelled {unlabelled.path} ({len(unlabelled.indices('train'))} train tiles)"
    return text


def _writer(out: Path, main: bool):
    if not main:
        return None
    if "tensorflow" not in sys.modules:  # write event files without importing TensorFlow (seconds, ~1 GB)
        sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
    from torch.utils.tensorboard import SummaryWriter  # heavy import, main process only

    return SummaryWriter(str(out / "tb"))


if __name__ == "__main__":
    sys.exit(run_cli(main))
