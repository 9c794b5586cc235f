"""Convolutional VAE: (B, 1, 256, 256) in [-1, 1] <-> (B, C, 256/d, 256/d) latents, d = 8 (or 4).

Full-resolution work is kept thin for CPUs: a pixel-unshuffle stem moves to half resolution first
(4 channels of 128x128, lossless), and the decoder ends with a pixel shuffle back to 256x256.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from generation_torch.config import VAEConfig
from generation_torch.layers import ResBlock, Upsample, downsample, norm


class Encoder(nn.Module):
    """image (B, 1, H, W) -> moments (B, 2C, H/d, W/d): posterior mean and log-variance, stacked."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        widths = cfg.channels[: cfg.levels]
        self.stem = nn.Sequential(nn.PixelUnshuffle(2), nn.Conv2d(4, widths[0], 3, padding=1))
        layers: list[nn.Module] = []
        for i, c in enumerate(widths):
            layers.append(ResBlock(c, c))
            if i + 1 < len(widths):
                layers.append(downsample(c, widths[i + 1]))
        layers += [ResBlock(widths[-1], widths[-1]), norm(widths[-1]), nn.SiLU(),
                   nn.Conv2d(widths[-1], 2 * cfg.latent_channels, 3, padding=1)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.stem(x))


class Decoder(nn.Module):
    """latent (B, C, h, w) -> image (B, 1, h*d, w*d) in normalized space (not clamped)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        widths = list(reversed(cfg.channels[: cfg.levels]))
        layers: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, widths[0], 3, padding=1),
                                   ResBlock(widths[0], widths[0])]
        for i, c in enumerate(widths):
            layers.append(ResBlock(c, c))
            if i + 1 < len(widths):
                layers.append(Upsample(c, widths[i + 1]))
        layers += [norm(widths[-1]), nn.SiLU(), nn.Conv2d(widths[-1], 4, 3, padding=1), nn.PixelShuffle(2)]
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(z)


class VAE(nn.Module):
    def __init__(self, cfg: VAEConfig | None = None):
        cfg = cfg or VAEConfig()
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, logvar) of the posterior; logvar clamped as in LDM for numerical safety."""
        mean, logvar = self.encoder(x).float().chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruction, posterior mean and logvar (one reparameterized sample is decoded)."""
        mean, logvar = self.encode(x)
        z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=generator, device=mean.device)
        return self.decoder(z), mean, logvar


def spectral_loss(x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """Mean |log(1 + |F recon|) - log(1 + |F x|)| over every 2D frequency of every tile: amplitude
    only, so it asks for EM's high-frequency texture without asking for its exact phase (MSE alone
    averages that texture away: its optimum under uncertainty is the blurred mean)."""
    amplitude = lambda img: torch.log1p(torch.fft.rfft2(img.float(), norm="ortho").abs())  # noqa: E731
    return (amplitude(recon) - amplitude(x)).abs().mean()


def vae_loss(x: torch.Tensor, recon: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor,
             beta: float, spectral_weight: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(MSE + beta * KL + spectral_weight * spectral loss, MSE); KL to N(0, 1) averaged per latent
    element so beta is size-independent."""
    mse = F.mse_loss(recon.float(), x.float())
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
    loss = mse + beta * kl
    if spectral_weight:
        loss = loss + spectral_weight * spectral_loss(x, recon)
    return loss, mse
