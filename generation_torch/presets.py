"""Presets: flag values that fit a data size and a time budget. Explicit flags always win.

quick  the built-in phantom on 2 CPU cores: VAE + diffusion + sampling in a few minutes.
real   the EPFL CA1 subset (264 training tiles) on 2 CPU cores, about an hour (VAE 35 min, latent
       cache ~2 min, diffusion 25 min, by time boxes; see README).
       Downsampling 4 (latent 4x64x64): at 8 the 4x32x32 latent cannot carry these noisy images to
       the required reconstruction MSE <= 0.005 (a linear 16x compression alone is at 0.0066).
none   the plain defaults (SGD with momentum + cosine schedule).

Both presets pick AdamW: for these small models SGD + momentum needed many more steps to the same
loss, which a CPU budget cannot afford (SGD stays the default optimizer outside the presets).
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "downsample": 8, "vae_channels": (16, 32, 64), "beta": 1e-5,
        "vae_steps": 200, "vae_batch_size": 8, "vae_lr": 2e-3,
        "unet_channels": (32, 64, 64), "unet_blocks": 1, "time_dims": (64, 128, 256), "heads": 2,
        "diffusion_steps": 400, "diffusion_batch_size": 24, "diffusion_lr": 1e-3,
        "optimizer": "adamw", "warmup_steps": 20, "ema_decay": 0.995, "patience": 30,
    },
    "real": {
        "downsample": 4, "vae_channels": (48, 96), "beta": 1e-5,
        "vae_steps": 3000, "vae_batch_size": 8, "vae_lr": 1e-3,
        "unet_channels": (32, 64, 128, 128), "unet_blocks": 1, "time_dims": (192, 384, 768), "heads": 4,
        "diffusion_steps": 3000, "diffusion_batch_size": 16, "diffusion_lr": 4e-4,
        "optimizer": "adamw", "warmup_steps": 100, "ema_decay": 0.999, "patience": 15,
        "vae_minutes": 35.0, "diffusion_minutes": 25.0,  # time boxes: about an hour on 2 CPU cores
    },
    "none": {},
}


def default_preset(has_data_flags: bool) -> str:
    return "real" if has_data_flags else "quick"
