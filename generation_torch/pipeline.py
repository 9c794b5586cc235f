"""The trained generator as one object: VAE + EMA denoiser + schedule + latent scale, loaded from
RUN/generator.pt, and mask-conditioned generation through the shared sampler maths.

generator.pt keys (a plain dict, torch.save):
    format "emsynth-generator", version 2 (1: the denoiser took the mask at its input only; still loads),
    vae_config (VAEConfig as dict), vae_weights (VAE state_dict: encoder.* and decoder.*),
    unet_config (UNetConfig as dict), unet_weights (EMA denoiser state_dict),
    diffusion {schedule, timesteps, schedule_parameters (Schedule.to_config; older files lack the
    parameters and get the schedule's defaults), prediction, cond_dropout}, latent_scale (float),
    latent_shape [C, h, w], tile_size, normalization (shared.normalization.metadata()),
    condition (text: the layout of the condition input), precision_trained,
    data {labelled, unlabelled, pixel_size}: the stores it learned from (path, train tiles, records
    hash) and the labelled store's pixel size (shared.pixel_size JSON, nm; None: unknown), or None,
    texture_spectrum (T, T//2 + 1) float32 tensor: the power spectrum of the VAE's residuals on
    training tiles (shared.texture; older files lack it and cannot draw with --texture).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from generation_torch import checkpoint, precision
from generation_torch.config import DiffusionConfig, VAEConfig, from_dict, to_dict, unet_config
from generation_torch.unet import UNet, mask_condition, null_condition
from generation_torch.vae import VAE
from shared import diffusion
from shared.errors import UserError
from shared.normalization import metadata as norm_metadata
from shared.pixel_size import PixelSize
from shared.sampling import SamplerSettings, TileNoise, tile_seeds
from shared.texture import add_texture, residual_spectrum
from shared.tiling import TILE

CONDITION_LAYOUT = ("cond (B, 2, h, w) float32: [0] mask area-averaged to latent resolution in [0, 1], "
                    "[1] 1 = conditioned; null condition (guidance) = all zeros")


@dataclass
class Generator:
    vae: VAE
    unet: UNet
    schedule: diffusion.Schedule
    prediction: str
    latent_scale: float
    device: torch.device = torch.device("cpu")
    autocast: torch.dtype | None = None
    pixel_size: PixelSize | None = None  # of the tiles it learned from (None: unknown)
    labelled_store: Path | None = None   # the store whose masks it learned (None: not recorded)
    texture_spectrum: np.ndarray | None = None  # the decoder's residual power (None: not measured)

    @property
    def latent_size(self) -> int:
        return TILE // self.vae.cfg.downsample

    def model_fn(self, cond: torch.Tensor, guidance: float,
                 rescale: float = 0.0) -> Callable[[torch.Tensor, int], torch.Tensor]:
        """model_fn(x, t) for shared.diffusion.sample with classifier-free guidance
        (shared.diffusion.guided_model: the same batching as the onnxruntime sampler)."""
        def denoise(x: torch.Tensor, c: torch.Tensor, t: int) -> torch.Tensor:
            with torch.no_grad(), precision.autocast(self.device, self.autocast):
                return self.unet(x, c, torch.full((len(x),), float(t), device=x.device)).float()

        return diffusion.guided_model(denoise, cond, null_condition(cond), guidance, rescale, torch.cat)

    @torch.no_grad()
    def generate(self, masks: torch.Tensor, settings: SamplerSettings | None = None, seed: int = 0,
                 start: int = 0, init_images: torch.Tensor | None = None) -> torch.Tensor:
        """Images (B, 1, T, T) in [-1, 1] for masks (B, T, T) in {0, 1}. Image k is tile start + k of a
        request with `seed` and draws from that tile's own noise stream (shared.sampling, as the
        onnxruntime sampler): it does not depend on the batch it was drawn in. With settings.strength
        below 1, image k starts from init_images[k] (B, 1, T, T), normalized, noised that far."""
        settings = settings or SamplerSettings()
        if settings.texture and self.texture_spectrum is None:
            raise UserError("this generator has no texture spectrum (trained before it was measured): "
                            "draw with --texture 0 or retrain its diffusion stage")
        noise = TileNoise(tile_seeds(seed, start, len(masks)))
        init = None if settings.strength == 1.0 or init_images is None else self.encode(init_images)
        images = self.decode(self.sample_latents(masks, settings, noise, init))
        if not settings.texture:
            return images
        textured = add_texture(images[:, 0].cpu().numpy(), self.texture_spectrum, settings.texture, noise)
        return torch.from_numpy(textured)[:, None].to(images.device)

    @torch.no_grad()
    def sample_latents(self, masks: torch.Tensor, settings: SamplerSettings, noise: TileNoise,
                       init: torch.Tensor | None = None) -> torch.Tensor:
        """Scaled latents (B, C, h, w) for masks (B, T, T), drawn from the tiles' noise streams: what
        `generate` decodes. init: scaled latents to start from when settings.strength < 1."""
        self.vae.eval()
        self.unet.eval()

        def noise_fn(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(noise.draw(x.shape[1:])).to(x.device)

        shape = (self.vae.cfg.latent_channels, self.latent_size, self.latent_size)
        x_T = torch.from_numpy(noise.draw(shape)).to(self.device)
        cond = mask_condition(masks.to(self.device), self.latent_size)
        fn = self.model_fn(cond, settings.scale, settings.guidance_rescale)
        steps = settings.steps_for(self.schedule.timesteps)
        if settings.strength < 1.0 and init is None:
            raise ValueError(f"strength {settings.strength} needs the tiles to start from")
        return diffusion.sample(fn, x_T, self.schedule, settings.sampler, steps, eta=settings.eta,
                                prediction=self.prediction, noise_fn=noise_fn,
                                init=None if init is None else init.to(self.device),
                                strength=settings.strength)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Scaled posterior-mean latents of normalized images (B, 1, T, T)."""
        self.vae.eval()
        with torch.no_grad(), precision.autocast(self.device, self.autocast):
            return self.vae.encode(images.to(self.device))[0].float() * self.latent_scale

    def decode(self, z_scaled: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), precision.autocast(self.device, self.autocast):
            return self.vae.decoder(z_scaled / self.latent_scale).float().clamp(-1.0, 1.0)


