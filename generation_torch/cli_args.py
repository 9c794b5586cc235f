"""Flags of `python -m generation_torch.train` and how they become stage configs (flag > preset >
dataclass default). No torch import: the flags are checked before PyTorch loads."""

from __future__ import annotations

import argparse
from pathlib import Path

from generation_torch.config import PRECISIONS, T_SAMPLINGS, VAL_SELECTIONS, Stages
from generation_torch.presets import PRESETS, default_preset
from shared import diffusion
from shared.errors import ArgumentParser, UserError, fraction, positive_float, positive_int, unit_interval
from shared.presets import apply_flags
from shared.sources import DEFAULT_GENERATOR_RUN, add_data_flags


def int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"widths must be >= 1, got {text!r}")
    return values


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m generation_torch.train",
                       description="Train the VAE and the mask-conditioned latent DDPM.")
    add_data_flags(p)
    p.add_argument("--unlabelled-store", type=Path, metavar="STORE",
                   help="tile store of extra images without labels (its masks are ignored): its train "
                        "tiles join the VAE's training and the null-condition rows of the denoiser")
    p.add_argument("--stage", choices=("vae", "diffusion", "all"), default="all")
    p.add_argument("--init-denoiser", type=Path, metavar="GENERATOR",
                   help="start the denoiser from this generator.pt's (same VAE, same denoiser shape), e.g. "
                        "one pre-trained on every unlabelled image with --cond-dropout 1")
    p.add_argument("--out", type=Path, default=DEFAULT_GENERATOR_RUN,
                   help="run folder (default runs/generator)")
    p.add_argument("--preset", choices=tuple(PRESETS),
                   help="quick (phantom default) | real (data default) | none")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoints")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="autocast dtype; auto = bf16 on GPUs and on CPUs with native bf16, else fp32/fp16")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--visual-every", type=int, default=5,
                   help="epochs between TensorBoard image grids (0: none; they cost CPU time)")
    p.add_argument("--stop-after", type=positive_int, help="leave after this many steps of a stage "
                   "(a resumable interruption, e.g. to split a long run)")
    g = p.add_argument_group("both stages")
    g.add_argument("--steps", type=positive_int, help="optimizer steps of each stage")
    g.add_argument("--optimizer", choices=("sgd", "adamw"))
    g.add_argument("--accumulate", type=positive_int, help="micro-batches per optimizer step")
    g.add_argument("--patience", type=positive_int, help="epochs without validation improvement before stop")
    g.add_argument("--steps-per-epoch", type=positive_int, help="default: one pass over the training data")
    g.add_argument("--warmup-steps", type=int)
    g.add_argument("--momentum", type=fraction)
    g.add_argument("--weight-decay", type=float)
    v = p.add_argument_group("VAE")
    v.add_argument("--latent-channels", type=positive_int)
    v.add_argument("--downsample", type=int, choices=(4, 8))
    v.add_argument("--vae-channels", type=int_list, help="widths per level, e.g. 32,64,128")
    v.add_argument("--beta", type=float, help="KL weight (KL averaged per latent element)")
    v.add_argument("--spectral-weight", type=float,
                   help="weight of the log-amplitude spectrum loss that keeps EM texture (0: off)")
    v.add_argument("--vae-steps", type=positive_int)
    v.add_argument("--vae-batch-size", type=positive_int)
    v.add_argument("--vae-lr", type=positive_float)
    v.add_argument("--vae-minutes", type=positive_float,
                   help="time box for the VAE stage (minutes, killed runs that --resume continues included)")
    d = p.add_argument_group("diffusion")
    d.add_argument("--schedule", choices=diffusion.SCHEDULES)
    d.add_argument("--prediction", choices=diffusion.PREDICTIONS)
    d.add_argument("--cond-dropout", type=unit_interval,
                   help="share of null conditions in training (0.1-0.2; 1: an unconditional denoiser that "
                        "learns from every image, to start others from with --init-denoiser)")
    d.add_argument("--min-snr-gamma", type=positive_float,
                   help="weight the loss by min(SNR, gamma) / SNR (Min-SNR; 5 is usual): noisy timesteps, "
                        "where the mask's layout is decided, are learned sooner")
    d.add_argument("--t-sampling", choices=T_SAMPLINGS,
                   help="training timesteps: uniform (default) or logit-normal, most at mid noise, where "
                        "structure is invented (validation stays uniform)")
    d.add_argument("--val-selection", choices=VAL_SELECTIONS,
                   help="the validation loss that keeps the best weights and runs patience: over every t "
                        "(all, default) or a noise band: low (t < 0.3 T), mid (0.3-0.7 T, where structure "
                        "is invented), high, low-mid; the others are logged beside it")
    d.add_argument("--unet-channels", type=int_list, help="widths per level, e.g. 64,128,128")
    d.add_argument("--unet-blocks", type=positive_int)
    d.add_argument("--time-dims", type=int_list, help="sinusoid,hidden,out of the timestep MLP")
    d.add_argument("--heads", type=positive_int)
    d.add_argument("--mask-every-level", action=argparse.BooleanOptionalAction,
                   help="the mask modulates every residual block (SPADE; default) or only the input")
    d.add_argument("--diffusion-steps", type=positive_int)
    d.add_argument("--diffusion-batch-size", type=positive_int)
    d.add_argument("--diffusion-lr", type=positive_float)
    d.add_argument("--ema-decay", type=fraction)
    d.add_argument("--diffusion-minutes", type=positive_float,
                   help="time box for the diffusion stage (minutes, as --vae-minutes)")
    return p


