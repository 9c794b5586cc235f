"""Building blocks shared by the VAE and the UNet."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice with a skip; an optional time embedding is added after the first conv."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int = 0, dropout: float = 0.0):
        super().__init__()
        self.in_layers = nn.Sequential(norm(c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1))
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, c_out)) if emb_dim else None
        self.out_layers = nn.Sequential(norm(c_out), nn.SiLU(), nn.Dropout(dropout),
                                        nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.in_layers(x)
        if self.emb is not None and emb is not None:
            h = h + self.emb(emb)[:, :, None, None]
        return self.skip(x) + self.out_layers(h)


class Modulation(nn.Module):
    """Spatially-adaptive normalization (SPADE, Park et al. 2019): a parameter-free GroupNorm, then a
    per-pixel scale and shift predicted from the condition at this block's resolution, so the mask
    steers every level of the network, not only its input. Starts as the plain norm (zero init)."""

    def __init__(self, channels: int, cond_channels: int, hidden: int = 32):
        super().__init__()
        self.norm = nn.GroupNorm(min(8, channels), channels, affine=False)
        self.shared = nn.Sequential(nn.Conv2d(cond_channels, hidden, 3, padding=1), nn.SiLU())
        self.scale = nn.Conv2d(hidden, channels, 1)  # the 3x3 shared conv gives the context
        self.shift = nn.Conv2d(hidden, channels, 1)
        for conv in (self.scale, self.shift):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        factor = cond.shape[-1] // x.shape[-1]  # a static int: exports to ONNX as a fixed pooling
        c = F.avg_pool2d(cond, factor) if factor > 1 else cond
        a = self.shared(c.to(x.dtype))
        return self.norm(x) * (1.0 + self.scale(a)) + self.shift(a)


class CondResBlock(nn.Module):
    """ResBlock whose two norms are modulated by the condition (SPADE); time embedding as in ResBlock."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, cond_channels: int, dropout: float = 0.0):
        super().__init__()
        self.norm1, self.norm2 = Modulation(c_in, cond_channels), Modulation(c_out, cond_channels)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, c_out))
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x, cond))) + self.emb(emb)[:, :, None, None]
        return self.skip(x) + self.conv2(self.drop(F.silu(self.norm2(h, cond))))


class Attention(nn.Module):
    """Multi-head self-attention over the pixels of a (small) feature map."""

    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.norm = norm(channels)
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)
        out, _ = self.attn(tokens, tokens, tokens, need_weights=False)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


def downsample(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv (no checkerboard artefacts of transposed convs)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))
