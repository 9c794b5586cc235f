"""Tiles in memory, dihedral transforms, and the latent cache (encoded once, 8 dihedral variants)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from shared.errors import UserError
from shared.store import TileStore


def load_split(store: TileStore, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 1, T, T) float32 in [-1, 1], masks (N, 1, T, T) float32 in {0, 1})."""
    idx = store.indices(split)
    if len(idx) == 0:
        raise UserError(f"{store.path}: no '{split}' tiles")
    images = torch.from_numpy(store.images(idx))[:, None]
    masks = torch.from_numpy(store.masks(idx).astype(np.float32))[:, None]
    return images, masks


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th of the 8 symmetries of the square (k = 0..7) on the last two axes."""
    x = torch.rot90(x, k % 4, dims=(-2, -1))
    return torch.flip(x, dims=(-1,)) if k >= 4 else x


def dihedral_np(x: np.ndarray, k: int) -> np.ndarray:
    x = np.rot90(x, k % 4, axes=(-2, -1))
    return np.ascontiguousarray(x[..., ::-1] if k >= 4 else x)


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
        """Scaled latent samples z = scale * (mean + std * n) for rows idx."""
        noise = torch.randn(self.mean[idx].shape, generator=generator)
        return scale * (self.mean[idx] + self.std[idx] * noise)

    def to_dict(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean, "std": self.std, "cond": self.cond}


@torch.no_grad()
def encode_all(encode, images: torch.Tensor, masks: torch.Tensor, batch_size: int,
               transforms: int = 8) -> LatentCache:
    """Run encode(x) -> (mean, logvar) once over every tile under `transforms` dihedral variants."""
    from generation_torch.unet import mask_condition  # local: keeps data.py free of model imports

    means, stds, conds = [], [], []
    for k in range(transforms):
        for start in range(0, len(images), batch_size):
            x = dihedral(images[start:start + batch_size], k)
            mean, logvar = encode(x)
            means.append(mean.float())
            stds.append(torch.exp(0.5 * logvar.float()))
            conds.append(mask_condition(dihedral(masks[start:start + batch_size], k), mean.shape[-1]))
    return LatentCache(torch.cat(means), torch.cat(stds), torch.cat(conds))


def latent_scale(cache: LatentCache) -> float:
    """1 / std of the training latents (posterior means), so scaled latents have unit variance."""
    return float(1.0 / cache.mean.float().std().clamp_min(1e-6))