@torch.no_grad()
def reconstruct(vae: VAE, images: np.ndarray, batch_size: int = 16, device: torch.device | None = None,
                autocast: torch.dtype | None = None) -> np.ndarray:
    """decode(posterior mean) of (N, T, T) tiles in [-1, 1]: float32 (N, T, T), unclamped."""
    vae.eval()
    device = device or next(vae.parameters()).device
    out = np.empty(images.shape, np.float32)
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size]))[:, None].to(device)
        with precision.autocast(device, autocast):
            out[start:start + len(x)] = vae.decoder(vae.encode(x)[0]).float()[:, 0].cpu().numpy()
    return out


def decoder_residual_spectrum(vae: VAE, images: np.ndarray) -> np.ndarray:
    """shared.texture.residual_spectrum of (N, T, T) tiles against their reconstructions, clamped to
    [-1, 1] as generated tiles are."""
    return residual_spectrum(images, np.clip(reconstruct(vae, images), -1.0, 1.0))


def product_dict(vae: VAE, unet: UNet, dcfg: DiffusionConfig, scale: float, trained_precision: str,
                 data: dict | None = None, texture_spectrum: np.ndarray | None = None) -> dict:
    c = vae.cfg.latent_channels
    size = TILE // vae.cfg.downsample
    return {
        "format": checkpoint.GENERATOR_FORMAT, "version": 2,
        "vae_config": to_dict(vae.cfg), "vae_weights": vae.state_dict(),
        "unet_config": to_dict(unet.cfg), "unet_weights": unet.state_dict(),
        "diffusion": {**diffusion.Schedule.make(dcfg.schedule).to_config(),
                      "prediction": dcfg.prediction, "cond_dropout": dcfg.cond_dropout},
        "latent_scale": float(scale), "latent_shape": [c, size, size], "tile_size": TILE,
        "normalization": norm_metadata(), "condition": CONDITION_LAYOUT,
        "precision_trained": trained_precision, "data": data,
        **({"texture_spectrum": torch.from_numpy(texture_spectrum)} if texture_spectrum is not None else {}),
    }


def load_generator(path: Path, device: torch.device | None = None,
                   autocast: torch.dtype | None = None) -> Generator:
    device = device or torch.device("cpu")
    saved = checkpoint.load(path, checkpoint.GENERATOR_FORMAT)
    try:
        vae = VAE(from_dict(VAEConfig, saved["vae_config"]))
        unet = UNet(unet_config(saved["unet_config"]))
        d = saved["diffusion"]
        schedule = diffusion.Schedule.from_config(d)
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path}: malformed generator checkpoint ({exc})") from None
    checkpoint.load_weights(vae, saved["vae_weights"], path, "VAE")
    checkpoint.load_weights(unet, saved["unet_weights"], path, "denoiser")
    data = saved.get("data") if isinstance(saved.get("data"), dict) else {}
    pixel_size = PixelSize.from_json(data.get("pixel_size"))  # older checkpoints: unknown
    labelled = (data.get("labelled") or {}).get("path")
    spectrum = saved.get("texture_spectrum")
    return Generator(vae.to(device).eval(), unet.to(device).eval(), schedule, d["prediction"],
                     float(saved["latent_scale"]), device, autocast, pixel_size,
                     Path(labelled) if labelled else None,
                     None if spectrum is None else spectrum.float().numpy())
