"""Classifier two-sample test: a small CNN, trained from scratch, tells generated tiles from real
held-out ones; its accuracy on a half it never trained on measures realism without downloaded
weights (0.5: indistinguishable to it; 1.0: every tile gives itself away). Lopez-Paz & Oquab, ICLR 2017.

    result = two_sample_accuracy(generated, real)        # (N, H, W) arrays in [-1, 1]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class TwoSampleConfig:
    width: int = 16         # channels of the first conv; doubled at each of the 4 stride-2 levels
    steps: int = 300        # optimizer steps on the training half
    batch_size: int = 32
    learning_rate: float = 1e-3
    seed: int = 0


def critic(width: int) -> nn.Module:
    """4 stride-2 conv levels, global average pooling, one logit: any tile size."""
    layers: list[nn.Module] = []
    channels = 1
    for level in range(4):
        out = width * 2 ** level
        layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1), nn.GroupNorm(4, out), nn.SiLU()]
        channels = out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 1))


def halves(generated: np.ndarray, real: np.ndarray, rng: np.random.Generator
           ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Equal numbers of each kind, shuffled, split in a training and a held-out half (label 1: generated)."""
    n = min(len(generated), len(real))
    if n < 4:
        raise ValueError(f"a two-sample test needs at least 4 tiles of each kind, got {len(generated)} "
                         f"generated and {len(real)} real")
    x = np.concatenate([generated[rng.permutation(len(generated))[:n]], real[rng.permutation(len(real))[:n]]])
    y = np.concatenate([np.ones(n), np.zeros(n)]).astype(np.float32)
    order = rng.permutation(2 * n)
    x, y = x[order].astype(np.float32), y[order]
    cut = n  # half of 2n
    return (x[:cut], y[:cut]), (x[cut:], y[cut:])


def random_dihedral(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """The same flip/rotation for the whole batch: the critic must not learn orientation."""
    x = torch.rot90(x, int(rng.integers(4)), dims=(-2, -1))
    return torch.flip(x, dims=(-1,)) if rng.integers(2) else x


def train_critic(x: np.ndarray, y: np.ndarray, config: TwoSampleConfig) -> nn.Module:
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = critic(config.width)
    optimizer = torch.optim.Adam(model.parameters(), config.learning_rate)
    images, labels = torch.from_numpy(x)[:, None], torch.from_numpy(y)
    model.train()
    for _ in range(config.steps):
        idx = torch.from_numpy(rng.integers(0, len(images), min(config.batch_size, len(images))))
        logits = model(random_dihedral(images[idx], rng))[:, 0]
        loss = nn.functional.binary_cross_entropy_with_logits(logits, labels[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 64) -> float:
    logits = torch.cat([model(torch.from_numpy(x[i:i + batch_size])[:, None])[:, 0]
                        for i in range(0, len(x), batch_size)])
    return float(((logits > 0).float().numpy() == y).mean())


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion."""
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def two_sample_accuracy(generated: np.ndarray, real: np.ndarray,
                        config: TwoSampleConfig = TwoSampleConfig()) -> dict[str, float | int]:
    """Held-out accuracy of a critic trained on the other half, with its 95% Wilson interval."""
    rng = np.random.default_rng(config.seed)
    (x_train, y_train), (x_test, y_test) = halves(np.asarray(generated), np.asarray(real), rng)
    acc = accuracy(train_critic(x_train, y_train, config), x_test, y_test)
    low, high = wilson_interval(round(acc * len(y_test)), len(y_test))
    return {"c2st_accuracy": acc, "c2st_low": low, "c2st_high": high, "c2st_tiles": len(y_test)}
