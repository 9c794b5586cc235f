"""onnxruntime vs the native frameworks on CPU, same inputs, one run (float32):

    python -m bench.onnx [--segmenter RUN_DIR] [--generator RUN/generator.pt] [--out docs/bench_onnx.json]

1. whole-slice segmentation, slices/s: Keras predict vs onnxruntime (same overlapping tiles and
   blending), plus onnxruntime on the whole padded slice in one call (no tile overlap to recompute);
2. 50-step DDIM generation, tiles/s: PyTorch eager vs onnxruntime (same masks and initial noise).
Each also as achieved GFLOP/s beside the processor's float32 peak. Without trained models it uses
freshly initialized ones of the default sizes (speed does not depend on the weights).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

from bench.common import EPFL, ROOT, print_table, write_json  # noqa: E402
from bench.flops import graph_flops, measured_sgemm_gflops, nominal_peak_gflops  # noqa: E402
from exporters.runtime import Generator, Segmenter, session_options  # noqa: E402
from shared.errors import run_cli  # noqa: E402
from shared.normalization import normalize  # noqa: E402
from shared.phantom import PhantomConfig, phantom_stack  # noqa: E402
from shared.sampling import SamplerSettings  # noqa: E402
from shared.tiff_io import read_pair  # noqa: E402
from shared.tiling import tile_slice  # noqa: E402

OVERLAP, BATCH = 64, 8


def timed(fn, repeats: int) -> float:
    fn()  # warm-up (graph building, first-call allocation)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def bench_slices(n: int) -> tuple[np.ndarray, np.ndarray, str]:
    if (EPFL / "training.tif").is_file():
        images, masks = read_pair(EPFL / "training.tif", EPFL / "training_groundtruth.tif")
        return images[:n], masks[:n], "EPFL CA1 768x1024"
    images, masks = phantom_stack(n, seed=1, config=PhantomConfig())
    return images, masks, "phantom 768x1024"


def segmenter_files(run: Path | None, workdir: Path) -> tuple[Path, Path]:
    from exporters.keras_onnx import export_segmenter
    from segmentation_tf.artifacts import save_segmenter
    from segmentation_tf.model import UNetConfig, build_unet

    if run is None:
        config = UNetConfig()
        run = workdir / "seg"
        run.mkdir()
        save_segmenter(build_unet(config), config, run, 0.5, 256, {"bench": "untrained"})
    onnx_path, _ = export_segmenter(run, workdir / "segmenter.onnx")
    return run, onnx_path


def segmentation_rows(run: Path | None, workdir: Path, slices: np.ndarray, peak: float) -> list[dict]:
    from segmentation_tf.artifacts import load_segmenter
    from segmentation_tf.inference import predict_slice

    run, onnx_path = segmenter_files(run, workdir)
    keras_model = load_segmenter(run).model
    seg = Segmenter(onnx_path, device="cpu")
    proto = onnx.load(str(onnx_path))
    per_tile = graph_flops(proto, {"image": [1, 256, 256, 1]})
    h, w = slices.shape[1:]
    n_tiles = len(tile_slice(slices[0], 256, OVERLAP)[1])
    whole = graph_flops(proto, {"image": [1, h + (-h % 16), w + (-w % 16), 1]})
    normed = [normalize(s) for s in slices]

    def keras_run() -> None:
        for x in normed:
            predict_slice(keras_model, x, 256, OVERLAP, False, BATCH)

    def ort_tiled() -> None:
        for s in slices:
            seg.predict(s, tta=False, overlap=OVERLAP, batch_size=BATCH)  # same work as the Keras row

    def ort_whole() -> None:
        for x in normed:
            padded = np.pad(x, ((0, -h % 16), (0, -w % 16)), mode="reflect")[None, :, :, None]
            seg.session.run(None, {seg.input_name: padded})

    rows = []
    base = None
    for name, fn, flops in [("Keras predict, tiled (overlap 64)", keras_run, per_tile * n_tiles),
                            ("onnxruntime, tiled (overlap 64)", ort_tiled, per_tile * n_tiles),
                            ("onnxruntime, whole slice in one call", ort_whole, whole)]:
        sec = timed(fn, 1) / len(slices)
        base = base or 1 / sec
        rows.append({"task": "segment whole slices", "path": name, "rate": 1 / sec, "unit": "slices/s",
                     "vs native": (1 / sec) / base, "GFLOP/s": flops / sec / 1e9,
                     "% of peak": 100 * flops / sec / 1e9 / peak})
    return rows


def generator_rows(checkpoint: Path | None, workdir: Path, masks: np.ndarray, peak: float) -> list[dict]:
    import torch

    from exporters.torch_onnx import export_generator
    from generation_torch import checkpoint as ckpt
    from generation_torch.config import DiffusionConfig, UNetConfig, VAEConfig
    from generation_torch.pipeline import load_generator, product_dict
    from generation_torch.unet import UNet, mask_condition
    from generation_torch.vae import VAE
    from shared import diffusion

    if checkpoint is None:
        checkpoint = workdir / "generator.pt"
        ckpt.save(checkpoint, product_dict(VAE(VAEConfig()), UNet(UNetConfig()), DiffusionConfig(), 1.0,
                                           "float32"))
    export_generator(checkpoint, workdir / "gen_onnx")
    gen_torch = load_generator(checkpoint)
    gen_ort = Generator(workdir / "gen_onnx", device="cpu")
    n = len(masks)
    noise = np.random.default_rng(0).standard_normal((n, *gen_ort.latent_shape), dtype=np.float32)
    steps = 50

    def torch_run() -> None:
        cond = mask_condition(torch.from_numpy(masks).float(), gen_ort.latent_shape[1])
        z = diffusion.sample(gen_torch.model_fn(cond, 1.0), torch.from_numpy(noise), gen_torch.schedule,
                             "ddim", steps, prediction=gen_torch.prediction)
        gen_torch.decode(z)

    def ort_run() -> None:
        gen_ort.generate(masks, SamplerSettings("ddim", steps, guidance=1.0), initial_noise=noise)

    c, h, w = gen_ort.latent_shape
    den = graph_flops(onnx.load(str(workdir / "gen_onnx" / "denoiser.onnx")),
                      {"x_t": [n, c, h, w], "cond": [n, 2, h, w], "t": [n]})
    dec = graph_flops(onnx.load(str(workdir / "gen_onnx" / "vae_decoder.onnx")), {"latent": [n, c, h, w]})
    flops = (steps * den + dec) / n
    rows, base = [], None
    for name, fn in [("PyTorch eager, DDIM-50", torch_run), ("onnxruntime, DDIM-50", ort_run)]:
        with torch.inference_mode():
            sec = timed(fn, 1) / n
        base = base or 1 / sec
        rows.append({"task": f"generate tiles (batch {n})", "path": name, "rate": 1 / sec, "unit": "tiles/s",
                     "vs native": (1 / sec) / base, "GFLOP/s": flops / sec / 1e9,
                     "% of peak": 100 * flops / sec / 1e9 / peak})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segmenter", type=Path, help="trained segmenter run folder (default: untrained)")
    parser.add_argument("--generator", type=Path, help="generator.pt (default: untrained)")
    parser.add_argument("--slices", type=int, default=2)
    parser.add_argument("--tiles", type=int, default=8)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench_onnx.json")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    peak, peak_note = nominal_peak_gflops()
    sgemm = measured_sgemm_gflops()
    options = session_options()
    settings = {"onnxruntime": ort.__version__,
                "graph_optimization_level": str(options.graph_optimization_level),
                "intra_op_num_threads": f"{options.intra_op_num_threads} (0 = one per core: "
                                        f"{os.cpu_count()})",
                "inter_op_num_threads": options.inter_op_num_threads,
                "execution_mode": str(options.execution_mode), "provider": "CPUExecutionProvider"}
    print("onnxruntime session options:", settings)
    print(f"float32 peak: {peak:.0f} GFLOP/s nominal ({peak_note}); measured sgemm {sgemm:.0f} GFLOP/s")
    slices, masks, source = bench_slices(args.slices)
    tiles = np.stack([tile_slice(m, 256)[0][5] for m in masks])  # a central tile's mask per slice
    tile_masks = tiles[np.arange(args.tiles) % len(tiles)]
    with tempfile.TemporaryDirectory() as tmp:
        rows = segmentation_rows(args.segmenter, Path(tmp), slices, peak)
        rows += generator_rows(args.generator, Path(tmp), tile_masks, peak)
    print_table(f"onnxruntime vs native, CPU float32, {source} (goal: onnxruntime >= 1.1x native)", rows,
                ["task", "path", "rate", "unit", "vs native", "GFLOP/s", "% of peak"])
    write_json(args.out, {"benchmark": "onnx", "command": "python -m bench.onnx", "source": source,
                          "session_options": settings, "peak_gflops_nominal": peak, "peak_note": peak_note,
                          "sgemm_gflops_measured": sgemm, "rows": rows,
                          "models": {"segmenter": str(args.segmenter or "untrained default U-Net"),
                                     "generator": str(args.generator or "untrained default sizes")}})


if __name__ == "__main__":
    sys.exit(run_cli(main))
