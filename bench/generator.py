"""Generator speed and realism, one run, side by side:

  1. diffusion training samples/s on cached latents vs encoding every batch with the VAE (ratio);
  2. sampling tiles/s and realism (vs held-out real tiles) for DDPM-1000, DDIM-50, DPM-Solver++-20;
  3. training samples/s and sampling tiles/s in fp32 vs bf16 autocast (goal >= 2x), realism alike.

    python -m bench.generator [--checkpoint runs/generator/generator.pt] [--store RUN/real_store]
        [--tiles 12] [--seconds 20] [--out docs/bench_generator.json]

The store gives the training tiles (latent cache / per-step encoding) and the held-out validation
tiles and masks (realism). Run it alone on the machine: timings share the CPU with anything else.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from bench.common import ROOT, print_table, write_json
from generation_torch import metrics, precision
from generation_torch.config import DiffusionConfig, StageConfig, replace
from generation_torch.data import dihedral, encode_all, load_split
from generation_torch.pipeline import Generator, load_generator
from generation_torch.sample import generate_tiles
from generation_torch.tasks import DiffusionTask
from generation_torch.train_loop import LoopContext, _train_step
from generation_torch.unet import mask_condition
from shared.errors import run_cli
from shared.sampling import SamplerSettings
from shared.store import TileStore


class EncodePerStepTask(DiffusionTask):
    """The same step, but the VAE encodes the (dihedrally transformed) image batch every time."""

    images: torch.Tensor
    masks: torch.Tensor

    def loss(self, model, g, batch_size):
        idx = torch.randint(0, len(self.images), (batch_size,), generator=g)
        k = int(torch.randint(0, 8, (1,), generator=g))
        x = dihedral(self.images[idx], k)
        with torch.no_grad():
            mean, logvar = self.vae.encode(x)
        z0 = self.scale * (mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=g))
        x_t, t, target, _ = self.noisy_batch(z0.float(), g)
        cond = mask_condition(dihedral(self.masks[idx], k), z0.shape[-1])
        pred = model(x_t, cond, t.float())
        return F.mse_loss(pred.float(), target), {}


def train_rate(task: DiffusionTask, dtype: torch.dtype | None, batch: int, seconds: float) -> float:
    """Optimizer steps of the real training step function; samples per second after one warm-up."""
    model = task.model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    scaler = precision.grad_scaler(torch.device("cpu"), dtype)
    cfg = replace(StageConfig(), batch_size=batch)
    ctx = LoopContext(Path("."), autocast=dtype, progress=False)
    steps, start = -1, 0.0
    while True:
        g = torch.Generator().manual_seed(steps + 10)
        _train_step(task, model, model, opt, scaler, g, cfg, ctx, steps + 2)
        steps += 1
        if steps == 0:
            start = time.perf_counter()
        elif time.perf_counter() - start > seconds:
            return steps * batch / (time.perf_counter() - start)


def training_rows(gen: Generator, store: TileStore, batch: int, seconds: float) -> list[dict]:
    images, masks = load_split(store, "train")
    images, masks = images[:32], masks[:32]
    with torch.no_grad():
        cache = encode_all(gen.vae.encode, images, masks, batch_size=16)
    rows = []
    for dtype in (None, torch.bfloat16):
        for mode in ("cached latents", "encode per step"):
            unet = copy.deepcopy(gen.unet).train()
            args = (unet, cache, cache, gen.schedule, DiffusionConfig(prediction=gen.prediction),
                    gen.latent_scale, gen.vae, torch.device("cpu"), dtype)
            task = DiffusionTask(*args) if mode == "cached latents" else EncodePerStepTask(*args)
            if mode != "cached latents":
                task.images, task.masks = images, masks
            r = train_rate(task, dtype, batch, seconds)
            rows.append({"what": "diffusion training", "mode": mode, "precision": precision.name(dtype),
                         "samples_per_s": r})
            print(f"  training {mode}, {precision.name(dtype)}: {r:.2f} samples/s", flush=True)
    return rows


def sampling_rows(gen: Generator, store: TileStore, n: int) -> list[dict]:
    val_idx = store.indices("val")
    real, masks = store.images(val_idx), store.masks(val_idx[:n])
    rows = []
    plans = [("ddpm", 1000, torch.bfloat16), ("ddim", 50, torch.bfloat16), ("dpmpp2m", 20, torch.bfloat16),
             ("ddim", 50, None)]
    for sampler, steps, dtype in plans:
        gen.autocast = dtype
        settings = SamplerSettings(sampler, steps, guidance=2.0)
        warm = SamplerSettings(sampler, 2, guidance=2.0)  # oneDNN builds kernels per shape once
        generate_tiles(gen, masks, warm, 0, batch_size=n, progress=False)
        start = time.perf_counter()
        fake = generate_tiles(gen, masks, settings, 0, batch_size=n, progress=False)
        seconds = time.perf_counter() - start
        row = {"what": "sampling", "mode": f"{sampler}-{steps}", "precision": precision.name(dtype),
               "tiles_per_s": n / seconds, **metrics.realism(fake, real)}
        rows.append(row)
        print(f"  sampling {row['mode']} {row['precision']}: {row['tiles_per_s']:.3f} tiles/s, "
              f"W1 {row['hist_w1']:.4f}, spectrum {row['spectrum_dist']:.4f}", flush=True)
    floor = metrics.realism(store.images(store.indices("train")), real)
    rows.append({"what": "real floor", "mode": "train vs val tiles", **floor})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=ROOT / "runs" / "generator" / "generator.pt",
                   help="default: runs/generator/generator.pt (python -m generation_torch.train)")
    p.add_argument("--store", type=Path, help="real tile store; default: the checkpoint's RUN/real_store")
    p.add_argument("--tiles", type=int, default=12, help="generated tiles per sampler")
    p.add_argument("--batch", type=int, default=16, help="training batch")
    p.add_argument("--seconds", type=float, default=20.0, help="timing window per training row")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "bench_generator.json")
    args = p.parse_args(argv)
    args.store = args.store or args.checkpoint.parent / "real_store"
    if not args.checkpoint.is_file() or not args.store.is_dir():
        p.error(f"need a trained generator ({args.checkpoint}) and its real store ({args.store}); "
                "train one with python -m generation_torch.train or pass --checkpoint and --store")
    torch.manual_seed(0)
    gen = load_generator(args.checkpoint)
    store = TileStore(args.store)
    print(f"bench.generator: {args.checkpoint}, latent {gen.vae.cfg.latent_channels}x{gen.latent_size}"
          f"x{gen.latent_size}, {torch.get_num_threads()} threads", flush=True)
    train = training_rows(gen, store, args.batch, args.seconds)
    sample = sampling_rows(gen, store, args.tiles)
    by = {(r["mode"], r["precision"]): r for r in train + sample if "precision" in r}
    cached = by[("cached latents", "bf16")]["samples_per_s"]
    cached_ratio = cached / by[("encode per step", "bf16")]["samples_per_s"]
    train_bf16 = cached / by[("cached latents", "fp32")]["samples_per_s"]
    sample_bf16 = by[("ddim-50", "bf16")]["tiles_per_s"] / by[("ddim-50", "fp32")]["tiles_per_s"]
    print_table("diffusion training", train, ["mode", "precision", "samples_per_s"])
    print_table("sampling (realism vs held-out real tiles)", sample,
                ["mode", "precision", "tiles_per_s", "hist_w1", "spectrum_dist"])
    summary = (f"cached latents {cached_ratio:.1f}x faster than encoding per step; bf16 vs fp32: training "
               f"{train_bf16:.2f}x, sampling {sample_bf16:.2f}x")
    print(f"\n{summary}")
    write_json(args.out, {
        "command": "python -m bench.generator " + " ".join(sys.argv[1:] if argv is None else argv),
        "source": str(args.store), "goal": "bf16 >= 2x fp32 (training and sampling)",
        "goal_met": bool(train_bf16 >= 2 and sample_bf16 >= 2), "summary": summary,
        "cached_vs_encode_ratio": cached_ratio, "bf16_training_speedup": train_bf16,
        "bf16_sampling_speedup": sample_bf16, "rows": train + sample})
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
