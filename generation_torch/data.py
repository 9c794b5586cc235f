"""Tiles in memory, dihedral transforms, and the latent cache (encoded once, 8 dihedral variants)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from shared.errors import UserError
from shared.store import TileStore, refuse_partial_annotations


def load_split(store: TileStore, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 1, T, T) float32 in [-1, 1], masks (N, 1, T, T) float32 in {0, 1})."""
    refuse_partial_annotations(store, "the generator (its masks condition every pixel)")
    images = load_images(store, split)
    masks = torch.from_numpy(store.masks(store.indices(split)).astype(np.float32))[:, None]
    return images, masks


def load_images(store: TileStore, split: str) -> torch.Tensor:
    """Images only (N, 1, T, T), e.g. of an unlabelled store whose masks are ignored."""
    idx = store.indices(split)
    if len(idx) == 0:
        raise UserError(f"{store.path}: no '{split}' tiles")
    return torch.from_numpy(store.images(idx))[:, None]


def store_identity(store: TileStore | None, split: str = "train") -> dict[str, Any] | None:
    """What a latent cache was encoded from: the resolved store path, its tile count and a hash of
    the split's records (chunk files are immutable, so the records pin the pixels)."""
    if store is None:
        return None
    idx = store.indices(split)
    records = json.dumps([store.records[i] for i in idx], sort_keys=True, default=str)
    return {"path": str(store.path.resolve()), "tiles": len(idx),
            "records_sha256": hashlib.sha256(records.encode()).hexdigest()[:16]}


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th of the 8 symmetries of the square (k = 0..7) on the last two axes: shared.tiling.dihedral
    for tensors (its test checks the two agree)."""
    x = torch.rot90(x, k % 4, dims=(-2, -1))
    return torch.flip(x, dims=(-1,)) if k >= 4 else x


@dataclass
class LatentCache:
    """Posterior mean and std of every training tile under all 8 dihedral transforms, with the masks
    transformed alike (full resolution is not needed: the condition is the area-averaged mask)."""

    mean: torch.Tensor   # (M, C, h, w)
    std: torch.Tensor    # (M, C, h, w)
    cond: torch.Tensor   # (M, 2, h, w), see unet.mask_condition

    def __len__(self) -> int:
        return self.mean.shape[0]

    def draw(self, idx: torch.Tensor, generator: torch.Generator, scale: float) -> torch.Tensor:
        """Scaled latent samples for rows idx."""
        return scaled_sample(self.mean[idx], self.std[idx], generator, scale)

    def to_dict(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean, "std": self.std, "cond": self.cond}

    @classmethod
    def from_dict(cls, saved: dict[str, torch.Tensor]) -> LatentCache:
        return cls(saved["mean"], saved["std"], saved["cond"])


def draw_pooled(first: LatentCache, second: LatentCache | None, idx: torch.Tensor, generator: torch.Generator,
                scale: float) -> torch.Tensor:
    """LatentCache.draw over the rows of `first` followed by those of `second` (rows >= len(first))."""
    if second is None:
        return first.draw(idx, generator, scale)
    own = idx < len(first)
    mean = torch.empty((len(idx), *first.mean.shape[1:]), dtype=first.mean.dtype)
    std = torch.empty_like(mean)
    mean[own], std[own] = first.mean[idx[own]], first.std[idx[own]]
    other = idx[~own] - len(first)
    mean[~own], std[~own] = second.mean[other], second.std[other]
    return scaled_sample(mean, std, generator, scale)


def scaled_sample(mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator, scale: float
                  ) -> torch.Tensor:
    """z = scale * (mean + std * n), n ~ N(0, 1): a draw from the cached posterior."""
    return scale * (mean + std * torch.randn(mean.shape, generator=generator))


@torch.no_grad()
def encode_all(encode, images: torch.Tensor, masks: torch.Tensor | None, batch_size: int,
               transforms: int = 8) -> LatentCache:
    """Run encode(x) -> (mean, logvar) once over every tile under `transforms` dihedral variants.
    masks None (unlabelled images): every condition is the null condition (all zeros)."""
    # local import: keeps data.py free of model imports
    from generation_torch.unet import COND_CHANNELS, mask_condition

    means, stds, conds = [], [], []
    for k in range(transforms):
        for start in range(0, len(images), batch_size):
            x = dihedral(images[start:start + batch_size], k)
            mean, logvar = encode(x)
            means.append(mean.float())
            stds.append(torch.exp(0.5 * logvar.float()))
            if masks is None:
                conds.append(torch.zeros(len(mean), COND_CHANNELS, *mean.shape[-2:]))
            else:
                conds.append(mask_condition(dihedral(masks[start:start + batch_size], k), mean.shape[-1]))
    return LatentCache(torch.cat(means), torch.cat(stds), torch.cat(conds))


def latent_scale(cache: LatentCache, extra: LatentCache | None = None) -> float:
    """1 / std of the training latents (posterior means, of both caches when an unlabelled one is
    given: the denoiser sees both), so scaled latents have unit variance."""
    mean = cache.mean if extra is None else torch.cat([cache.mean, extra.mean])
    return float(1.0 / mean.float().std().clamp_min(1e-6))
