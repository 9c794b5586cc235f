"""The two training stages as Tasks for train_loop.fit: what a step computes, how validation is
measured, what TensorBoard shows."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from generation_torch import grids
from generation_torch.config import T_SAMPLINGS, DiffusionConfig, to_dict
from generation_torch.data import LatentCache, dihedral, draw_pooled
from generation_torch.pipeline import Generator
from generation_torch.unet import UNet
from generation_torch.vae import VAE, vae_loss
from shared import diffusion
from shared.sampling import SamplerSettings

VAL_SEED = 1234  # validation draws the same t and noise every epoch, so epochs compare
# noise bands of the denoiser's validation loss, as fractions of T: the uniform mean is dominated by
# high-t error that no training removes, while structure is invented at mid t (bench.latent_stats)
VAL_BANDS = (0.0, 0.3, 0.7, 1.0)
# the t range of each validation selection (DiffusionConfig.val_selection), as fractions of T: the
# bands' edges
_LOW, _MID, _HIGH, _END = VAL_BANDS
SELECTION_RANGES = {"all": (_LOW, _END), "low": (_LOW, _MID), "mid": (_MID, _HIGH), "high": (_HIGH, _END),
                    "low-mid": (_LOW, _HIGH)}


@dataclass
class VAETask:
    model: VAE
    train_images: torch.Tensor   # (N, 1, T, T)
    val_images: torch.Tensor
    beta: float
    device: torch.device
    spectral_weight: float = 0.0
    name: str = "vae"
    use_ema: bool = False
    fields_added: ClassVar[dict] = {"spectral_weight": 0.0}

    @property
    def n_train(self) -> int:
        return len(self.train_images)

    def loss(self, model: nn.Module, g: torch.Generator, batch_size: int) -> tuple[torch.Tensor, dict]:
        idx = torch.randint(0, self.n_train, (batch_size,), generator=g)
        k = int(torch.randint(0, 8, (1,), generator=g))  # a random dihedral transform per batch
        x = dihedral(self.train_images[idx], k).to(self.device)
        recon, mean, logvar = model(x, generator=g)
        loss, mse = vae_loss(x, recon, mean, logvar, self.beta, self.spectral_weight)
        return loss, {"train_mse": float(mse.detach())}

    def validate(self, model: nn.Module) -> tuple[float, dict[str, float]]:
        """Reconstruction MSE of the posterior mean on the validation tiles (normalized space)."""
        total = 0.0
        for start in range(0, len(self.val_images), 16):
            x = self.val_images[start:start + 16].to(self.device)
            mean, _ = model.encode(x)
            total += float(F.mse_loss(model.decoder(mean).float(), x, reduction="sum"))
        return total / self.val_images.numel(), {}

    def visuals(self, model: nn.Module, writer: Any, step: int) -> None:
        x = self.val_images[:4].to(self.device)
        recon = model.decoder(model.encode(x)[0])
        grid = grids.pair_grid(grids.to_unit(x[:, 0]), grids.to_unit(recon[:, 0]), columns=2)
        writer.add_image("vae/reconstructions", grid[None], step)

    def describe(self) -> dict:
        return {"vae_config": to_dict(self.model.cfg), "beta": self.beta,
                "spectral_weight": self.spectral_weight}


def draw_timesteps(n: int, timesteps: int, kind: str, g: torch.Generator) -> torch.Tensor:
    """n integer training timesteps in [0, timesteps): uniform, or logit-normal, floor(sigmoid(u) * T)
    for u standard normal (t = T / 2 at u = 0; 60% of draws in [0.3 T, 0.7 T) against 40% uniform)."""
    if kind == "uniform":
        return torch.randint(0, timesteps, (n,), generator=g)
    if kind == "logit-normal":
        u = torch.randn(n, generator=g, dtype=torch.float64)
        return (torch.sigmoid(u) * timesteps).long().clamp_max(timesteps - 1)
    raise ValueError(f"unknown timestep sampling {kind!r} (choose from {', '.join(T_SAMPLINGS)})")


def band_means(values: torch.Tensor, t: torch.Tensor, timesteps: int) -> dict[str, float]:
    """Mean of values per noise band of t (VAL_BANDS of `timesteps`), keyed "val_loss_t<lo>-<hi>"
    with inclusive integer ends; bands no t falls in are left out."""
    edges = [round(f * timesteps) for f in VAL_BANDS]
    out = {}
    for lo, hi in itertools.pairwise(edges):
        if (mean := range_mean(values, t, lo, hi)) is not None:
            out[f"val_loss_t{lo}-{hi - 1}"] = mean
    return out


def range_mean(values: torch.Tensor, t: torch.Tensor, lo: int, hi: int) -> float | None:
    """Mean of the values whose t lies in [lo, hi); None where none does."""
    inside = (t >= lo) & (t < hi)
    return float(values[inside].mean()) if bool(inside.any()) else None


def selected_loss(values: torch.Tensor, t: torch.Tensor, timesteps: int, selection: str) -> float:
    """The validation loss a selection (SELECTION_RANGES) picks weights by: the mean over its t range,
    the mean over every t where no validation draw falls in the range (a tiny validation set)."""
    lo, hi = (round(f * timesteps) for f in SELECTION_RANGES[selection])
    mean = range_mean(values, t, lo, hi)
    return float(values.mean()) if mean is None else mean


@dataclass
class DiffusionTask:
    model: UNet
    cache: LatentCache           # training latents (8 dihedral variants)
    val_cache: LatentCache       # validation latents (identity transform)
    schedule: diffusion.Schedule
    dcfg: DiffusionConfig
    scale: float
    vae: VAE                     # only for decoding TensorBoard samples
    device: torch.device
    autocast: torch.dtype | None = None
    val_masks: torch.Tensor | None = None   # (N, T, T) full-resolution validation masks, for visuals
    unlabelled: LatentCache | None = None   # latents of unlabelled images (null condition only)
    name: str = "diffusion"
    use_ema: bool = True
    # what describe()'s fields added later were before they existed (stages saved then resume)
    fields_added: ClassVar[dict] = {"diffusion": {"t_sampling": "uniform", "val_selection": "all"},
                                    "unet_config": {"mask_every_level": False}}
    _coef: tuple[torch.Tensor, torch.Tensor] = field(init=False)

    def __post_init__(self) -> None:
        a, s = self.schedule.coefficients(torch.arange(self.schedule.timesteps).numpy())
        self._coef = (torch.tensor(a, dtype=torch.float32), torch.tensor(s, dtype=torch.float32))

    @property
    def n_train(self) -> int:
        return len(self.cache)

    def noisy_batch(self, z0: torch.Tensor, g: torch.Generator, t_sampling: str = "uniform"
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x_t, t, target, loss weight per sample) for clean scaled latents z0, t (drawn by
        `t_sampling`) and noise from g."""
        t = draw_timesteps(len(z0), self.schedule.timesteps, t_sampling, g)
        noise = torch.randn(z0.shape, generator=g)
        a, s = (c[t][:, None, None, None] for c in self._coef)
        x_t = diffusion.q_sample(z0, noise, a, s)
        weight = diffusion.loss_weight(a[:, 0, 0, 0], s[:, 0, 0, 0], self.dcfg.prediction,
                                       self.dcfg.min_snr_gamma)
        return x_t, t, diffusion.target_for(z0, noise, a, s, self.dcfg.prediction), torch.as_tensor(weight)

    def batch(self, g: torch.Generator, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(z0, cond): rows given the null condition (so classifier-free guidance works at sampling)
        draw from labelled and unlabelled latents alike, conditioned rows from labelled ones only."""
        drop = torch.rand(batch_size, generator=g) < self.dcfg.cond_dropout
        idx = torch.randint(0, self.n_train, (batch_size,), generator=g)
        if self.unlabelled is not None:
            pooled = torch.randint(0, self.n_train + len(self.unlabelled), (batch_size,), generator=g)
            idx = torch.where(drop, pooled, idx)
        z0 = draw_pooled(self.cache, self.unlabelled, idx, g, self.scale)
        cond = self.cache.cond[idx.clamp_max(self.n_train - 1)].clone()  # rows past it are dropped
        cond[drop] = 0.0
        return z0, cond

    def loss(self, model: nn.Module, g: torch.Generator, batch_size: int) -> tuple[torch.Tensor, dict]:
        z0, cond = self.batch(g, batch_size)
        x_t, t, target, weight = self.noisy_batch(z0, g, self.dcfg.t_sampling)
        pred = model(x_t.to(self.device), cond.to(self.device), t.float().to(self.device))
        per_sample = (pred.float() - target.to(self.device)).square().mean(dim=(1, 2, 3))
        return (weight.to(self.device) * per_sample).mean(), {}

    def validate(self, model: nn.Module) -> tuple[float, dict[str, float]]:
        """Plain MSE of the prediction over validation latents at fixed draws of t and noise (uniform
        t) over the t range of dcfg.val_selection, and beside it the same per noise band (VAL_BANDS),
        e.g. {"val_loss_t300-699": ...}, and over every t ("val_loss_all") where a band selects."""
        g = torch.Generator().manual_seed(VAL_SEED)
        errors, steps = [], []
        for start in range(0, len(self.val_cache), 32):
            rows = torch.arange(start, min(start + 32, len(self.val_cache)))
            z0 = self.scale * self.val_cache.mean[rows]
            x_t, t, target, _ = self.noisy_batch(z0, g)  # validation stays the plain MSE
            pred = model(x_t.to(self.device), self.val_cache.cond[rows].to(self.device),
                         t.float().to(self.device))
            errors.append((pred.float() - target.to(self.device)).square().mean(dim=(1, 2, 3)).cpu())
            steps.append(t)
        per_sample, t = torch.cat(errors).double(), torch.cat(steps)
        bands = band_means(per_sample, t, self.schedule.timesteps)
        selection = self.dcfg.val_selection
        if selection == "all":
            return float(per_sample.mean()), bands
        return (selected_loss(per_sample, t, self.schedule.timesteps, selection),
                {**bands, "val_loss_all": float(per_sample.mean())})

    def visuals(self, model: nn.Module, writer: Any, step: int) -> None:
        if self.val_masks is None:
            return
        full = self.val_masks[:4].float()
        gen = Generator(self.vae, model, self.schedule, self.dcfg.prediction, self.scale, self.device,
                        self.autocast)
        images = gen.generate(full, SamplerSettings("ddim", steps=20), seed=0)
        grid = grids.pair_grid(grids.to_unit(images[:, 0]), full.numpy(), columns=2)
        writer.add_image("diffusion/samples_beside_masks", grid[None], step)

    def describe(self) -> dict:
        return {"unet_config": to_dict(self.model.cfg), "diffusion": to_dict(self.dcfg),
                "latent_scale": self.scale,
                "unlabelled_latents": 0 if self.unlabelled is None else len(self.unlabelled)}
