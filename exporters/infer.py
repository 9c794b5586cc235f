"""onnxruntime inference from the command line (numpy + onnxruntime + tifffile; volumes: the extra).

    python -m exporters.infer segment --model segmenter.onnx --images STACK.tif --out DIR [--tta]
        -> DIR/probability.tif (float32) and DIR/mask.tif (uint8 {0,1}, calibrated threshold)
    python -m exporters.infer segment --model segmenter.onnx --images VOL --out OUT.ome.zarr
        [--dataset PATH --chunk Z,Y,X --workers N --scheduler threads|processes|ADDRESS]
        -> OME-Zarr: probabilities + labels/mask, chunk by chunk with dask (exporters.volumes);
           VOL: TIFF stack, zarr / OME-Zarr folder, or HDF5 file; a rerun resumes
    python -m exporters.infer generate --model-dir GEN_ONNX_DIR --masks MASKS.tif --out DIR
        [--n N --sampler ddim --steps 50 --guidance 2 --seed 0 --strength S --start-from TILES.tif]
        -> DIR/images.tif (uint8) and DIR/masks.tif (the masks they were drawn for); with --strength
           below 1 tile k starts from TILES.tif's tile k (the masks' own tiles) noised that far (SDEdit)
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from exporters.runtime import Generator, InputError, ModelFileError, Segmenter
from shared.console import on_terminal
from shared.errors import (
    ArgumentParser,
    UserError,
    non_negative_int,
    positive_float,
    positive_int,
    run_cli,
)
from shared.normalization import normalize
from shared.outputs import add_instances_flag, output_folder, write_segmentation
from shared.pixel_size import from_metadata, warn_mismatch
from shared.sampling import add_sampler_flags, settings_from_args
from shared.tiff_io import read_image_stack, read_mask_stack, read_pixel_size, write_stack

VOLUME_FLAGS = ("chunk", "workers", "scheduler", "levels", "probability_dtype")


def is_ome_zarr(path: Path) -> bool:
    return path.name.endswith(".zarr")


def read_input(args) -> np.ndarray:
    """A TIFF stack as before; a zarr or HDF5 volume read whole (the TIFF output is for small volumes)."""
    if args.images.suffix.lower() in (".tif", ".tiff") and args.dataset is None:
        return read_image_stack(args.images)
    io, _ = load_volumes()
    return io.Volume(args.images, args.dataset)[:, :, :]


def load_volumes():
    """The `volumes` extra's modules, imported only when asked for (a TIFF-only install lacks them)."""
    try:
        from exporters import volume_io, volumes  # dask, zarr, h5py
    except ImportError as exc:
        raise UserError(f"volumes need the 'volumes' extra: pip install -e '.[volumes]' ({exc.name} is "
                        "missing)") from None
    return volume_io, volumes


def segment_volume(args) -> None:
    io, engine = load_volumes()
    volume = io.Volume(args.images, args.dataset)
    pixel = io.PixelSize(tuple(args.pixel_size), io.ngff_unit(args.unit)) if args.pixel_size else None
    summary = engine.segment_volume(
        volume, args.out, str(args.model), chunk=args.chunk, scheduler=args.scheduler or "threads",
        workers=args.workers or 1, threads=args.threads, device=args.device, tta=args.tta,
        overlap=args.overlap, probability_dtype=args.probability_dtype or "float16", levels=args.levels or 1,
        pixel_size=pixel)
    size = summary["pixel_size"]
    print(f"wrote {args.out} ({volume.shape[0]} slices of {volume.shape[2]}x{volume.shape[1]}; "
          f"{summary['written']} chunks written, {summary['skipped']} already done; chunks in "
          f"{summary['seconds']:.1f} s; pixel size "
          f"{'x'.join(f'{v:g}' for v in size['zyx'])} {size['unit'] or '(no unit)'})")


def segment(args) -> None:
    if is_ome_zarr(args.out):
        if args.instances != "none":  # objects crossing chunks would need a global relabelling pass
            raise UserError(f"--instances: only for a TIFF output folder, not {args.out} (an OME-Zarr "
                            "volume is labelled chunk by chunk)")
        return segment_volume(args)
    given = [f"--{f.replace('_', '-')}" for f in VOLUME_FLAGS if getattr(args, f) is not None]
    if given:
        raise UserError(f"{', '.join(given)}: only for an OME-Zarr output (--out NAME.ome.zarr)")
    model = Segmenter(args.model, args.device, args.threads)
    stack = read_input(args)
    output_folder(args.out)
    pixel_size = read_pixel_size(args.images) if args.images.is_file() else None
    warn_mismatch(from_metadata(model.metadata), pixel_size, str(args.images))
    quiet = len(stack) < 2 or not on_terminal()  # no bar in a redirected log
    probs = np.stack([model.predict(s, tta=args.tta, overlap=args.overlap)
                      for s in tqdm(stack, desc="segment", unit="slice", disable=quiet)])
    written = write_segmentation(args.out, probs, model.threshold, pixel_size, args.instances)
    print(f"wrote {', '.join(map(str, written))} ({len(stack)} slices, threshold {model.threshold:.6g})")


