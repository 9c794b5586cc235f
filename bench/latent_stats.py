"""Where generated tiles leave the real distribution: the latents the denoiser draws against the VAE's
latents of real validation tiles (per-channel mean and std, spread of per-tile means), and the decoded
tiles' contrast, brightness spread and radial power per frequency band against the same real tiles.

    python -m bench.latent_stats                       # the evidence grid's k = 1 pseudo generator
    python -m bench.latent_stats --generator G.pt --val-store STORE --guidances 1,3 --tiles 16

Masks come from the validation store (the tiles' own masks, those with the most mitochondria first), so
both sides show the same layouts. The reconstructions (also with the decoder's texture added) get the
two-sample critic's accuracy against the tiles they reconstruct: the realism ceiling of the decoder.
Prints a table, writes docs/latent_stats.json (and with --figure a PNG: real tiles, their
reconstructions, the denoiser's x0 estimates from them noised to t = 700, 500, 300, then each
guidance's tiles, beside their masks).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from bench.common import ROOT, print_table, shown, shown_command, write_json
from shared.errors import run_cli

GRID = ROOT / "runs" / "evidence" / "final"
FIGURE_TS = (700, 500, 300)  # x0 estimates drawn: from little signal (layout) to much (detail)
BANDS = ((1, 4), (4, 8), (8, 16), (16, 32), (32, 64), (64, 96), (96, 128))  # radial frequency, cycles/tile


def grain_share(z: torch.Tensor) -> float:
    """Share of (N, C, h, w) latents' variance left after subtracting each element's 3x3 mean
    (replicated edges): the grain a denoiser must model beside the structure."""
    smooth = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(z, (1, 1, 1, 1), mode="replicate"), 3, 1)
    return float((z - smooth).var() / z.var())


def latent_figures(z: torch.Tensor) -> dict:
    """Per-channel mean and std of (N, C, h, w) latents, the std over tiles of each channel's tile mean,
    and the latents' grain share."""
    return {"z_mean": z.mean((0, 2, 3)).tolist(), "z_std": z.std((0, 2, 3)).tolist(),
            "z_tile_mean_std": z.mean((2, 3)).std(0).tolist(), "z_grain_share": grain_share(z)}


def tile_figures(tiles: np.ndarray, real: np.ndarray) -> dict:
    """Contrast, brightness spread and log10 power ratio to `real` per frequency band of (N, T, T) tiles."""
    from generation_torch.metrics import radial_power_spectrum, realism

    ratio = np.log10(radial_power_spectrum(tiles)) - np.log10(radial_power_spectrum(real))
    return {"std": float(tiles.std()), "tile_mean_std": float(tiles.mean((1, 2)).std()),
            "log10_power_ratio": {f"{a}-{b}": round(float(ratio[a - 1:b - 1].mean()), 3) for a, b in BANDS
                                 if b - 1 <= len(ratio)},
            **realism(tiles, real)}


def drawn_latents(gen, masks: np.ndarray, settings) -> tuple[torch.Tensor, np.ndarray]:
    """The scaled latents the sampler draws for `masks` and their decoded tiles (texture off)."""
    from shared.sampling import TileNoise, tile_seeds

    noise = TileNoise(tile_seeds(0, 0, len(masks)))
    z = gen.sample_latents(torch.from_numpy(masks.astype(np.float32)), settings, noise)
    return z, gen.decode(z)[:, 0].numpy()


def x0_error_by_t(gen, z: torch.Tensor, masks: np.ndarray, ts: list[int], keep: int = 0
                  ) -> tuple[list[dict], dict[int, torch.Tensor]]:
    """Per noise level t, for the conditional denoiser's x0 estimate: the RMS error of each tile's
    per-channel latent mean, beside the error of guessing every tile's mean as the set's mean (a
    denoiser that knows the data does at least that well at any t); and the share of the latents'
    variance it leaves unexplained (mean squared error over variance), beside that of a * x_t (what a
    v-denoiser answering 0 estimates). Also the first `keep` tiles' x0 estimates per t: what the
    denoiser knows of a tile when the noise leaves it that much signal."""
    from generation_torch.unet import mask_condition
    from shared import diffusion

    cond = mask_condition(torch.from_numpy(masks.astype(np.float32)), gen.latent_size)
    noise = torch.from_numpy(np.random.default_rng(0).standard_normal(z.shape).astype(np.float32))
    truth = z.mean((2, 3))
    guess = float(((truth - truth.mean(0)) ** 2).mean().sqrt())
    rows, estimates = [], {}
    for t in ts:
        a, s = (float(c) for c in gen.schedule.coefficients(t))
        x_t = diffusion.q_sample(z, noise, a, s)
        with torch.no_grad():
            pred = gen.unet(x_t, cond, torch.full((len(z),), float(t))).float()
        x0, _ = diffusion.split_prediction(pred, x_t, a, s, gen.prediction)
        unexplained = lambda estimate: float((estimate - z).square().mean() / z.var())  # noqa: E731
        rows.append({"t": t, "x0_tile_mean_rmse": float(((x0.mean((2, 3)) - truth) ** 2).mean().sqrt()),
                     "guess_set_mean_rmse": guess, "x0_unexplained": unexplained(x0),
                     "scaled_x_t_unexplained": unexplained(a * x_t)})
        estimates[t] = x0[:keep]
    return rows, estimates


