"""Tile throughput: TIFF on disk -> normalized float32 batches, beside a plain in-memory copy.

    python -m bench.tiles [--batch 32] [--seconds 3] [--out docs/bench_tiles.json]

Uses the real EPFL subset when it is beside the checkout, else the phantom. Goal: the store path
within 3x of copying the same bytes in memory.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench.common import EPFL, ROOT, print_table, rate, write_json
from shared.errors import run_cli
from shared.normalization import normalize
from shared.phantom import write_phantom
from shared.store import TileStore
from shared.tiles import build_store


def build_bench_store(workdir: Path) -> tuple[TileStore, str]:
    if (EPFL / "training.tif").is_file():
        images, masks, source = EPFL / "training.tif", EPFL / "training_groundtruth.tif", "EPFL CA1 subset"
    else:
        images, masks = write_phantom(workdir / "phantom", 27)
        source = "phantom (EPFL subset absent)"
    return build_store(images, masks, workdir / "store"), source


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench_tiles.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        store, source = build_bench_store(Path(tmp))
        n = len(store)
        rng = np.random.default_rng(0)
        in_memory = store.raw_images(np.arange(n)).copy()
        out = np.empty((args.batch, store.tile_size, store.tile_size), in_memory.dtype)

        def store_batch() -> int:
            idx = rng.choice(n, args.batch, replace=False)
            batch = TileStore(store.path).images(idx)  # reopen: manifest + memory maps each batch
            return len(batch)

        def store_batch_open() -> int:
            return len(store.images(rng.choice(n, args.batch, replace=False)))

        def copy_batch() -> int:
            np.take(in_memory, rng.choice(n, args.batch, replace=False), axis=0, out=out)
            return args.batch

        normalized = np.empty(out.shape, np.float32)

        def normalize_in_memory() -> int:
            normalize(in_memory[rng.choice(n, args.batch, replace=False)], out=normalized)
            return args.batch

        copy = rate(copy_batch, args.seconds)
        rows = [
            {"path": "plain copy of the uint8 bytes in memory", "tiles/s": copy, "ratio to copy": 1.0},
            {"path": "store (open) -> normalized float32",
             "tiles/s": (r1 := rate(store_batch_open, args.seconds)),
             "ratio to copy": copy / r1},
            {"path": "in-memory uint8 -> normalized float32 (the conversion alone)",
             "tiles/s": (r0 := rate(normalize_in_memory, args.seconds)), "ratio to copy": copy / r0},
            {"path": "store (reopened per batch) -> normalized float32",
             "tiles/s": (r2 := rate(store_batch, args.seconds)), "ratio to copy": copy / r2},
        ]
    print_table(f"Tile throughput, batch {args.batch}, {n} tiles of {source} (goal: ratio <= 3)", rows,
                ["path", "tiles/s", "ratio to copy"])
    write_json(args.out, {"benchmark": "tiles", "command": "python -m bench.tiles", "source": source,
                          "batch": args.batch, "rows": rows, "goal": "store within 3x of a plain copy",
                          "goal_met": rows[1]["ratio to copy"] <= 3.0})


if __name__ == "__main__":
    sys.exit(run_cli(main))