def generate(args: argparse.Namespace) -> None:
    model = Generator(args.model_dir, args.device, args.threads)
    masks = read_mask_stack(args.masks)
    if masks.shape[1:] != (model.tile, model.tile):
        raise UserError(f"{args.masks}: masks are {masks.shape[2]}x{masks.shape[1]}, the generator makes "
                        f"{model.tile}x{model.tile} tiles")
    n = args.n or len(masks)
    order = np.arange(n) % len(masks)  # masks (and their tiles) reused in order
    chosen = masks[order]
    settings = settings_from_args(args)
    init = starting_tiles(args, masks.shape)[order] if settings.strength < 1 else None
    if init is None and args.start_from:
        raise UserError("--start-from is used with --strength below 1 only")
    out = output_folder(args.out)
    images = []
    for start in tqdm(range(0, n, args.batch_size), desc="generate", unit="batch", disable=not on_terminal()):
        rows = slice(start, start + args.batch_size)
        images.append(model.sample(chosen[rows], settings, args.seed, start,
                                   None if init is None else init[rows]))
    write_stack(out / "images.tif", np.concatenate(images))
    write_stack(out / "masks.tif", chosen.astype(np.uint8))
    print(f"wrote {n} tiles to {out / 'images.tif'} with their masks in {out / 'masks.tif'}")


def starting_tiles(args: argparse.Namespace, shape: tuple[int, ...]) -> np.ndarray:
    """--start-from's tiles, normalized: one per mask of --masks, the same size."""
    if not args.start_from:
        raise UserError(f"--strength {args.strength} starts from the masks' own tiles: give "
                        "--start-from TILES.tif")
    tiles = read_image_stack(args.start_from)
    if tiles.shape != shape:
        raise UserError(f"{args.start_from}: {tiles.shape} tiles for {shape} masks in {args.masks}; "
                        "one tile per mask, the same size")
    return normalize(tiles)


def triple(kind):
    """argparse type: 'a,b,c' -> three values, each checked by `kind`."""
    def parse(text: str) -> tuple:
        parts = text.split(",")
        if len(parts) != 3:
            raise argparse.ArgumentTypeError(f"expected three comma-separated values Z,Y,X, got {text!r}")
        return tuple(kind(p) for p in parts)
    return parse


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m exporters.infer", description="onnxruntime inference.")
    sub = parser.add_subparsers(dest="command", required=True)
    seg = sub.add_parser("segment", help="segment whole slices with segmenter.onnx")
    seg.add_argument("--model", type=Path, required=True)
    seg.add_argument("--images", type=Path, required=True)
    seg.add_argument("--out", type=Path, required=True)
    add_instances_flag(seg)
    seg.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                     help="average the 8 flips/rotations (default: as calibrated, from the file)")
    seg.add_argument("--overlap", type=non_negative_int, default=None,
                     help="tile overlap in pixels (default: as calibrated, from the file)")
    vol = seg.add_argument_group("volumes (--out NAME.ome.zarr; the 'volumes' extra)")
    vol.add_argument("--dataset", default=None, help="array inside an HDF5 file or zarr group")
    vol.add_argument("--chunk", type=triple(positive_int), default=None, metavar="Z,Y,X",
                     help="chunk size (default 4 slices, whole slices up to 2048x2048)")
    vol.add_argument("--workers", type=positive_int, default=None, help="threads or processes (default 1)")
    vol.add_argument("--scheduler", default=None, metavar="threads|processes|ADDRESS",
                     help="dask threads, a local cluster of processes, or a dask.distributed scheduler's "
                          "address such as tcp://host:8786 (default threads)")
    vol.add_argument("--probability-dtype", choices=("float16", "uint8", "float32"), default=None,
                     help="stored probabilities (default float16; uint8 = probability x 255)")
    vol.add_argument("--levels", type=positive_int, default=None, help="resolution levels (default 1)")
    vol.add_argument("--pixel-size", type=triple(positive_float), default=None, metavar="Z,Y,X",
                     help="voxel size (default: from the input file)")
    vol.add_argument("--unit", default="nanometer", help="unit of --pixel-size (default nanometer)")
    gen = sub.add_parser("generate", help="draw EM tiles for masks with the generator's ONNX parts")
    gen.add_argument("--model-dir", type=Path, required=True)
    gen.add_argument("--masks", type=Path, required=True, help="(N, 256, 256) mask stack")
    gen.add_argument("--out", type=Path, required=True)
    gen.add_argument("--n", type=positive_int, default=None, help="tiles (default: one per mask)")
    add_sampler_flags(gen)
    gen.add_argument("--start-from", type=Path, default=None,
                     help="(N, 256, 256) tile stack, one per mask: where --strength below 1 starts")
    gen.add_argument("--seed", type=non_negative_int, default=0)
    gen.add_argument("--batch-size", type=positive_int, default=8)
    for p in (seg, gen):
        p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
        p.add_argument("--threads", type=positive_int, default=None, help="intra-op threads")
        p.error = parser.error  # type: ignore[method-assign]
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        segment(args) if args.command == "segment" else generate(args)
    except (InputError, ModelFileError) as exc:
        raise UserError(str(exc)) from None
    except RuntimeError as exc:  # e.g. --device cuda without CUDA
        raise UserError(str(exc)) from None
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
