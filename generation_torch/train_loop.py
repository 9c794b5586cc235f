"""The training loop shared by both stages: accumulation, mixed precision, EMA, validation each epoch,
best/last checkpoints, patience, exact --resume, NaN guard, TensorBoard, progress bar, DDP.

Randomness per step comes from a generator seeded by (seed, rank, step), so a resumed run draws the
same batches, timesteps and noise as an uninterrupted one; the global RNG state is saved as well.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from generation_torch import checkpoint, precision
from generation_torch.config import StageConfig, to_dict
from generation_torch.distributed import Dist, any_across, barrier, mean_across
from generation_torch.optim import EMA, make_optimizer, make_scheduler
from shared.errors import UserError
from shared.presets import changed_fields


class TrainingDiverged(UserError):
    """The loss became NaN/Inf: training stops, the last good checkpoint stays as it was."""


class Task(Protocol):
    name: str            # "vae" or "diffusion": checkpoint names and TensorBoard tag prefix
    model: nn.Module     # the module being trained (not wrapped)
    n_train: int         # training samples (defines an epoch)
    use_ema: bool
    fields_added: dict   # describe()'s fields added later: their values before they existed

    def loss(self, model: nn.Module, g: torch.Generator, batch_size: int) -> tuple[torch.Tensor, dict]: ...
    # the loss that picks the best weights and runs patience, and scalars logged beside it
    def validate(self, model: nn.Module) -> tuple[float, dict[str, float]]: ...
    def visuals(self, model: nn.Module, writer: Any, step: int) -> None: ...
    def describe(self) -> dict: ...


@dataclass(frozen=True)
class LoopContext:
    run_dir: Path
    dist: Dist = field(default_factory=Dist)
    autocast: torch.dtype | None = None
    seed: int = 0
    resume: bool = False
    writer: Any = None                 # a SummaryWriter on the main process, else None
    stop_after: int | None = None      # leave the loop after this many total steps (resumable)
    max_minutes: float | None = None   # time box for this stage, across resumes: ends it as if finished
    progress: bool = True
    visual_every: int = 5              # epochs between TensorBoard image grids (they cost CPU time)


@dataclass
class LoopState:
    step: int = 0
    trained: int = 0      # steps taken by this invocation (not saved)
    epoch: int = 0
    best: float = math.inf
    bad_epochs: int = 0
    finished: bool = False
    minutes: float = 0.0  # training minutes of the stage so far, killed invocations included


@dataclass
class Trainables:
    """What a stage trains and what --resume restores: the model, its optimizer state and averages."""

    model: nn.Module                           # the module being trained (not wrapped)
    opt: torch.optim.Optimizer
    sched: Any                                 # a torch.optim.lr_scheduler
    scaler: torch.amp.GradScaler
    ema: EMA | None = None                     # the denoiser's weight average (validated, saved as best)

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.model if self.ema is not None else self.model

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), "scaler": self.scaler.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None}


def paths(ctx: LoopContext, name: str) -> tuple[Path, Path]:
    return ctx.run_dir / f"{name}_last.pt", ctx.run_dir / f"{name}_best.pt"


def fit(task: Task, cfg: StageConfig, ctx: LoopContext) -> LoopState:
    """Train task.model per cfg; on return task.model (and the EMA) hold the best weights."""
    model = task.model.to(ctx.dist.device)
    wrapped = DistributedDataParallel(model) if ctx.dist.enabled else model
    opt = make_optimizer(model.parameters(), cfg.optim)
    parts = Trainables(model, opt, make_scheduler(opt, cfg.optim, cfg.steps),
                       precision.grad_scaler(ctx.dist.device, ctx.autocast),
                       EMA(model, cfg.ema_decay) if task.use_ema else None)
    state = LoopState()
    last_path, best_path = paths(ctx, task.name)
    if ctx.resume and last_path.exists():
        state = _restore(last_path, task, parts)
        if state.finished and state.step < cfg.steps and state.bad_epochs < cfg.patience \
                and not boxed_out(state, ctx):
            state.finished = False  # a time box ended it early: a larger box (or none) trains on
    start_step = state.step
    if state.finished:
        _load_best(best_path, task, parts)
        return state
    per_epoch = cfg.steps_per_epoch or max(1, math.ceil(task.n_train / (cfg.batch_size * cfg.accumulate
                                                                          * ctx.dist.world)))
    bar = tqdm(total=cfg.steps, initial=state.step, desc=task.name, unit="step",
               disable=not (ctx.progress and ctx.dist.main), dynamic_ncols=True)
    minutes_before, started, seen, t0 = state.minutes, time.monotonic(), 0, time.monotonic()
    while state.step < cfg.steps and not boxed_out(state, ctx):
        g = torch.Generator().manual_seed(ctx.seed * 1_000_003 + ctx.dist.rank * 7_919 + state.step)
        loss, logs = _train_step(task, wrapped, model, opt, parts.scaler, g, cfg, ctx, state.step + 1)
        parts.sched.step()
        if parts.ema is not None:
            parts.ema.update(model)
        state.step += 1
        seen += cfg.batch_size * cfg.accumulate * ctx.dist.world
        if state.step % cfg.log_every == 0 or state.step == cfg.steps:
            rate = seen / max(time.monotonic() - t0, 1e-9)
            _log_train(ctx, task.name, state.step, loss, logs, opt, rate)
            bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{rate:.1f}")
            seen, t0 = 0, time.monotonic()
        bar.update(1)
        state.minutes = minutes_before + (time.monotonic() - started) / 60
        # each rank reads its own clock: they agree, or one would leave while the others all-reduce
        timed_out = ctx.max_minutes is not None and any_across(ctx.dist, boxed_out(state, ctx))
        epoch_end = state.step % per_epoch == 0 or state.step == cfg.steps or timed_out
        if epoch_end and (_end_epoch(task, cfg, ctx, state, parts) or timed_out):
            break
        if ctx.stop_after is not None and state.step >= ctx.stop_after:
            bar.close()
            return state  # interrupted on purpose: last checkpoint is resumable, not finished
    bar.close()
    state.finished = True
    state.trained = state.step - start_step
    _load_best(best_path, task, parts)
    if ctx.dist.main:
        _save_last(last_path, task, parts, state)
    barrier(ctx.dist)
    return state


def boxed_out(state: LoopState, ctx: LoopContext) -> bool:
    """Has the stage used its time box? The box counts every invocation's minutes, so a killed and
    resumed run trains as long as one that ran straight."""
    return ctx.max_minutes is not None and state.minutes > ctx.max_minutes


def _train_step(task: Task, wrapped: nn.Module, model: nn.Module, opt: torch.optim.Optimizer,
                scaler: torch.amp.GradScaler, g: torch.Generator, cfg: StageConfig, ctx: LoopContext,
                step: int) -> tuple[float, dict]:
    model.train()
    opt.zero_grad(set_to_none=True)
    total, logs = torch.zeros(()), {}
    for micro in range(cfg.accumulate):
        sync = micro == cfg.accumulate - 1 or not ctx.dist.enabled
        # DDP all-reduces gradients once per optimizer step, not per micro-batch
        ctxm = wrapped.no_sync() if not sync else contextlib.nullcontext()
        with ctxm, precision.autocast(ctx.dist.device, ctx.autocast):
            loss, logs = task.loss(wrapped, g, cfg.batch_size)
        scaler.scale(loss / cfg.accumulate).backward()
        total += loss.detach().float().cpu() / cfg.accumulate
    total = mean_across(ctx.dist, total)
    if not torch.isfinite(total):
        raise TrainingDiverged(f"{task.name} loss became {float(total)} at step {step}; stopped. "
                               f"The last good checkpoint is {paths(ctx, task.name)[0]} "
                               "(resume it with a lower learning rate or --precision fp32)")
    scaler.unscale_(opt)
    if cfg.optim.grad_clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
    scaler.step(opt)
    scaler.update()
    return float(total), logs


def _end_epoch(task: Task, cfg: StageConfig, ctx: LoopContext, state: LoopState, parts: Trainables) -> bool:
    """Validate, keep the best, write the last checkpoint; True when patience has run out."""
    state.epoch += 1
    eval_model = parts.eval_model
    eval_model.eval()
    with torch.no_grad(), precision.autocast(ctx.dist.device, ctx.autocast):
        val, val_logs = task.validate(eval_model)
    last_path, best_path = paths(ctx, task.name)
    improved = val < state.best
    if improved:
        state.best, state.bad_epochs = val, 0
    else:
        state.bad_epochs += 1
    if ctx.dist.main:
        if not ctx.progress:  # logs of unattended runs still show the validation curve
            bands = "".join(f" {k.removeprefix('val_loss_')} {v:.5f}" for k, v in val_logs.items())
            print(f"{task.name}: epoch {state.epoch} step {state.step} val {val:.5f}{bands}"
                  f"{' (best)' if improved else ''}", flush=True)
        if improved:
            checkpoint.save(best_path, {"format": checkpoint.TRAINING_FORMAT, "stage": task.name,
                                        "weights": eval_model.state_dict(), "step": state.step,
                                        "val_loss": val, "val_logs": val_logs,
                                        "config": task.describe()})
        _save_last(last_path, task, parts, state)
        if ctx.writer is not None:
            ctx.writer.add_scalar(f"{task.name}/val_loss", val, state.step)
            for key, value in val_logs.items():
                ctx.writer.add_scalar(f"{task.name}/{key}", value, state.step)
            if ctx.visual_every > 0 and (state.epoch % ctx.visual_every == 0 or state.epoch == 1):
                with torch.no_grad(), precision.autocast(ctx.dist.device, ctx.autocast):
                    task.visuals(eval_model, ctx.writer, state.step)
            ctx.writer.flush()
    barrier(ctx.dist)
    return state.bad_epochs >= cfg.patience


def _log_train(ctx: LoopContext, name: str, step: int, loss: float, logs: dict, opt, rate: float) -> None:
    if ctx.writer is None:
        return
    ctx.writer.add_scalar(f"{name}/train_loss", loss, step)
    ctx.writer.add_scalar(f"{name}/lr", opt.param_groups[0]["lr"], step)
    ctx.writer.add_scalar(f"{name}/samples_per_s", rate, step)
    for key, value in logs.items():
        ctx.writer.add_scalar(f"{name}/{key}", value, step)


def _save_last(path: Path, task: Task, parts: Trainables, state: LoopState) -> None:
    checkpoint.save(path, {
        "format": checkpoint.TRAINING_FORMAT, "stage": task.name, **parts.state_dict(),
        "loop": {k: v for k, v in to_dict(state).items() if k != "trained"},
        "rng": torch.get_rng_state(), "config": task.describe()})


def _restore(path: Path, task: Task, parts: Trainables) -> LoopState:
    saved = checkpoint.load(path, checkpoint.TRAINING_FORMAT)
    if saved.get("stage") != task.name:
        raise UserError(f"{path}: holds a {saved.get('stage')!r} stage, not {task.name!r}")
    # the saved weights and optimizer state were trained under these: other ones would mix two runs
    changed = changed_fields(saved["config"], task.describe(), absent=task.fields_added) \
        if "config" in saved else []
    if changed:
        raise UserError(f"{path}: --resume of a {task.name} stage trained under other settings "
                        f"({', '.join(changed)}); resume with its flags, or train into another --out")
    checkpoint.load_weights(parts.model, saved["model"], path, task.name)
    parts.opt.load_state_dict(saved["optimizer"])
    parts.sched.load_state_dict(saved["scheduler"])
    if parts.ema is not None and saved.get("ema") is not None:
        parts.ema.load_state_dict(saved["ema"])
    parts.scaler.load_state_dict(saved["scaler"])
    torch.set_rng_state(saved["rng"])
    return LoopState(**saved["loop"])


def _load_best(path: Path, task: Task, parts: Trainables) -> None:
    """Revert to the best validated weights (EMA weights for the denoiser)."""
    if not path.exists():
        return
    weights = checkpoint.load(path, checkpoint.TRAINING_FORMAT)["weights"]
    checkpoint.load_weights(parts.eval_model, weights, path, task.name)
    if parts.ema is not None:
        parts.model.load_state_dict(weights)