def decoder_rows(gen, real: np.ndarray, recon: np.ndarray, c2st: bool) -> list[dict]:
    """The real tiles' reconstructions as the figures see them, and with the decoder's residual texture
    added as sampling adds it (--texture 1): what any tile drawn through this decoder can reach at
    best. With c2st, the two-sample critic's accuracy at telling them from the very tiles they
    reconstruct (layouts equal: only the decoder's signature is left to see)."""
    from generation_torch.two_sample import c2st_figures
    from shared.sampling import TileNoise, tile_seeds
    from shared.texture import add_texture

    sets = [("VAE reconstructions", recon)]
    if gen.texture_spectrum is not None:
        noise = TileNoise(tile_seeds(0, 0, len(recon)))
        sets.append(("VAE reconstructions + texture", add_texture(recon, gen.texture_spectrum, 1.0, noise)))
    return [rounded({"tiles": name, "recon_mse": float(((tiles - real) ** 2).mean()),
                     **tile_figures(tiles, real), **(c2st_figures(tiles, real) if c2st else {})})
            for name, tiles in sets]


def save_rows(path: Path, rows: list[np.ndarray], masks: np.ndarray, n: int = 4) -> None:
    """A PNG of each (N, T, T) tile set's first n tiles beside masks[:n], one set per row."""
    from generation_torch.grids import pair_grid, save_png, stack_rows, to_unit

    save_png(path, stack_rows([pair_grid(to_unit(tiles[:n]), masks[:n].astype(np.float32), columns=n)
                               for tiles in rows]))


def rounded(row: dict) -> dict:
    def one(v):
        return round(v, 4) if isinstance(v, float) else [round(x, 3) for x in v] if isinstance(v, list) else v
    return {k: one(v) for k, v in row.items()}


def main(argv: list[str] | None = None) -> None:
    from generation_torch.pipeline import load_generator, reconstruct
    from shared.sampling import SamplerSettings
    from shared.store import TileStore

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generator", type=Path,
                        default=GRID / "gen_k1" / "images_plentiful_spade_pseudo" / "generator.pt")
    parser.add_argument("--val-store", type=Path, default=GRID / "val_block" / "test_store")
    parser.add_argument("--guidances", default="1,3", help="comma-separated guidance scales")
    parser.add_argument("--sampler", default="dpmpp2m")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--tiles", type=int, default=16, help="generated tiles per guidance")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "latent_stats.json")
    parser.add_argument("--figure", type=Path, default=None, metavar="PNG",
                        help="also draw real tiles, their VAE reconstructions, the denoiser's x0 "
                             "estimates from them at t = 700, 500, 300 and each guidance's tiles (texture "
                             "off) beside their masks")
    parser.add_argument("--no-c2st", dest="c2st", action="store_false",
                        help="skip the two-sample critic on the reconstructions (about a minute each)")
    args = parser.parse_args(argv)
    for path in (args.generator, args.val_store):
        if not path.exists():
            parser.error(f"{path} not found (train it with python -m bench.evidence --preset final)")
    gen = load_generator(args.generator)
    store = TileStore(args.val_store)
    # the tiles with the most mitochondria first: those drawn and shown carry the most objects
    order = sorted(store.indices(), key=lambda i: -float(store.masks([i]).mean()))
    real, masks = store.images(order), store.masks(order)
    with torch.no_grad():
        z_real = gen.vae.encode(torch.from_numpy(real[:, None]))[0] * gen.latent_scale
    recon = np.clip(reconstruct(gen.vae, real), -1, 1)
    rows = [rounded({"tiles": "real validation", **latent_figures(z_real), **tile_figures(real, real)}),
            *decoder_rows(gen, real, recon, args.c2st)]
    drawn = [real, recon]
    for guidance in (float(g) for g in args.guidances.split(",")):
        settings = SamplerSettings(args.sampler, args.steps, guidance=guidance)
        z, tiles = drawn_latents(gen, masks[:args.tiles], settings)
        drawn.append(tiles)
        rows.append(rounded({"tiles": f"generated g{guidance:g}", **latent_figures(z),
                             **tile_figures(tiles, real)}))
    by_t, estimates = x0_error_by_t(gen, z_real, masks, [999, 900, 700, 500, 300, 100, 50], keep=4)
    by_t = [rounded(r) for r in by_t]
    if args.figure:  # real, reconstructions, x0 estimates from t = 700, 500, 300, then each guidance
        known = [gen.decode(estimates[t])[:, 0].numpy() for t in FIGURE_TS]
        save_rows(args.figure, [*drawn[:2], *known, *drawn[2:]], masks)
        print(f"figure in {args.figure}")
    print_table("x0 estimate from real latents noised to t (conditional)", by_t,
                ["t", "x0_tile_mean_rmse", "guess_set_mean_rmse", "x0_unexplained", "scaled_x_t_unexplained"])
    print_table(f"latents and tiles vs {len(real)} real validation tiles", rows,
                ["tiles", "z_std", "z_grain_share", "z_tile_mean_std", "std", "tile_mean_std",
                 "spectrum_dist", "hist_w1", "recon_mse", "c2st_accuracy"])
    command = shown_command("bench.latent_stats", sys.argv[1:] if argv is None else argv)
    write_json(args.out, {"command": command,
                          "generator": shown(args.generator), "sampler": f"{args.sampler} {args.steps} steps",
                          "latent_scale": gen.latent_scale, "rows": rows, "x0_error_by_t": by_t})


if __name__ == "__main__":
    sys.exit(run_cli(main))
