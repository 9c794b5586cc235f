"""Whole volumes with dask (exporters.volumes): flat memory as the volume grows, 2 worker processes vs 1,
time per slice beside the in-memory path.

    python -m bench.volumes [--sizes 1,4,16 --out docs/bench_volumes.json]

The phantom (27 slices of 768x1024, the EPFL subset's size) is tiled along z to 1x, 4x and 16x and written
as OME-Zarr; a small random segmenter (residual U-Net, base width 8, tile 256, overlap 64) exported to ONNX
segments each through `python -m exporters.infer segment ... --scheduler processes`, while the summed RSS
of the command's whole process tree (client, nannies, workers) is sampled every 0.1 s.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from bench.common import ROOT, machine, print_table, write_json
from shared.errors import run_cli

WORK = ROOT / "runs" / "bench_volumes"
SLICES, HEIGHT, WIDTH = 27, 768, 1024  # the EPFL subset
PIXEL_NM = (5.0, 5.0, 5.0)


def build_segmenter(path: Path) -> Path:
    """Random weights are enough: the benchmark measures throughput and memory, not quality."""
    if path.is_file():
        return path
    import keras

    from exporters.keras_onnx import export_segmenter
    from segmentation_tf.artifacts import save_segmenter
    from segmentation_tf.model import UNetConfig, build_unet

    keras.utils.set_random_seed(0)
    config = UNetConfig(base_width=8, depth=3)
    run_dir = path.parent / "segmenter_run"
    run_dir.mkdir(parents=True, exist_ok=True)
    save_segmenter(build_unet(config), config, run_dir, threshold=0.5, tile_size=256,
                   provenance={"bench": "volumes"}, overlap=64, tta=False)
    export_segmenter(run_dir, path)
    return path


def write_volumes(sizes: list[int]) -> dict[int, Path]:
    """The phantom tiled along z to each size, as OME-Zarr (written slab by slab)."""
    from exporters.volume_io import PixelSize, create_image
    from shared.phantom import phantom_stack

    paths = {k: WORK / f"phantom_{k}x.ome.zarr" for k in sizes}
    missing = [k for k, p in paths.items() if not (p / ".zattrs").is_file()]
    if missing:
        images, _ = phantom_stack(SLICES, seed=0)
        for k in missing:
            array = create_image(paths[k], (SLICES * k, HEIGHT, WIDTH), "uint8", (4, HEIGHT, WIDTH),
                                 PixelSize(PIXEL_NM, "nanometer"))
            for i in range(k):
                array[i * SLICES:(i + 1) * SLICES] = images
    return paths


def tree_rss(pid: int) -> int:
    import psutil

    try:
        root = psutil.Process(pid)
        total = 0
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):  # a process may end between the two calls
                total += proc.memory_info().rss
        return total
    except psutil.NoSuchProcess:
        return 0


def run_segment(model: Path, source: Path, out: Path, workers: int) -> dict:
    """One CLI run; returns its wall time, its chunk time (from the CLI) and peak tree RSS."""
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "exporters.infer", "segment", "--model", str(model), "--images", str(source),
           "--out", str(out), "--scheduler", "processes", "--workers", str(workers), "--device", "cpu"]
    began = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak, done = [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], tree_rss(proc.pid))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {stderr[-2000:]}")
    seconds = float(re.search(r"chunks in ([0-9.]+) s", stdout).group(1))
    return {"wall_s": time.perf_counter() - began, "chunk_s": seconds, "peak_rss_mb": peak[0] / 2**20}


def in_memory_seconds_per_slice(model: Path, source: Path) -> float:
    """The in-memory path: the whole 1x volume read into memory, Segmenter.predict slice by slice."""
    import zarr

    from exporters.runtime import Segmenter

    stack = zarr.open_array(str(source / "0"), mode="r")[:]
    seg = Segmenter(model, device="cpu")
    seg.predict(stack[0])  # warm-up
    began = time.perf_counter()
    for s in stack:
        seg.predict(s)
    return (time.perf_counter() - began) / len(stack)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,4,16", help="volume sizes, multiples of the EPFL subset")
    parser.add_argument("--ratio-size", type=int, default=4, help="size at which 2 workers are compared to 1")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench_volumes.json")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    WORK.mkdir(parents=True, exist_ok=True)
    model = build_segmenter(WORK / "segmenter_w8.onnx")
    volumes = write_volumes(sorted({*sizes, args.ratio_size}))
    cpu = machine()["cpu"]
    per_slice_memory = in_memory_seconds_per_slice(model, volumes[min(sizes)])
    rows = [{"run": "in memory (Segmenter.predict per slice)", "slices": SLICES * min(sizes), "workers": "",
             "s_per_slice": per_slice_memory, "peak_rss_mb": None, "cpu": cpu}]
    for k in sizes:
        r = run_segment(model, volumes[k], WORK / f"out_{k}x.ome.zarr", workers=2)
        rows.append({"run": f"dask {k}x", "size": k, "slices": SLICES * k, "workers": 2,
                     "s_per_slice": r["chunk_s"] / (SLICES * k), **r, "cpu": cpu})
    one = run_segment(model, volumes[args.ratio_size], WORK / "out_ratio_1w.ome.zarr", workers=1)
    two = next((r for r in rows if r.get("size") == args.ratio_size), None) or \
        run_segment(model, volumes[args.ratio_size], WORK / "out_ratio_2w.ome.zarr", workers=2)
    n = SLICES * args.ratio_size
    rows.append({"run": f"dask {args.ratio_size}x, 1 worker", "size": args.ratio_size, "slices": n,
                 "workers": 1, "s_per_slice": one["chunk_s"] / n, **one, "cpu": cpu})
    peaks = [r["peak_rss_mb"] for r in rows if r.get("workers") == 2]
    summary = {"peak_rss_spread": max(peaks) / min(peaks) - 1,
               "rss_flat_within_20pct": max(peaks) <= 1.2 * min(peaks),
               "throughput_2_vs_1_workers": one["chunk_s"] / two["chunk_s"],
               "dask_vs_in_memory_s_per_slice": rows[1]["s_per_slice"] / per_slice_memory}
    title = f"Whole volumes (768x1024 slices, phantom tiled along z; {cpu}, {machine()['cores']} cores)"
    print_table(title, rows, ["run", "slices", "workers", "s_per_slice", "chunk_s", "wall_s", "peak_rss_mb"])
    print("\n" + "\n".join(f"{k}: {v:.3g}" if isinstance(v, float) else f"{k}: {v}"
                            for k, v in summary.items()))
    write_json(args.out, {"command": "python -m bench.volumes " + " ".join(sys.argv[1:]), "rows": rows,
                          "summary": summary, "segmenter": "random residual U-Net, base width 8, depth 3, "
                          "tile 256, overlap 64, no TTA (ONNX, CPU execution provider)",
                          "note": "RSS: the summed resident memory of the command's process tree (client, "
                                  "LocalCluster nannies and workers), peak of 0.1 s samples. s_per_slice of "
                                  "dask runs: chunk time from the CLI (graph run, excluding start-up and the "
                                  "final metadata). Another training job shared the 2 cores: compare ratios "
                                  "within one run."})


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(run_cli(main))
