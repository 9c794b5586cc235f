"""Tile-store command line.

    python -m shared.tiles build --images STACK.tif --masks MASKS.tif --out STORE
    python -m shared.tiles build --images STACK.tif --out STORE     (images only: an unlabelled store)
    python -m shared.tiles build --images STACK.tif --masks MASKS.tif --annotated AREA.tif --out STORE
                                                     (masks drawn only where AREA > 0: partial annotations)
    python -m shared.tiles info STORE
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.atomic import umask_value
from shared.errors import ArgumentParser, UserError, fraction, non_negative_int, positive_int, run_cli
from shared.splits import guard_bands, labels_by_slice, z_block_split
from shared.store import TileStore
from shared.tiff_io import read_image_stack, read_matching_masks, read_pair, read_pixel_size
from shared.tiling import TILE, tile_slice


@dataclass(frozen=True)
class BuildConfig:
    tile: int = TILE
    val_fraction: float = 0.2
    test_fraction: float = 0.0
    seed: int = 0
    # training slices within this many slices of a held-out block go to a "guard" split, never trained
    # on (0: none). Real EM stacks want 1 or 2: slices 5 nm apart are near-copies and leak across a
    # block border; the phantom's slices are independent draws
    guard: int = 0


def tile_stack(images: np.ndarray, masks: np.ndarray | None, source: str, split_of: dict[int, str],
               tile: int = TILE) -> tuple[np.ndarray, np.ndarray | None, list[dict]]:
    """All slices of a stack -> tiles, masks (None without) and one manifest record per tile."""
    all_images, all_masks, records = [], [], []
    for z in range(images.shape[0]):
        tiles, origins = tile_slice(images[z], tile)
        all_images.append(tiles)
        if masks is not None:
            all_masks.append(tile_slice(masks[z], tile)[0])
        records += [{"source": "real", "file": source, "slice": z, "y": y, "x": x,
                     "height": int(images.shape[1]), "width": int(images.shape[2]), "split": split_of[z]}
                    for y, x in origins]
    return np.concatenate(all_images), np.concatenate(all_masks) if all_masks else None, records


def tile_pages(stack: np.ndarray, tile: int = TILE) -> np.ndarray:
    """Every page of a (Z, H, W) stack cut into tiles, in tile_stack's order (e.g. annotated areas
    beside the images tile_stack cut)."""
    return np.concatenate([tile_slice(page, tile)[0] for page in stack])


def build_store(images_path: Path, masks_path: Path | None, out: Path, config: BuildConfig = BuildConfig(),
                annotated_path: Path | None = None) -> TileStore:
    """Validate the stacks, split by z blocks, tile, and write a new store at `out` atomically
    (built in a temp folder beside it, renamed at the end: bad input leaves nothing behind).
    No masks_path: an images-only store (for --unlabelled-store). annotated_path: a stack of the
    areas where the masks were drawn (> 0), the rest unknown: a partially annotated store."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: output exists and is not empty")
    if not out.parent.is_dir():
        raise UserError(f"{out.parent}: output folder does not exist")
    if masks_path is None:
        if annotated_path is not None:
            raise UserError(f"{annotated_path}: annotated areas need --masks")
        images, masks = read_image_stack(images_path), None
    else:
        images, masks = read_pair(images_path, masks_path)
    annotated = None if annotated_path is None else read_matching_masks(annotated_path, images, images_path)
    if annotated is not None and not annotated.any():
        raise UserError(f"{annotated_path}: no pixel is marked annotated (> 0)")
    blocks = z_block_split(images.shape[0], config.val_fraction, config.test_fraction, config.seed)
    split = guard_bands(blocks, config.guard)
    tiles, mask_tiles, records = tile_stack(images, masks, str(images_path), labels_by_slice(split),
                                            config.tile)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o777 & ~umask_value())
    try:
        store = TileStore.create(tmp, config.tile, has_masks=masks is not None,
                                 pixel_size=read_pixel_size(images_path))
        annotated_tiles = None if annotated is None else tile_pages(annotated, config.tile)
        store.append(tiles, mask_tiles, records, annotated=annotated_tiles)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return TileStore(out)


def format_summary(summary: dict) -> str:
    lines = [f"{summary['path']}: {summary['tiles']} {summary['kind']} tiles of "
             f"{summary['tile_size']}x{summary['tile_size']}"
             + ("" if summary.get("masks", True) else " (images only: no masks)")
             + (f", pixel size {summary['pixel_size']['x']:g} nm" if summary.get("pixel_size") else ""),
             f"{'split':<6} {'tiles':>6} {'slices':>6} {'fg frac':>8} {'mean':>7} {'std':>6} "
             f"{'min':>6} {'max':>6}"]
    partial = any("annotated_fraction" in s for s in summary["splits"].values())
    lines[-1] += f" {'annotated':>9}" if partial else ""
    for name, s in summary["splits"].items():
        fg = "-" if s["foreground_fraction"] is None else f"{s['foreground_fraction']:.4f}"
        lines.append(f"{name:<6} {s['tiles']:>6} {s['slices']:>6} {fg:>8} "
                     f"{s['mean']:>7.3f} {s['std']:>6.3f} {s['min']:>6.2f} {s['max']:>6.2f}"
                     + (f" {s['annotated_fraction']:>9.4f}" if partial else ""))
    lines.append("(intensities in the normalized [-1, 1] space" + ("; fg frac: of the annotated pixels)"
                                                                 if partial else ")"))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m shared.tiles", description="Build and inspect tile stores.")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="ingest an image stack (+ mask stack) into a new store")
    build.add_argument("--images", type=Path, required=True, help="image TIFF stack")
    build.add_argument("--masks", type=Path, help="mask TIFF stack (same shape); without it an images-only "
                       "store for --unlabelled-store")
    build.add_argument("--annotated", type=Path, metavar="AREA.tif",
                       help="stack of the areas where --masks were drawn (> 0; same shape): the rest is "
                            "unknown, left out of the segmenter's loss (partial annotations)")
    build.add_argument("--out", type=Path, required=True, help="new store folder")
    build.add_argument("--val-fraction", type=fraction, default=BuildConfig.val_fraction)
    build.add_argument("--test-fraction", type=fraction, default=BuildConfig.test_fraction)
    build.add_argument("--seed", type=int, default=BuildConfig.seed, help="seed of the z-block placement")
    build.add_argument("--guard", type=non_negative_int, default=BuildConfig.guard,
                       help="training slices within this many slices of a validation/test block are kept "
                            "out of training (split 'guard'); 1-2 for real EM stacks, whose neighbours "
                            "are near-copies (default: 0)")
    build.add_argument("--tile", type=positive_int, default=TILE)
    info = sub.add_parser("info", help="counts per split, foreground fraction, intensity statistics")
    info.add_argument("store", type=Path)
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    for p in (build, info):
        p.error = parser.error  # type: ignore[method-assign]  # one-line errors for subcommands too
    args = parser.parse_args(argv)
    if args.command == "build":
        config = BuildConfig(args.tile, args.val_fraction, args.test_fraction, args.seed, args.guard)
        store = build_store(args.images, args.masks, args.out, config, args.annotated)
        print(format_summary(store.summary()))
    else:
        summary = TileStore(args.store).summary()
        print(json.dumps(summary, indent=1) if args.json else format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
