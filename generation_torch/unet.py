"""The latent denoiser: a UNet with residual blocks, a sinusoidal timestep embedding through an MLP
that widens in steps, and self-attention only at the lowest resolution.

    denoiser(x_t, cond, t) -> eps (or v)
      x_t  (B, C, h, w) float32  noisy latent (scaled by the latent scale factor)
      cond (B, 2, h, w) float32  channel 0: the mask area-averaged to latent resolution (in [0, 1]),
                                 channel 1: 1 = conditioned, 0 = null condition (both channels 0)
      t    (B,)         float32  integer timesteps 0..T-1 stored as floats
The condition is concatenated to x_t at the input (see `mask_condition`, `null_condition`) and, with
`mask_every_level` (the default), also modulates the norms of every residual block (SPADE), so the
mask steers each resolution; checkpoints of version 1 are input-only and still load.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from generation_torch.config import UNetConfig
from generation_torch.layers import Attention, CondResBlock, ResBlock, Upsample, downsample, norm

COND_CHANNELS = 2


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (B,) -> (B, dim): cos then sin at geometric frequencies."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def mask_condition(mask: torch.Tensor, latent_size: int) -> torch.Tensor:
    """Full-resolution masks (B, H, W) or (B, 1, H, W) in {0, 1} -> condition (B, 2, h, w):
    the area-averaged mask and a channel of ones ("condition present")."""
    if mask.dim() == 3:
        mask = mask[:, None]
    small = F.adaptive_avg_pool2d(mask.float(), latent_size)
    return torch.cat([small, torch.ones_like(small)], dim=1)


def null_condition(cond: torch.Tensor) -> torch.Tensor:
    """The unconditional input for classifier-free guidance: all zeros (presence channel 0)."""
    return torch.zeros_like(cond)


class UNet(nn.Module):
    def __init__(self, cfg: UNetConfig | None = None):
        cfg = cfg or UNetConfig()
        super().__init__()
        self.cfg = cfg
        sin_dim, hidden, emb = cfg.time_dims
        self.time_mlp = nn.Sequential(nn.Linear(sin_dim, hidden), nn.SiLU(), nn.Linear(hidden, emb))
        ch = cfg.channels

        def block(c_in: int, c_out: int, dropout: float = 0.0) -> nn.Module:
            if cfg.mask_every_level:
                return CondResBlock(c_in, c_out, emb, COND_CHANNELS, dropout)
            return ResBlock(c_in, c_out, emb, dropout)

        self.stem = nn.Conv2d(cfg.in_channels + COND_CHANNELS, ch[0], 3, padding=1)
        self.down = nn.ModuleList()
        skips = [ch[0]]
        c = ch[0]
        for level, width in enumerate(ch):
            for _ in range(cfg.blocks):
                self.down.append(block(c, width, cfg.dropout))
                c = width
                skips.append(c)
            if level + 1 < len(ch):
                self.down.append(downsample(c, c))
                skips.append(c)
        self.mid = nn.ModuleList([block(c, c), Attention(c, cfg.heads), block(c, c)])
        self.up = nn.ModuleList()
        for level, width in reversed(list(enumerate(ch))):
            for _ in range(cfg.blocks + 1):
                self.up.append(block(c + skips.pop(), width, cfg.dropout))
                c = width
            if level == len(ch) - 1:
                self.up.append(Attention(c, cfg.heads))  # lowest resolution only
            if level > 0:
                self.up.append(Upsample(c, c))
        self.head = nn.Sequential(norm(c), nn.SiLU(), nn.Conv2d(c, cfg.in_channels, 3, padding=1))
        nn.init.zeros_(self.head[-1].weight)  # start as "predict zero": a stable first step
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, x_t: torch.Tensor, cond: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.cfg.time_dims[0]))
        h = self.stem(torch.cat([x_t, cond.to(x_t.dtype)], dim=1))

        def apply(layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
            if isinstance(layer, CondResBlock):
                return layer(h, emb, cond)
            return layer(h, emb) if isinstance(layer, ResBlock) else layer(h)

        hs = [h]
        for layer in self.down:
            h = apply(layer, h)
            hs.append(h)
        for layer in self.mid:
            h = apply(layer, h)
        for layer in self.up:
            h = apply(layer, torch.cat([h, hs.pop()], dim=1)) if isinstance(layer, ResBlock | CondResBlock) \
                else layer(h)
        return self.head(h)