def _both(path: str) -> tuple[str, str]:
    return f"vae.train.{path}", f"diffusion.train.{path}"


# flag -> the Stages field(s) it sets; order is precedence (--steps, then the stage's own --*-steps)
FLAGS: dict[str, str | tuple[str, ...]] = {
    "steps": _both("steps"), "optimizer": _both("optim.optimizer"), "accumulate": _both("accumulate"),
    "patience": _both("patience"), "steps_per_epoch": _both("steps_per_epoch"),
    "warmup_steps": _both("optim.warmup_steps"), "momentum": _both("optim.momentum"),
    "weight_decay": _both("optim.weight_decay"),
    "latent_channels": "vae.model.latent_channels", "downsample": "vae.model.downsample",
    "vae_channels": "vae.model.channels", "beta": "vae.beta", "vae_steps": "vae.train.steps",
    "spectral_weight": "vae.spectral_weight",
    "vae_batch_size": "vae.train.batch_size", "vae_lr": "vae.train.optim.lr", "vae_minutes": "vae.minutes",
    "schedule": "diffusion.diffusion.schedule", "prediction": "diffusion.diffusion.prediction",
    "cond_dropout": "diffusion.diffusion.cond_dropout", "min_snr_gamma": "diffusion.diffusion.min_snr_gamma",
    "t_sampling": "diffusion.diffusion.t_sampling", "val_selection": "diffusion.diffusion.val_selection",
    "unet_channels": "diffusion.model.channels",
    "unet_blocks": "diffusion.model.blocks", "time_dims": "diffusion.model.time_dims",
    "heads": "diffusion.model.heads", "diffusion_steps": "diffusion.train.steps",
    "mask_every_level": "diffusion.model.mask_every_level",
    "diffusion_batch_size": "diffusion.train.batch_size", "diffusion_lr": "diffusion.train.optim.lr",
    "ema_decay": "diffusion.train.ema_decay", "diffusion_minutes": "diffusion.minutes",
}


def preset_name(args: argparse.Namespace) -> str:
    """--preset, else the default for the data flags given."""
    return args.preset or default_preset(args.store is not None or args.images is not None)


def stages_from_args(args: argparse.Namespace) -> Stages:
    """flag > preset > dataclass default (shared.presets), checked once here; args are only read."""
    if args.time_dims is not None and len(args.time_dims) != 3:
        raise UserError("--time-dims takes three widths: sinusoid,hidden,out")
    stages = apply_flags(PRESETS[preset_name(args)], FLAGS, vars(args))
    vae_model, unet = stages.vae.model, stages.diffusion.model
    if len(vae_model.channels) < vae_model.levels:
        raise UserError(f"--vae-channels needs {vae_model.levels} widths for "
                        f"--downsample {vae_model.downsample}")
    for width in unet.channels:
        if width % unet.heads or width % min(8, width):
            raise UserError(f"--unet-channels widths must be divisible by --heads ({unet.heads}) and 8")
    return stages
