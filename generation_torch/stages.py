"""The two stages end to end: VAE (then the latent cache and scale factor), and the latent DDPM
(then RUN/generator.pt). Files in the run folder:

    vae_last.pt / vae_best.pt              training state / best weights (by validation MSE)
    vae.pt                                 {format "emsynth-vae", vae_config, weights, latent_scale}
    latents.pt                             cached posterior mean/std + conditions (8 dihedral variants)
                                           of the labelled tiles and, under "unlabelled", of the
                                           unlabelled images (null conditions); "data" names both stores
    diffusion_last.pt / diffusion_best.pt  training state / best EMA weights (by validation loss)
    generator.pt                           the product (see pipeline.py)
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from generation_torch import checkpoint, precision
from generation_torch.config import DiffusionStage, VAEConfig, VAEStage, from_dict, to_dict
from generation_torch.data import (
    LatentCache,
    encode_all,
    latent_scale,
    load_images,
    load_split,
    store_identity,
)
from generation_torch.distributed import barrier
from generation_torch.pipeline import decoder_residual_spectrum, load_generator, product_dict
from generation_torch.tasks import DiffusionTask, VAETask
from generation_torch.train_loop import LoopContext, fit
from generation_torch.unet import UNet
from generation_torch.vae import VAE
from shared import diffusion
from shared.digest import file_digest
from shared.errors import UserError
from shared.store import TileStore

VAE_FORMAT = "emsynth-vae"
CACHE_FORMAT = "emsynth-latent-cache"


Caches = tuple[LatentCache, LatentCache | None]  # (labelled, unlabelled)


def data_identity(store: TileStore, unlabelled: TileStore | None) -> dict:
    """The data a latent cache encodes (and a generator learned from)."""
    return {"labelled": store_identity(store), "unlabelled": store_identity(unlabelled)}


def train_vae(store: TileStore, stage: VAEStage, ctx: LoopContext, unlabelled: TileStore | None = None
              ) -> bool:
    """Train (or resume) the VAE on the labelled and unlabelled training images; True when it
    finished and vae.pt + latents.pt exist."""
    images, masks = load_split(store, "train")
    extra = load_images(unlabelled, "train") if unlabelled is not None else None
    val_images, _ = load_split(store, "val")
    torch.manual_seed(ctx.seed)  # identical initial weights on every DDP rank
    vae = VAE(stage.model)
    train_images = images if extra is None else torch.cat([images, extra])
    task = VAETask(vae, train_images, val_images, stage.beta, ctx.dist.device, stage.spectral_weight)
    state = fit(task, stage.train, ctx)
    out = ctx.run_dir / "vae.pt"
    if state.finished and ctx.dist.main and (state.trained > 0 or not out.exists()):
        caches = _encode_caches(vae, images, masks, extra, ctx)
        scale = latent_scale(*caches)
        checkpoint.save(out, {"format": VAE_FORMAT, "vae_config": to_dict(stage.model),
                              "weights": vae.state_dict(), "latent_scale": scale, "val_mse": state.best})
        _save_cache(ctx.run_dir / "latents.pt", out, data_identity(store, unlabelled), caches)
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


def train_diffusion(store: TileStore, stage: DiffusionStage, ctx: LoopContext, trained_precision: str,
                    unlabelled: TileStore | None = None, init: Path | None = None) -> Path | None:
    """Train the denoiser: conditioned on the labelled tiles' masks; the null condition also learns
    from the unlabelled images. `init`: a generator.pt whose denoiser it starts from."""
    vae_path = ctx.run_dir / "vae.pt"
    vae, scale = load_vae(vae_path)
    vae.to(ctx.dist.device)
    identity = data_identity(store, unlabelled)
    cache, extra = _cached_or_encoded(vae, vae_path, identity, store, unlabelled, ctx)
    val_images, val_masks = load_split(store, "val")
    val_cache = _encode(vae, val_images, val_masks, ctx, transforms=1)
    model_cfg = replace(stage.model, in_channels=vae.cfg.latent_channels)
    torch.manual_seed(ctx.seed + 1)
    unet = UNet(model_cfg)
    if init is not None:
        initial_denoiser(unet, vae, init)
    schedule = diffusion.Schedule.make(stage.diffusion.schedule)
    task = DiffusionTask(unet, cache, val_cache, schedule, stage.diffusion, scale, vae, ctx.dist.device,
                         ctx.autocast, val_masks=val_masks[:, 0], unlabelled=extra)
    state = fit(task, stage.train, ctx)
    out = ctx.run_dir / "generator.pt"
    if state.finished and ctx.dist.main:
        pixel_size = store.pixel_size.to_json() if store.pixel_size else None
        spectrum = decoder_residual_spectrum(vae.cpu(), texture_tiles(store, unlabelled))
        checkpoint.save(out, product_dict(vae, unet.cpu(), stage.diffusion, scale, trained_precision,
                                          data={**identity, "pixel_size": pixel_size},
                                          texture_spectrum=spectrum))
        selection = stage.diffusion.val_selection
        band = "" if selection == "all" else f" ({selection} noise band)"
        print(f"diffusion: best validation loss{band} {state.best:.5f}; wrote {out}")
    barrier(ctx.dist)
    return out if state.finished else None


def initial_denoiser(unet: UNet, vae: VAE, path: Path) -> None:
    """Load the denoiser weights of generator `path` into `unet`: its latents must come from the same
    VAE (else the weights denoise another latent space) and its denoiser must have the same shape."""
    if not path.is_file():
        raise UserError(f"{path}: no such generator checkpoint (--init-denoiser)")
    source = load_generator(path)
    theirs, ours = source.vae.state_dict(), vae.state_dict()
    if theirs.keys() != ours.keys() or any(not torch.equal(theirs[k], ours[k].cpu()) for k in ours):
        raise UserError(f"{path}: trained on another VAE than this run's vae.pt; --init-denoiser needs "
                        "the same VAE (copy that VAE into the run folder)")
    if source.unet.cfg != unet.cfg:
        raise UserError(f"{path}: its denoiser is shaped {source.unet.cfg}, this run's is {unet.cfg}")
    unet.load_state_dict(source.unet.state_dict())
    print(f"diffusion: starts from the denoiser of {path}")


def texture_tiles(store: TileStore, unlabelled: TileStore | None, n: int = 256) -> np.ndarray:
    """Up to n (N, T, T) training tiles (labelled, then unlabelled) whose VAE residuals give the
    texture spectrum."""
    images = load_images(store, "train")
    if unlabelled is not None and len(images) < n:
        images = torch.cat([images, load_images(unlabelled, "train")])
    return images[:n, 0].numpy()


def _cached_or_encoded(vae: VAE, vae_path: Path, identity: dict, store: TileStore,
                       unlabelled: TileStore | None, ctx: LoopContext) -> Caches:
    """latents.pt when it encodes this data with this vae.pt, else encode now (e.g. the VAE came
    from another run, or latents.pt is of other stores) and save it for the next run."""
    path = ctx.run_dir / "latents.pt"
    caches = _load_cache(path, vae_path, identity)
    if caches is not None:
        return caches
    extra = load_images(unlabelled, "train") if unlabelled is not None else None
    caches = _encode_caches(vae, *load_split(store, "train"), extra, ctx)
    if ctx.dist.main:
        _save_cache(path, vae_path, identity, caches)
        extra_rows = len(caches[1]) if caches[1] is not None else 0
        print(f"latents: encoded {len(caches[0])} labelled + {extra_rows} unlabelled latents into {path}")
    return caches


def _encode_caches(vae: VAE, images: torch.Tensor, masks: torch.Tensor, extra: torch.Tensor | None,
                   ctx: LoopContext) -> Caches:
    """The labelled cache and, for unlabelled images, one with null conditions only."""
    return _encode(vae, images, masks, ctx), (_encode(vae, extra, None, ctx) if extra is not None else None)


def _encode(vae: VAE, images: torch.Tensor, masks: torch.Tensor | None, ctx: LoopContext,
            transforms: int = 8) -> LatentCache:
    vae.eval()

    def encode(x: torch.Tensor):
        with precision.autocast(ctx.dist.device, ctx.autocast):
            mean, logvar = vae.encode(x.to(ctx.dist.device))
        return mean.cpu(), logvar.cpu()

    return encode_all(encode, images, masks, batch_size=16, transforms=transforms)


def _save_cache(path: Path, vae_path: Path, identity: dict, caches: Caches) -> None:
    labelled, unlabelled = caches
    checkpoint.save(path, {"format": CACHE_FORMAT, "vae": file_digest(vae_path), "data": identity,
                           **labelled.to_dict(), "unlabelled": unlabelled.to_dict() if unlabelled else None})


def _load_cache(path: Path, vae_path: Path, identity: dict) -> Caches | None:
    """The cached latents, if they were encoded by exactly this vae.pt from exactly this data (a cache
    of other stores would train the denoiser on their masks)."""
    if not path.exists():
        return None
    saved = checkpoint.load(path, CACHE_FORMAT)
    if saved.get("vae") != file_digest(vae_path) or saved.get("data") != identity:
        return None
    extra = saved.get("unlabelled")
    return LatentCache.from_dict(saved), (LatentCache.from_dict(extra) if extra is not None else None)
