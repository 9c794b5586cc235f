"""Evaluate a trained generator on held-out real tiles.

    python -m generation_torch.evaluate --checkpoint RUN/generator.pt [--store STORE | --images I --masks M]
        [--sampler ddim --steps 50 --guidance 2 --seed 0 --n N] [--json OUT.json] [--vae-only]

Prints the VAE reconstruction MSE and PSNR on the validation tiles (normalized [-1, 1] space), and the
realism of tiles generated for the validation masks against the validation tiles (intensity-histogram
Wasserstein distance, radially averaged power-spectrum distance), each beside the same figure between
two disjoint real sets (training vs validation tiles: the floor), and a classifier two-sample test
(generation_torch.two_sample: a CNN trained from scratch on crops to tell generated from held-out real
tiles; its accuracy on the half it did not train on, 0.5 = indistinguishable).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from generation_torch import checkpoint, metrics, precision
from generation_torch.pipeline import Generator, load_generator, reconstruct
from generation_torch.sample import add_run_flags, generate_tiles, sampler_settings
from generation_torch.stages import VAE_FORMAT, load_vae
from generation_torch.two_sample import TwoSampleConfig, two_sample_accuracy
from shared.console import on_terminal
from shared.errors import ArgumentParser, UserError, non_negative_int, positive_int, run_cli
from shared.sampling import SamplerSettings
from shared.sources import add_data_flags, resolve_real_store, source_from_args
from shared.store import TileStore


def reconstruction(gen: Generator, images: np.ndarray, batch_size: int = 16
                   ) -> tuple[dict[str, float], np.ndarray]:
    """MSE/PSNR of decode(posterior mean) against the input tiles, and the reconstructions."""
    out = reconstruct(gen.vae, images, batch_size, gen.device, gen.autocast)
    value = metrics.mse(out, images)
    return {"recon_mse": value, "recon_psnr": metrics.psnr(value)}, out


def evaluate(gen: Generator, store: TileStore, settings: SamplerSettings, *, n: int | None = None,
             seed: int = 0, batch_size: int = 8, progress: bool = True, vae_only: bool = False,
             c2st: bool = True) -> dict:
    """Reconstruction figures and, unless vae_only, the realism of tiles generated for the first n
    validation masks (default: all)."""
    val_idx, train_idx = store.indices("val"), store.indices("train")
    val = store.images(val_idx)
    figures, recon = reconstruction(gen, val)
    result: dict = {"val_tiles": len(val_idx), **figures}
    if vae_only:
        return result
    ceiling = metrics.realism(recon, val)  # generated tiles pass the same decoder: context for them
    n = min(n or len(val_idx), len(val_idx))
    masks = store.masks(val_idx[:n])
    start = time.perf_counter()
    fake = generate_tiles(gen, masks, settings, seed, batch_size, progress)
    seconds = time.perf_counter() - start
    floor = metrics.realism(store.images(train_idx), val)
    result.update({"generated": n, "sampler": settings.sampler,
                   "steps": settings.steps_for(gen.schedule.timesteps), "guidance": settings.guidance,
                   "tiles_per_s": n / seconds, **metrics.realism(fake, val),
                   "floor_hist_w1": floor["hist_w1"], "floor_spectrum_dist": floor["spectrum_dist"],
                   "vae_hist_w1": ceiling["hist_w1"], "vae_spectrum_dist": ceiling["spectrum_dist"]})
    if c2st and n >= 4:
        result.update(two_sample_accuracy(fake, val, TwoSampleConfig(seed=seed)))
    return result


def format_result(r: dict) -> str:
    lines = [f"VAE reconstruction on {r['val_tiles']} held-out tiles: MSE {r['recon_mse']:.5f} "
             f"PSNR {r['recon_psnr']:.2f} dB (normalized [-1, 1] space)"]
    if "hist_w1" in r:
        lines += [f"realism of {r['generated']} generated tiles ({r['sampler']}, {r['steps']} steps, "
                  f"guidance {r['guidance']}; {r['tiles_per_s']:.2f} tiles/s) vs held-out real:",
                  f"  {'figure':<34} {'generated':>10} {'real floor':>10} {'VAE recon':>10}",
                  f"  {'intensity histogram W1':<34} {r['hist_w1']:>10.4f} {r['floor_hist_w1']:>10.4f} "
                  f"{r['vae_hist_w1']:>10.4f}",
                  f"  {'radial power spectrum distance':<34} {r['spectrum_dist']:>10.4f} "
                  f"{r['floor_spectrum_dist']:>10.4f} {r['vae_spectrum_dist']:>10.4f}",
                  "  (real floor: training vs held-out real tiles; VAE recon: the held-out tiles through "
                  "encoder + decoder, what the decoder keeps of real texture)"]
    if "c2st_accuracy" in r:
        lines.append(f"  classifier two-sample accuracy {r['c2st_accuracy']:.3f} (95% {r['c2st_low']:.3f}-"
                     f"{r['c2st_high']:.3f} on {r['c2st_tiles']} held-out tiles; 0.5 = indistinguishable)")
    return "\n".join(lines)


def report_rows(r: dict) -> list[dict]:
    rows = [{"figure": "VAE reconstruction MSE", "value": r["recon_mse"]},
            {"figure": "VAE reconstruction PSNR (dB)", "value": r["recon_psnr"]}]
    if "hist_w1" in r:
        rows += [{"figure": "intensity histogram W1", "value": r["hist_w1"],
                  "real floor": r["floor_hist_w1"], "VAE reconstructions": r["vae_hist_w1"]},
                 {"figure": "radial power spectrum distance", "value": r["spectrum_dist"],
                  "real floor": r["floor_spectrum_dist"], "VAE reconstructions": r["vae_spectrum_dist"]}]
    if "c2st_accuracy" in r:
        rows.append({"figure": "classifier two-sample accuracy", "value": r["c2st_accuracy"],
                     "real floor": 0.5})
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m generation_torch.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, required=True,
                   help="RUN/generator.pt (or RUN/vae.pt with --vae-only)")
    add_data_flags(p)
    p.add_argument("--n", type=positive_int, help="generated tiles (default: one per validation tile)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--vae-only", action="store_true", help="reconstruction figures only")
    p.add_argument("--no-c2st", action="store_true", help="skip the classifier two-sample test")
    p.add_argument("--json", type=Path, help="also write the figures as JSON here")
    p.add_argument("--no-progress", action="store_true")
    add_run_flags(p)
    args = p.parse_args(argv)
    settings = sampler_settings(args)
    if settings.strength < 1.0:  # starting from the held-out tiles would score copies of them
        raise UserError("--strength below 1 starts from real tiles; evaluate draws for held-out masks "
                        "from pure noise (--strength 1)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = precision.resolve(args.precision, device)
    if args.vae_only and checkpoint.load(args.checkpoint).get("format") == VAE_FORMAT:
        vae, scale = load_vae(args.checkpoint)  # a VAE alone (RUN/vae.pt) is enough for these figures
        gen = Generator(vae.to(device), None, None, "eps", scale, device, dtype)  # type: ignore[arg-type]
    else:
        gen = load_generator(args.checkpoint, device, dtype)
    store = resolve_real_store(source_from_args(args), args.checkpoint.parent)
    result = evaluate(gen, store, settings, n=args.n, seed=args.seed, batch_size=args.batch_size,
                      progress=not args.no_progress and on_terminal(), vae_only=args.vae_only,
                      c2st=not args.no_c2st)
    print(format_result(result))
    if args.json:
        report = {"command": "python -m generation_torch.evaluate " + " ".join(argv or sys.argv[1:]),
                  "source": str(store.path), "goal": "VAE reconstruction MSE <= 0.005 on held-out slices",
                  "goal_met": result["recon_mse"] <= 0.005, "summary": format_result(result),
                  "rows": report_rows(result), **result}
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
