"""Held-out slices through bioimageio.core (its tiling, pre- and postprocessing; no project code in
that path) against segmentation_tf.evaluate on the same slices and settings.

    python -m bench.bioimageio_epfl --model RUN --store STORE [--split val] [--package PKG]
        [--pixel-size-nm 5] [--json docs/bioimageio_epfl.json]

The package is exported from RUN with exporters.bioimageio unless --package is given. Both paths
score with segmentation_tf.scores at the threshold the package states (config.emsynth.threshold);
evaluate runs without TTA at an overlap of 2 x the package's halo, the windows bioimageio.core cuts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tifffile

from bench.common import ROOT, print_table, shown, shown_command, write_json
from segmentation_tf.scores import score
from segmentation_tf.slices import store_slices
from shared.errors import ArgumentParser, UserError, positive_float, run_cli
from shared.store import TileStore


def held_out(store_path: Path, split: str) -> tuple[list[tuple[str, int]], np.ndarray, np.ndarray]:
    """The split's whole slices: their (file, z), raw pixels straight from the TIFF, and masks."""
    store = TileStore(store_path)
    keys = sorted({(str(r["file"]), int(r["slice"])) for r in (store.records[int(i)]
                                                               for i in store.indices(split))})
    if not keys:
        raise UserError(f"{store_path}: no '{split}' tiles")
    raw = []
    for file, z in keys:
        with tifffile.TiffFile(file) as tif:
            raw.append(tif.pages[z].asarray())
    _, masks = store_slices(store, split)  # the masks segmentation_tf.evaluate scores against
    return keys, np.stack(raw), masks


