"""How tiles are sampled, identically in PyTorch (generation_torch) and onnxruntime (exporters):
the sampler settings with their one set of defaults and flags, and one seeded noise stream per tile.

    settings = settings_from_args(args)            # at the CLI edge (after add_sampler_flags)
    noise = TileNoise(tile_seeds(seed, start, n))  # tile i of a request draws from seed * 1_000_003 + i
    x_T = noise.draw(latent_shape)                 # then noise.draw(...) again per stochastic step

Each tile owns its generator (as NVlabs/edm's StackedRandomGenerator), so a tile is the same whatever
batch it is drawn in and whichever path draws it. numpy draws the noise in both paths.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from shared import diffusion
from shared.errors import non_negative_float, positive_int, unit_interval

# 2, not 1: the generators are trained with condition dropout for classifier-free guidance, and every
# figure in the README (realism, ablation) was drawn at 2; at 1 tiles follow their masks even less.
GUIDANCE = 2.0
TILE_SEED_STRIDE = 1_000_003  # tile i of a request with seed s draws from s * stride + i


@dataclass(frozen=True)
class SamplerSettings:
    sampler: str = "ddim"
    steps: int | None = None          # None: the sampler's default (diffusion.DEFAULT_STEPS)
    eta: float = 0.0                  # DDIM noise: 0 deterministic, 1 = DDPM variance
    guidance: float = GUIDANCE        # classifier-free guidance scale (1 = conditional model only)
    guidance_rescale: float = 0.0     # 0-1, see diffusion.guided
    unconditional: bool = False       # ignore the masks (null condition)
    texture: float = 0.0              # share of the decoder's residual power added back (shared.texture;
    #                                   0: the decoded mean, 1: all of it)
    strength: float = 1.0             # (0, 1]: 1 draws from pure noise; below 1 the walk starts from a
    #                                   real tile noised that far (diffusion.partial_timesteps: SDEdit)

    def __post_init__(self) -> None:
        if self.sampler not in diffusion.SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(diffusion.SAMPLERS)}, got {self.sampler!r}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be in [1, {diffusion.TIMESTEPS}], got {self.steps}")
        if not 0.0 <= self.guidance_rescale <= 1.0:
            raise ValueError(f"guidance_rescale must be in [0, 1], got {self.guidance_rescale}")
        if self.texture < 0:
            raise ValueError(f"texture must be >= 0, got {self.texture}")
        if not 0.0 < self.strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {self.strength}")

    def steps_for(self, timesteps: int) -> int:
        """The steps to walk on a schedule of `timesteps` (the sampler's default when unset)."""
        steps = diffusion.DEFAULT_STEPS[self.sampler] if self.steps is None else self.steps
        if steps > timesteps:
            raise ValueError(f"steps must be in [1, {timesteps}], got {steps}")
        return steps

    @property
    def scale(self) -> float:
        """The guidance scale actually applied: 0 (null condition only) when unconditional."""
        return 0.0 if self.unconditional else self.guidance

    def provenance(self) -> dict[str, object]:
        """What a synthetic tile's record says about how it was drawn."""
        drawn = {"sampler": self.sampler, "steps": self.steps_for(diffusion.TIMESTEPS), "eta": self.eta,
                 "guidance": self.scale, "guidance_rescale": self.guidance_rescale, "texture": self.texture}
        return {**drawn, "strength": self.strength} if self.strength < 1.0 else drawn


def add_sampler_flags(parser: argparse.ArgumentParser) -> None:
    """--sampler --steps --eta --guidance --guidance-rescale --unconditional (SamplerSettings defaults)."""
    d = SamplerSettings()
    steps = ", ".join(f"{k} {v}" for k, v in diffusion.DEFAULT_STEPS.items())
    parser.add_argument("--sampler", choices=diffusion.SAMPLERS, default=d.sampler,
                        help="ddpm, ddim, dpmpp2m (DPM-Solver++ 2M)")
    parser.add_argument("--steps", type=positive_int, help=f"sampler steps (default: {steps})")
    parser.add_argument("--eta", type=float, default=d.eta,
                        help="DDIM noise: 0 deterministic, 1 = DDPM variance")
    parser.add_argument("--guidance", type=float, default=d.guidance,
                        help=f"classifier-free guidance scale (default {d.guidance}; 1 = conditional only)")
    parser.add_argument("--guidance-rescale", type=unit_interval, default=d.guidance_rescale,
                        help="0-1: rescale the guided prediction to the conditional one's std (tames the "
                             "over-saturated contrast of large guidance; Lin et al. 2024 use 0.7); 0 = off")
    parser.add_argument("--unconditional", action="store_true", help="ignore the masks (null condition)")
    parser.add_argument("--texture", type=non_negative_float, default=d.texture,
                        help="add back this share of the texture the VAE decoder cannot predict (noise "
                             "with the spectrum of its training residuals; 1 = all of it, 0 = off)")
    parser.add_argument("--strength", type=strength_value, default=d.strength,
                        help="(0, 1]: below 1, start each tile from a real tile noised this far along the "
                             "sampler's walk and run its remaining steps (SDEdit): the real tile's layout "
                             "stays, details are drawn anew; 1 = from pure noise (default)")


def settings_from_args(args: argparse.Namespace) -> SamplerSettings:
    return SamplerSettings(args.sampler, args.steps, args.eta, args.guidance, args.guidance_rescale,
                           args.unconditional, args.texture, args.strength)


def settings_to_flags(settings: SamplerSettings) -> list[str]:
    """The command-line flags that give these settings (the inverse of settings_from_args), for
    benchmarks that run the CLIs as subprocesses."""
    flags = ["--sampler", settings.sampler, "--eta", str(settings.eta), "--guidance", str(settings.guidance),
             "--guidance-rescale", str(settings.guidance_rescale)]
    flags += ["--steps", str(settings.steps)] if settings.steps is not None else []
    flags += ["--texture", str(settings.texture)] if settings.texture else []
    flags += ["--strength", str(settings.strength)] if settings.strength < 1.0 else []
    return flags + (["--unconditional"] if settings.unconditional else [])


def strength_value(text: str) -> float:
    """--strength: a number in (0, 1]."""
    value = unit_interval(text)
    if value == 0.0:
        raise argparse.ArgumentTypeError("must be above 0 (0 would leave the real tile unchanged)")
    return value


def tile_seeds(seed: int, start: int, count: int) -> list[int]:
    """The seeds of tiles start .. start + count - 1 of a request with `seed` (>= 0)."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return [seed * TILE_SEED_STRIDE + i for i in range(start, start + count)]


class TileNoise:
    """Standard normal float32 noise with one numpy generator per tile: row i of every draw comes from
    tile i's own stream."""

    def __init__(self, seeds: Sequence[int]):
        self.rngs = [np.random.default_rng(int(s)) for s in seeds]

    def draw(self, shape: Sequence[int]) -> np.ndarray:
        """(tiles, *shape) noise: the next `shape` draw of each tile's stream."""
        return np.stack([rng.standard_normal(tuple(shape), dtype=np.float32) for rng in self.rngs])
