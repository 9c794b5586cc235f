"""Presets: flag values that fit a data size and a time budget. Explicit flags always win.

quick  the built-in phantom on 2 CPU cores: VAE + diffusion + sampling in a few minutes.
real   the EPFL CA1 subset (264 training tiles) on 2 CPU cores, about an hour (VAE 35 min, latent
       cache ~2 min, diffusion 25 min, by time boxes; see docs/generator.md).
       Downsampling 4 (latent 4x64x64): at 8 the 4x32x32 latent cannot carry these noisy images to
       the required reconstruction MSE <= 0.005 (a linear 16x compression alone is at 0.0066).
full   a GPU run to convergence: wider and deeper models, many more steps, no time boxes.
none   the plain defaults (SGD with momentum + cosine schedule).

The denoiser's epoch is 50 steps in the real preset, not one pass: a few labelled slices are only
96 latents (12 tiles x 8 flips), and validating and checkpointing every 6 steps cost a third of the
time box and let patience run out after 90 steps.

Both presets pick AdamW: for these small models SGD + momentum needed many more steps to the same
loss, which a CPU budget cannot afford (SGD stays the default optimizer outside the presets).
"""

from __future__ import annotations

from generation_torch.config import (
    DiffusionStage,
    OptimConfig,
    StageConfig,
    Stages,
    UNetConfig,
    VAEConfig,
    VAEStage,
)


def adamw(lr: float, warmup_steps: int) -> OptimConfig:
    return OptimConfig(optimizer="adamw", lr=lr, warmup_steps=warmup_steps)


PRESETS: dict[str, Stages] = {
    "quick": Stages(
        VAEStage(VAEConfig(downsample=8, channels=(16, 32, 64)),
                 StageConfig(steps=200, batch_size=8, patience=30, optim=adamw(2e-3, 20)), beta=1e-5),
        DiffusionStage(UNetConfig(channels=(32, 64, 64), blocks=1, time_dims=(64, 128, 256), heads=2),
                       StageConfig(steps=400, batch_size=24, patience=30, ema_decay=0.995,
                                   optim=adamw(1e-3, 20)))),
    "real": Stages(
        VAEStage(VAEConfig(downsample=4, channels=(48, 96)),
                 StageConfig(steps=3000, batch_size=8, patience=15, optim=adamw(1e-3, 100)), beta=1e-5,
                 minutes=35.0),  # time boxes: about an hour on 2 CPU cores
        DiffusionStage(UNetConfig(channels=(32, 64, 128, 128), blocks=1, time_dims=(192, 384, 768), heads=4),
                       StageConfig(steps=3000, batch_size=16, steps_per_epoch=50, patience=15,
                                   ema_decay=0.999, optim=adamw(4e-4, 100)), minutes=25.0)),
    # a GPU: the real preset's architecture wider and deeper, trained to convergence (no time boxes;
    # hours on one GPU, days on 2 CPU cores)
    "full": Stages(
        VAEStage(VAEConfig(downsample=4, channels=(64, 128)),
                 StageConfig(steps=40000, batch_size=16, patience=20, optim=adamw(1e-3, 500)), beta=1e-5),
        DiffusionStage(UNetConfig(channels=(64, 128, 256, 256), blocks=2, time_dims=(256, 512, 1024),
                                  heads=8),
                       StageConfig(steps=100000, batch_size=32, patience=30, ema_decay=0.9999,
                                   optim=adamw(2e-4, 1000)))),
    "none": Stages(),
}


def default_preset(has_data_flags: bool) -> str:
    return "real" if has_data_flags else "quick"
