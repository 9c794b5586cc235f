"""Flags of `python -m generation_torch.train` and how they become stage configs (flag > preset >
dataclass default)."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

from generation_torch.config import DiffusionConfig, OptimConfig, StageConfig, UNetConfig, VAEConfig
from generation_torch.precision import CHOICES as PRECISIONS
from generation_torch.presets import PRESETS, default_preset
from generation_torch.stages import DiffusionStage, VAEStage
from shared import diffusion
from shared.errors import ArgumentParser, UserError, fraction, positive_float, positive_int
from shared.sources import add_data_flags


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
    p.add_argument("--out", type=Path, default=Path("runs/generator"),
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
    v.add_argument("--vae-steps", type=positive_int)
    v.add_argument("--vae-batch-size", type=positive_int)
    v.add_argument("--vae-lr", type=positive_float)
    v.add_argument("--vae-minutes", type=positive_float, help="time box for the VAE stage")
    d = p.add_argument_group("diffusion")
    d.add_argument("--schedule", choices=diffusion.SCHEDULES)
    d.add_argument("--prediction", choices=diffusion.PREDICTIONS)
    d.add_argument("--cond-dropout", type=fraction, help="share of null conditions in training (0.1-0.2)")
    d.add_argument("--unet-channels", type=int_list, help="widths per level, e.g. 64,128,128")
    d.add_argument("--unet-blocks", type=positive_int)
    d.add_argument("--time-dims", type=int_list, help="sinusoid,hidden,out of the timestep MLP")
    d.add_argument("--heads", type=positive_int)
    d.add_argument("--diffusion-steps", type=positive_int)
    d.add_argument("--diffusion-batch-size", type=positive_int)
    d.add_argument("--diffusion-lr", type=positive_float)
    d.add_argument("--ema-decay", type=fraction)
    d.add_argument("--diffusion-minutes", type=positive_float, help="time box for the diffusion stage")
    return p


def _resolved(args: argparse.Namespace) -> dict[str, Any]:
    """Every tunable: the explicit flag, else the preset's value, else None (dataclass default)."""
    has_data = args.store is not None or args.images is not None
    args.preset = args.preset or default_preset(has_data)
    values = dict(PRESETS[args.preset])
    values.update({k: v for k, v in vars(args).items() if v is not None})
    if values.get("steps") is not None:  # --steps overrides both stages unless a stage flag is given
        values.setdefault("vae_steps", values["steps"])
        values.setdefault("diffusion_steps", values["steps"])
        for key in ("vae_steps", "diffusion_steps"):
            if getattr(args, key) is None:
                values[key] = values["steps"]
    return values


def _pick(values: dict[str, Any], **names: str) -> dict[str, Any]:
    return {field: values[flag] for field, flag in names.items() if values.get(flag) is not None}


def stages_from_args(args: argparse.Namespace) -> tuple[VAEStage, DiffusionStage]:
    values = _resolved(args)
    if values.get("time_dims") is not None and len(values["time_dims"]) != 3:
        raise UserError("--time-dims takes three widths: sinusoid,hidden,out")
    optim = replace(OptimConfig(), **_pick(values, optimizer="optimizer", momentum="momentum",
                                           weight_decay="weight_decay", warmup_steps="warmup_steps"))
    common = _pick(values, accumulate="accumulate", patience="patience", steps_per_epoch="steps_per_epoch")
    vae_model = replace(VAEConfig(), **_pick(values, latent_channels="latent_channels",
                                             downsample="downsample", channels="vae_channels"))
    if len(vae_model.channels) < vae_model.levels:
        raise UserError(f"--vae-channels needs {vae_model.levels} widths for "
                        f"--downsample {vae_model.downsample}")
    vae_train = replace(StageConfig(), **common,
                        **_pick(values, steps="vae_steps", batch_size="vae_batch_size"),
                        optim=replace(optim, **_pick(values, lr="vae_lr")))
    unet = replace(UNetConfig(), **_pick(values, channels="unet_channels", blocks="unet_blocks",
                                         time_dims="time_dims", heads="heads"))
    for width in unet.channels:
        if width % unet.heads or width % min(8, width):
            raise UserError(f"--unet-channels widths must be divisible by --heads ({unet.heads}) and 8")
    diff_train = replace(StageConfig(), **common, **_pick(values, steps="diffusion_steps",
                                                          batch_size="diffusion_batch_size",
                                                          ema_decay="ema_decay"),
                         optim=replace(optim, **_pick(values, lr="diffusion_lr")))
    dcfg = replace(DiffusionConfig(), **_pick(values, schedule="schedule", prediction="prediction",
                                              cond_dropout="cond_dropout"))
    beta = values.get("beta", VAEStage.beta)
    return (VAEStage(vae_model, vae_train, beta, values.get("vae_minutes")),
            DiffusionStage(unet, diff_train, dcfg, values.get("diffusion_minutes")))
