"""onnxruntime inference from the command line (numpy + onnxruntime + tifffile only).

    python -m exporters.infer segment --model segmenter.onnx --images STACK.tif --out DIR [--tta]
        -> DIR/probability.tif (float32) and DIR/mask.tif (uint8 {0,1}, calibrated threshold)
    python -m exporters.infer generate --model-dir GEN_ONNX_DIR --masks MASKS.tif --out DIR
        [--n N --sampler ddim --steps 50 --guidance 2 --seed 0]
        -> DIR/images.tif (uint8) and DIR/masks.tif (the masks they were drawn for)
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
from shared.errors import ArgumentParser, UserError, non_negative_int, positive_int, run_cli
from shared.sampling import add_sampler_flags, settings_from_args
from shared.tiff_io import read_image_stack, read_mask_stack, write_stack


def output_dir(path: Path) -> Path:
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: exists and is not a directory")
    if not path.parent.is_dir():
        raise UserError(f"{path.parent}: output folder does not exist")
    path.mkdir(exist_ok=True)
    return path


def segment(args: argparse.Namespace) -> None:
    model = Segmenter(args.model, args.device, args.threads)
    stack = read_image_stack(args.images)
    out = output_dir(args.out)
    probs = np.stack([model.predict(s, tta=args.tta, overlap=args.overlap)
                      for s in tqdm(stack, desc="segment", unit="slice", disable=len(stack) < 2)])
    write_stack(out / "probability.tif", probs.astype(np.float32))
    write_stack(out / "mask.tif", (probs > model.threshold).astype(np.uint8))
    print(f"wrote {out / 'probability.tif'} and {out / 'mask.tif'} ({len(stack)} slices, "
          f"threshold {model.threshold:.3f})")


def generate(args: argparse.Namespace) -> None:
    model = Generator(args.model_dir, args.device, args.threads)
    masks = read_mask_stack(args.masks)
    if masks.shape[1:] != (model.tile, model.tile):
        raise UserError(f"{args.masks}: masks are {masks.shape[2]}x{masks.shape[1]}, the generator makes "
                        f"{model.tile}x{model.tile} tiles")
    n = args.n or len(masks)
    chosen = masks[np.arange(n) % len(masks)]
    out = output_dir(args.out)
    settings = settings_from_args(args)
    images = []
    for start in tqdm(range(0, n, args.batch_size), desc="generate", unit="batch"):
        images.append(model.sample(chosen[start:start + args.batch_size], settings, args.seed, start))
    write_stack(out / "images.tif", np.concatenate(images))
    write_stack(out / "masks.tif", chosen.astype(np.uint8))
    print(f"wrote {n} tiles to {out / 'images.tif'} with their masks in {out / 'masks.tif'}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m exporters.infer", description="onnxruntime inference.")
    sub = parser.add_subparsers(dest="command", required=True)
    seg = sub.add_parser("segment", help="segment whole slices with segmenter.onnx")
    seg.add_argument("--model", type=Path, required=True)
    seg.add_argument("--images", type=Path, required=True)
    seg.add_argument("--out", type=Path, required=True)
    seg.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                     help="average the 8 flips/rotations (default: as calibrated, from the file)")
    seg.add_argument("--overlap", type=non_negative_int, default=None,
                     help="tile overlap in pixels (default: as calibrated, from the file)")
    gen = sub.add_parser("generate", help="draw EM tiles for masks with the generator's ONNX parts")
    gen.add_argument("--model-dir", type=Path, required=True)
    gen.add_argument("--masks", type=Path, required=True, help="(N, 256, 256) mask stack")
    gen.add_argument("--out", type=Path, required=True)
    gen.add_argument("--n", type=positive_int, default=None, help="tiles (default: one per mask)")
    add_sampler_flags(gen)
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
