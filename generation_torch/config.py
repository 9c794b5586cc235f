"""Typed configurations with defaults; the CLI (cli_args.py) fills them from presets and flags.
No torch import: flags become configs without loading PyTorch."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any


@dataclass(frozen=True)
class VAEConfig:
    latent_channels: int = 4
    downsample: int = 8                            # 8 -> 32x32 latents for 256 tiles, 4 -> 64x64
    channels: tuple[int, ...] = (32, 64, 128)      # per level; level 0 is at half resolution (thin)

    @property
    def levels(self) -> int:
        return {4: 2, 8: 3}[self.downsample]


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 4                           # latent channels (the 2 condition channels are added)
    channels: tuple[int, ...] = (64, 128, 128)     # per resolution level, highest resolution first
    blocks: int = 1                                # residual blocks per level on the way down
    time_dims: tuple[int, int, int] = (192, 384, 768)  # sinusoid -> MLP widening in steps (~5M params)
    heads: int = 4                                 # attention heads at the lowest resolution
    dropout: float = 0.0
    # the mask modulates every residual block (SPADE), not only the input: tiles follow their masks
    # at low guidance; checkpoints of version 1 lack this field and were input-only
    mask_every_level: bool = True


@dataclass(frozen=True)
class OptimConfig:
    optimizer: str = "sgd"                         # "sgd" (momentum + schedule) or "adamw"
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 0.0
    warmup_steps: int = 50
    scheduler: str = "cosine"                      # "cosine" (to 1% of lr) or "constant"
    grad_clip: float = 1.0


@dataclass(frozen=True)
class StageConfig:
    """One training stage (the VAE or the diffusion model)."""

    steps: int = 400                               # optimizer steps in total
    batch_size: int = 8                            # per process, per micro-batch
    accumulate: int = 1                            # micro-batches per optimizer step
    steps_per_epoch: int = 0                       # 0: one pass over the training tiles
    patience: int = 5                              # epochs without validation improvement -> stop
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema_decay: float = 0.999                       # diffusion only
    log_every: int = 10


T_SAMPLINGS = ("uniform", "logit-normal")  # DiffusionConfig.t_sampling
VAL_SELECTIONS = ("all", "low", "mid", "high", "low-mid")  # DiffusionConfig.val_selection


@dataclass(frozen=True)
class DiffusionConfig:
    schedule: str = "linear"
    prediction: str = "eps"                        # "eps" or "v"
    cond_dropout: float = 0.15                     # share of training samples with the null condition
    min_snr_gamma: float | None = None             # Min-SNR-gamma loss weights (None: uniform)
    # training timesteps: "uniform" over [0, T), or "logit-normal" (t / T = sigmoid of a standard normal;
    # Esser et al. 2024): most draws at mid noise, where structure is invented (validation stays uniform)
    t_sampling: str = "uniform"
    # the validation loss that picks the best weights and runs patience: over every t, or over a noise
    # band (low t < 0.3 T, mid 0.3-0.7 T, high >= 0.7 T, low-mid t < 0.7 T): the high band, the mean's
    # largest part, can turn up while the mid band, where structure is invented, still falls
    val_selection: str = "all"


@dataclass(frozen=True)
class VAEStage:
    model: VAEConfig = field(default_factory=VAEConfig)
    train: StageConfig = field(default_factory=StageConfig)
    beta: float = 1e-5                             # KL weight (KL averaged per latent element)
    spectral_weight: float = 0.0                   # log-amplitude spectrum loss (texture; 0: off)
    minutes: float | None = None                   # time box (None: run all steps)


@dataclass(frozen=True)
class DiffusionStage:
    model: UNetConfig = field(default_factory=UNetConfig)
    train: StageConfig = field(default_factory=StageConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    minutes: float | None = None


@dataclass(frozen=True)
class Stages:
    """Everything `python -m generation_torch.train` trains by: a preset is one of these."""

    vae: VAEStage = field(default_factory=VAEStage)
    diffusion: DiffusionStage = field(default_factory=DiffusionStage)


PRECISIONS = ("auto", "fp32", "bf16", "fp16")    # --precision choices (autocast dtype, see precision.py)


def to_dict(cfg: Any) -> dict[str, Any]:
    return asdict(cfg)


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a (nested) config dataclass from to_dict output; lists become tuples again."""
    kwargs = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        if f.name == "optim":
            value = from_dict(OptimConfig, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def unet_config(saved: dict[str, Any]) -> UNetConfig:
    """A saved denoiser config; one from before per-level conditioning (no mask_every_level key)
    concatenated the mask at the input only."""
    return from_dict(UNetConfig, {"mask_every_level": False, **saved})


__all__ = ["PRECISIONS", "DiffusionConfig", "DiffusionStage", "OptimConfig", "StageConfig", "Stages",
           "UNetConfig", "VAEConfig", "VAEStage", "from_dict", "replace", "to_dict", "unet_config"]