def run(module: str, *args: object) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if proc.returncode != 0:
        raise RuntimeError(f"{module} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return proc


def core_probabilities(package: Path, raw: np.ndarray, block: int | None, n: int | None
                       ) -> tuple[np.ndarray, float]:
    """bioimageio.core's prediction of (N, H, W) raw slices: fixed blocks of `block` px (halo
    included), or blocks of the size parameter `n` (min + n * step), or with neither the whole slice
    at once (padded by the halo). Returns probabilities and seconds."""
    from bioimageio.core import create_prediction_pipeline, load_description
    from bioimageio.core.digest_spec import create_sample_for_model

    descr = load_description(package)
    start = time.perf_counter()
    out = []
    # what bioimageio.core.predict does per call, with one pipeline for all slices (predict() itself
    # loads and unloads the pipeline it is given, so it cannot be called inside `with pipeline`)
    with create_prediction_pipeline(descr, devices=["CPUExecutionProvider"]) as pp:
        for z, image in enumerate(raw):
            sample = create_sample_for_model(descr, inputs={"raw": image[None, ..., None]}, sample_id=z)
            if block is not None:
                shape = {"raw": {"batch": 1, "y": block, "x": block, "channel": 1}}
                result = pp.predict_sample_with_fixed_blocking(sample, input_block_shape=shape)
            elif n is not None:  # core reads n = 0 as "unset" (its default, 10): n >= 1 here
                result = pp.predict_sample_with_blocking(sample, ns=n)
            else:
                result = pp.predict_sample_without_blocking(sample)
            out.append(result.members["probability"].data.to_numpy()[0, ..., 0])
    return np.stack(out), time.perf_counter() - start


def runtime_probabilities(package: Path, raw: np.ndarray, overlap: int, tmp: Path
                          ) -> tuple[np.ndarray, float]:
    """The project's onnxruntime path (exporters.runtime, the tiler evaluate uses) on the package's ONNX
    file: the same figure as evaluate, with probabilities to compare pixel by pixel."""
    from exporters.runtime import Segmenter

    onnx_path = package / "segmenter.onnx"
    if not package.is_dir():
        with zipfile.ZipFile(package) as zf:
            onnx_path = Path(zf.extract("segmenter.onnx", tmp))
    seg = Segmenter(onnx_path, device="cpu")
    start = time.perf_counter()
    probs = np.stack([seg.predict(image, tta=False, overlap=overlap) for image in raw])
    return probs, time.perf_counter() - start


def band_ious(probs: np.ndarray, masks: np.ndarray, threshold: float, width: int) -> dict[str, float]:
    """IoU inside the slices and in the `width`-pixel band along their borders, where the tilers once
    differed (bioimageio.core mirrored the slice by the halo, the project's tiler did not: 0.47 vs 0.51
    in the band); both mirror it now."""
    band = np.zeros(probs.shape[1:], bool)
    band[:width], band[-width:], band[:, :width], band[:, -width:] = True, True, True, True
    return {"iou_interior": score(probs[:, ~band], masks[:, ~band], threshold)["iou"],
            "iou_border_band": score(probs[:, band], masks[:, band], threshold)["iou"]}


def package_settings(package: Path) -> dict:
    from bioimageio.spec import load_description

    descr = load_description(package, perform_io_checks=False)
    out_axes = descr.outputs[0].axes
    return {"threshold": float(descr.config.model_extra["emsynth"]["threshold"]),
            "halo": int(getattr(out_axes[1], "halo", 0)), "min": int(descr.inputs[0].axes[1].size.min),
            "step": int(descr.inputs[0].axes[1].size.step)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m bench.bioimageio_epfl", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="segmenter run folder")
    parser.add_argument("--store", type=Path, required=True, help="the tile store whose split is held out")
    parser.add_argument("--split", default="val", choices=("val", "test", "train"))
    parser.add_argument("--package", type=Path, help="an exported package (default: export one now)")
    parser.add_argument("--pixel-size-nm", type=positive_float, default=5.0)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    keys, raw, masks = held_out(args.store, args.split)
    with tempfile.TemporaryDirectory() as tmp:
        package = args.package
        if package is None:
            package = Path(tmp) / "package"
            run("exporters.bioimageio", "--model", args.model, "--out", package,
                "--pixel-size-nm", args.pixel_size_nm)
        settings = package_settings(package / "rdf.yaml" if package.is_dir() else package)
        overlap = 2 * settings["halo"]
        start = time.perf_counter()
        run("segmentation_tf.evaluate", "--model", args.model, "--store", args.store, "--split", args.split,
            "--no-tta", "--overlap", overlap, "--json", Path(tmp) / "evaluate.json")
        evaluate = json.loads((Path(tmp) / "evaluate.json").read_text())
        evaluate_seconds = time.perf_counter() - start
        rows = [{"path": "segmentation_tf.evaluate (Keras, blended windows)", "iou": evaluate["iou"],
                 "dice": evaluate["dice"], "threshold": evaluate["threshold"], "seconds": evaluate_seconds}]
        threshold, halo = settings["threshold"], settings["halo"]
        probs, seconds = runtime_probabilities(package, raw, overlap, Path(tmp))
        rows.append({"path": "exporters.runtime (ONNX, the same tiler as evaluate)",
                     **score(probs, masks, threshold), **band_ious(probs, masks, threshold, halo),
                     "threshold": threshold, "seconds": seconds})
        source = package / "rdf.yaml" if package.is_dir() else package
        tile = settings["min"]
        paths = [(f"bioimageio.core blocks of {tile} px, halo cropped (main figure)", tile, None),
                 ("bioimageio.core blocksize parameter n=10 (bioimageio predict --blockwise)", None, 10),
                 ("bioimageio.core whole slice, halo padding", None, None)]
        for label, block, n in paths:
            probs, seconds = core_probabilities(source, raw, block, n)
            rows.append({"path": label, **score(probs, masks, threshold),
                         **band_ious(probs, masks, threshold, halo), "threshold": threshold,
                         "seconds": seconds})
    for r in rows:
        r.pop("slices", None)
        r["iou_minus_evaluate"] = r["iou"] - rows[0]["iou"]
    print_table(f"{len(keys)} held-out slices ({args.split} split of {args.store}); border band = "
                f"the outer {halo} px", rows,
                ["path", "iou", "iou_minus_evaluate", "iou_interior", "iou_border_band", "dice", "seconds"])
    if args.json:
        import bioimageio.core
        import bioimageio.spec

        write_json(args.json, {
            "command": shown_command("bench.bioimageio_epfl", list(map(str, argv or sys.argv[1:]))),
            "model": shown(args.model), "store": shown(args.store), "split": args.split,
            "slices": [{"file": shown(f), "z": z} for f, z in keys], "tta": False, "overlap": overlap,
            "package": settings, "versions": {"bioimageio.core": bioimageio.core.__version__,
                                              "bioimageio.spec": bioimageio.spec.__version__},
            "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
