"""The two stages end to end: VAE (then the latent cache and scale factor), and the latent DDPM
(then RUN/generator.pt). Files in the run folder:

    vae_last.pt / vae_best.pt              training state / best weights (by validation MSE)
    vae.pt                                 {format "emsynth-vae", vae_config, weights, latent_scale}
    latents.pt                             cached posterior mean/std + conditions (8 dihedral variants)
    diffusion_last.pt / diffusion_best.pt  training state / best EMA weights (by validation loss)
    generator.pt                           the product (see pipeline.py)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from generation_torch import checkpoint, precision
from generation_torch.config import DiffusionConfig, StageConfig, UNetConfig, VAEConfig, from_dict, to_dict
from generation_torch.data import LatentCache, encode_all, latent_scale, load_split
from generation_torch.distributed import barrier
from generation_torch.pipeline import product_dict
from generation_torch.tasks import DiffusionTask, VAETask
from generation_torch.train_loop import LoopContext, fit
from generation_torch.unet import UNet
from generation_torch.vae import VAE
from shared import diffusion
from shared.errors import UserError
from shared.store import TileStore

VAE_FORMAT = "emsynth-vae"
CACHE_FORMAT = "emsynth-latent-cache"


@dataclass(frozen=True)
class VAEStage:
    model: VAEConfig
    train: StageConfig
    beta: float = 1e-5
    minutes: float | None = None     # time box (None: run all steps)


@dataclass(frozen=True)
class DiffusionStage:
    model: UNetConfig
    train: StageConfig
    diffusion: DiffusionConfig
    minutes: float | None = None


def train_vae(store: TileStore, stage: VAEStage, ctx: LoopContext) -> bool:
    """Train (or resume) the VAE; True when it finished and vae.pt + latents.pt exist."""
    images, masks = load_split(store, "train")
    val_images, _ = load_split(store, "val")
    torch.manual_seed(ctx.seed)  # identical initial weights on every DDP rank
    vae = VAE(stage.model)
    task = VAETask(vae, images, val_images, stage.beta, ctx.dist.device)
    state = fit(task, stage.train, ctx)
    out = ctx.run_dir / "vae.pt"
    if state.finished and ctx.dist.main and (state.trained > 0 or not out.exists()):
        cache = _encode(vae, images, masks, ctx)
        scale = latent_scale(cache)
        checkpoint.save(out, {"format": VAE_FORMAT, "vae_config": to_dict(stage.model),
                              "weights": vae.state_dict(), "latent_scale": scale, "val_mse": state.best})
        checkpoint.save(ctx.run_dir / "latents.pt", {"format": CACHE_FORMAT, "vae": checkpoint.file_hash(out),
                                                     **cache.to_dict()})
        print(f"vae: best validation MSE {state.best:.5f}; latent scale {scale:.4f}")
    barrier(ctx.dist)
    return state.finished


def load_vae(path: Path) -> tuple[VAE, float]:
    if not path.exists():
        raise UserError(f"{path}: no trained VAE in this run folder (run --stage vae first)")
    saved = checkpoint.load(path, VAE_FORMAT)
    vae = VAE(from_dict(VAEConfig, saved["vae_config"]))
    checkpoint.load_weights(vae, saved["weights"], path, "VAE")
    return vae.eval(), float(saved["latent_scale"])


def train_diffusion(store: TileStore, stage: DiffusionStage, ctx: LoopContext, trained_precision: str
                    ) -> Path | None:
    vae_path = ctx.run_dir / "vae.pt"
    vae, scale = load_vae(vae_path)
    vae.to(ctx.dist.device)
    cache = _load_cache(ctx.run_dir / "latents.pt", vae_path)
    if cache is None:  # e.g. the VAE came from elsewhere: encode once now
        cache = _encode(vae, *load_split(store, "train"), ctx)
    val_images, val_masks = load_split(store, "val")
    val_cache = _encode(vae, val_images, val_masks, ctx, transforms=1)
    model_cfg = replace(stage.model, in_channels=vae.cfg.latent_channels)
    torch.manual_seed(ctx.seed + 1)
    unet = UNet(model_cfg)
    schedule = diffusion.Schedule.make(stage.diffusion.schedule)
    task = DiffusionTask(unet, cache, val_cache, schedule, stage.diffusion, scale, vae, ctx.dist.device,
                         ctx.autocast, val_masks=val_masks[:, 0])
    state = fit(task, stage.train, ctx)
    out = ctx.run_dir / "generator.pt"
    if state.finished and ctx.dist.main:
        checkpoint.save(out, product_dict(vae.cpu(), unet.cpu(), stage.diffusion, scale, trained_precision))
        print(f"diffusion: best validation loss {state.best:.5f}; wrote {out}")
    barrier(ctx.dist)
    return out if state.finished else None


def _encode(vae: VAE, images: torch.Tensor, masks: torch.Tensor, ctx: LoopContext,
            transforms: int = 8) -> LatentCache:
    vae.eval()

    def encode(x: torch.Tensor):
        with precision.autocast(ctx.dist.device, ctx.autocast):
            mean, logvar = vae.encode(x.to(ctx.dist.device))
        return mean.cpu(), logvar.cpu()

    return encode_all(encode, images, masks, batch_size=16, transforms=transforms)


def _load_cache(path: Path, vae_path: Path) -> LatentCache | None:
    """The cached latents, if they were encoded by exactly this vae.pt."""
    if not path.exists():
        return None
    saved = checkpoint.load(path, CACHE_FORMAT)
    if saved.get("vae") != checkpoint.file_hash(vae_path):
        return None
    return LatentCache(saved["mean"], saved["std"], saved["cond"])
