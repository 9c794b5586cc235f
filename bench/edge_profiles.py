"""How generated tiles draw their objects where their masks say the objects end, against real slices.

    python -m bench.edge_profiles                  # every drawn store the evidence grids left in runs/

Classifier-free guidance above 1 pushes a tile toward what its mask predicts: darker matrix, brighter
surround, a harder edge. Histogram W1 and spectrum distance pool every pixel and cannot see it; the
mask-fidelity judge rewards it. This measures it directly: the mean intensity at each distance
(-8 .. 8 px) from the mask boundary (generation_torch.metrics.edge_profile), the object contrast
(outside minus inside, 2-8 px from the boundary), and the mean absolute difference of the profiles
against the held-out test block and against the k labelled slices the generator's masks came from.
Real sets give the floors: the labelled slices, the whole training pool and the validation block
against the test block.

Reads the drawn stores (gen_k*/<generator>/synthetic_*) and real stores of each grid folder under
--work (weights and tiles stay out of git: a fresh machine measures what its own grids drew). No
training, seconds per store. Writes docs/edge_profiles.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from bench.common import ROOT, print_table, write_json
from generation_torch.metrics import EDGE_REACH, edge_profile, object_contrast, profile_distance
from shared.errors import UserError, run_cli
from shared.store import TileStore

COLUMNS = ["preset", "set", "k", "guidance", "texture", "masks", "tiles", "object_contrast",
           "edge_profile_l1", "edge_profile_l1_labelled"]


def profile_of(tiles: TileStore, split: str | None = None) -> tuple[np.ndarray, int]:
    """The store's edge profile (of its `split`, or every tile) and its tile count."""
    idx = tiles.indices(split)
    return edge_profile(tiles.images(idx), tiles.masks(idx), EDGE_REACH), len(idx)


def drawn_sampling(tiles: TileStore) -> dict:
    """The sampling a drawn store records (every record of one store shares it)."""
    first = tiles.records[0] if len(tiles) else {}
    return {"guidance": first.get("guidance"), "texture": first.get("texture", 0.0),
            "masks": first.get("mask_layout", "labelled")}  # composed layouts say so; older stores don't


def grid_rows(grid: Path) -> list[dict]:
    """Floors and drawn stores of one grid folder (a preset's scratch folder)."""
    test, n_test = profile_of(TileStore(grid / "test_store"))
    labelled: dict[int, np.ndarray] = {}
    rows = []
    for k_dir in sorted(grid.glob("k*/labelled_store/manifest.json")):
        k = int(k_dir.parent.parent.name[1:])
        labelled[k], n = profile_of(TileStore(k_dir.parent), "train")
        name = "real: the whole training pool" if k == 0 else f"real: {k} labelled slice{'s' * (k > 1)}"
        rows.append({"set": name, "k": k, "tiles": n, "object_contrast": object_contrast(labelled[k]),
                     "edge_profile_l1": profile_distance(labelled[k], test)})
    if labelled:  # every labelled store holds the validation block as its val split
        val, n = profile_of(TileStore(next(grid.glob("k*/labelled_store"))), "val")
        rows.append({"set": "real: the validation block", "tiles": n, "object_contrast": object_contrast(val),
                     "edge_profile_l1": profile_distance(val, test)})
    rows.append({"set": "real: the test block", "tiles": n_test,
                 "object_contrast": object_contrast(test), "edge_profile_l1": 0.0})
    for manifest in sorted(grid.glob("gen_k*/*/synthetic_*/manifest.json")):
        store, tiles = manifest.parent, TileStore(manifest.parent)
        k = int(store.parent.parent.name.removeprefix("gen_k"))
        drawn, n = profile_of(tiles)
        row = {"set": f"{store.parent.name}/{store.name}", "k": k, **drawn_sampling(tiles), "tiles": n,
               "object_contrast": object_contrast(drawn), "edge_profile_l1": profile_distance(drawn, test)}
        if k in labelled:
            row["edge_profile_l1_labelled"] = profile_distance(drawn, labelled[k])
        rows.append(row)
    return [{"preset": grid.name, **{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}}
            for r in rows]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "evidence",
                        help="the evidence grids' scratch folder (one subfolder per preset)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "edge_profiles.json")
    args = parser.parse_args(argv)
    grids = sorted(p.parent.parent for p in args.work.glob("*/test_store/manifest.json"))
    if not grids:
        raise UserError(f"{args.work}: no evidence grid folder with a test_store (run bench.evidence first)")
    rows = [row for grid in grids for row in grid_rows(grid)]
    print_table("object contrast and edge profiles (intensity vs distance to the mask boundary)", rows,
                COLUMNS)
    write_json(args.out, {"command": " ".join(["python -m bench.edge_profiles", *(argv or sys.argv[1:])]),
                          "reach_px": EDGE_REACH,
                          "note": "object_contrast: mean intensity 2-8 px outside the mask minus 2-8 px "
                                  "inside (normalized [-1, 1] units); edge_profile_l1: mean absolute "
                                  "difference of the profiles against the test block (_labelled: against "
                                  "the k labelled slices the masks came from)",
                          "rows": rows})


if __name__ == "__main__":
    sys.exit(run_cli(main))
