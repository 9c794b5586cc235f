"""Where a trainer's real tiles come from: a tile store, a pair of TIFF stacks, or (no data flags)
the built-in phantom. Stacks and the phantom are ingested into a store inside the run folder once."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from shared.errors import UserError
from shared.phantom import PhantomConfig, write_phantom
from shared.store import MANIFEST, TileStore
from shared.tiles import BuildConfig, build_store

# The default run folders that chain the three documented commands with no other flags:
# generation_torch.train -> generation_torch.sample -> segmentation_tf.fit --synthetic-ratio R
DEFAULT_GENERATOR_RUN = Path("runs/generator")
DEFAULT_SYNTHETIC_STORE = Path("runs/synthetic_store")


def default_synthetic_store() -> Path:
    """The store `generation_torch.sample` writes by default; a one-line error naming the commands
    that make it where it does not exist yet."""
    if not (DEFAULT_SYNTHETIC_STORE / MANIFEST).exists():
        raise UserError(f"no synthetic store at {DEFAULT_SYNTHETIC_STORE} (give --synthetic-store, or make "
                        "it with: python -m generation_torch.train, then python -m generation_torch.sample)")
    return DEFAULT_SYNTHETIC_STORE


@dataclass(frozen=True)
class DataSource:
    store: Path | None = None
    images: Path | None = None
    masks: Path | None = None
    annotated: Path | None = None  # where the masks were drawn (> 0): partial annotations
    phantom_slices: int = 10
    val_fraction: float = 0.2
    test_fraction: float = 0.0
    split_seed: int = 0


def add_data_flags(parser: argparse.ArgumentParser) -> None:
    """--store, or --images + --masks; neither means the built-in phantom."""
    group = parser.add_argument_group("data (default: the built-in phantom)")
    group.add_argument("--store", type=Path, help="real tile store (python -m shared.tiles build)")
    group.add_argument("--images", type=Path, help="image TIFF stack (with --masks)")
    group.add_argument("--masks", type=Path, help="mask TIFF stack (with --images)")
    group.add_argument("--annotated", type=Path, metavar="AREA.tif",
                       help="where --masks were drawn (> 0; with --images/--masks): the rest is left out of "
                            "the segmenter's loss")
    group.add_argument("--val-fraction", type=float, default=0.2, help="z-block validation share (stacks)")
    group.add_argument("--split-seed", type=int, default=0, help="seed of the z-block split (stacks)")


def source_from_args(args: argparse.Namespace) -> DataSource:
    if (args.images is None) != (args.masks is None):
        raise UserError("--images and --masks go together")
    if args.store is not None and args.images is not None:
        raise UserError("give either --store or --images/--masks, not both")
    if args.annotated is not None and args.images is None:
        raise UserError("--annotated goes with --images/--masks (a store keeps its own: shared.tiles build "
                        "--annotated)")
    if not 0.0 < args.val_fraction < 1.0:
        raise UserError(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    return DataSource(args.store, args.images, args.masks, args.annotated, val_fraction=args.val_fraction,
                      split_seed=args.split_seed)


def resolve_real_store(source: DataSource, workdir: Path) -> TileStore:
    """Open the store the source names, ingesting stacks or the phantom into workdir/real_store once."""
    if source.store is not None:
        store = TileStore(source.store)
    else:
        target = workdir / "real_store"
        if not (target / MANIFEST).exists():
            workdir.mkdir(parents=True, exist_ok=True)
            images, masks = source.images, source.masks
            if images is None:
                images, masks = write_phantom(workdir / "phantom", source.phantom_slices, seed=0,
                                              config=PhantomConfig())
            config = BuildConfig(val_fraction=source.val_fraction, test_fraction=source.test_fraction,
                                 seed=source.split_seed)
            build_store(images, masks, target, config, source.annotated)
        store = TileStore(target)
    if not store.has_masks:
        raise UserError(f"{store.path}: images only (built without --masks), and training needs masks; "
                        "pass it as --unlabelled-store, or rebuild it with --masks")
    for split in ("train", "val"):
        if len(store.indices(split)) == 0:
            raise UserError(f"{store.path}: no '{split}' tiles after the split")
    return store


def open_unlabelled_store(path: Path, tile_size: int, flag: str = "--unlabelled-store") -> TileStore:
    """A store whose training images are used without their masks: checked like --store, and its
    tiles must be the size of the labelled ones."""
    try:
        store = TileStore(path)
    except UserError as exc:
        raise UserError(f"{flag} {exc}") from None
    if len(store.indices("train")) == 0:
        raise UserError(f"{flag} {store.path}: no 'train' tiles")
    if store.tile_size != tile_size:
        raise UserError(f"{flag} {store.path}: holds {store.tile_size}px tiles, the labelled store "
                        f"{tile_size}px")
    return store
