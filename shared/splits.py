"""Train/validation/test by z blocks: contiguous runs of whole slices, never random tiles, because
neighbouring EM slices are nearly identical and a random tile split leaks."""

from __future__ import annotations

import numpy as np

from shared.errors import UserError


def block_length(n_slices: int, fraction: float) -> int:
    """Slices in a held-out block: round(n * fraction), at least 1 when fraction > 0."""
    if fraction <= 0:
        return 0
    return max(1, int(round(n_slices * fraction)))


def z_block_split(n_slices: int, val_fraction: float = 0.2, test_fraction: float = 0.0,
                  seed: int = 0) -> dict[str, list[int]]:
    """Assign each slice to 'train', 'val' or 'test'. Each held-out split is one contiguous block at
    a seeded position; the blocks never overlap and at least one training slice remains."""
    n_val, n_test = block_length(n_slices, val_fraction), block_length(n_slices, test_fraction)
    if n_slices - n_val - n_test < 1:
        raise UserError(f"{n_slices} slices cannot give {n_val} validation + {n_test} test slices "
                        "and still leave a training slice; lower --val-fraction/--test-fraction")
    rng = np.random.default_rng(seed)
    # Place the held-out blocks as two segments in a shuffled order of [train pieces, val, test].
    free = n_slices - n_val - n_test
    cuts = np.sort(rng.integers(0, free + 1, size=2))
    order = ["val", "test"] if rng.random() < 0.5 else ["test", "val"]
    lengths = {"val": n_val, "test": n_test}
    labels: list[str] = ["train"] * int(cuts[0])
    labels += [order[0]] * lengths[order[0]]
    labels += ["train"] * int(cuts[1] - cuts[0])
    labels += [order[1]] * lengths[order[1]]
    labels += ["train"] * (free - int(cuts[1]))
    return {name: [i for i, lab in enumerate(labels) if lab == name] for name in ("train", "val", "test")}


def labels_by_slice(split: dict[str, list[int]]) -> dict[int, str]:
    return {z: name for name, zs in split.items() for z in zs}


def guard_bands(split: dict[str, list[int]], guard: int, z: list[int] | None = None) -> dict[str, list[int]]:
    """Move training slices within `guard` slices of a validation or test slice to a "guard" split
    (never trained on): EM neighbours 5 nm apart are near-copies, so a block split leaks at its
    borders. `z`: each slice's position in the volume where slices are unevenly spaced (default: its
    index)."""
    if guard <= 0:
        return {**split, "guard": []}
    z = list(range(1 + max(i for s in split.values() for i in s))) if z is None else z
    held_out = [z[i] for name in ("val", "test") for i in split.get(name, [])]
    near = {i for i in split["train"] if any(abs(z[i] - h) <= guard for h in held_out)}
    if near and len(near) == len(split["train"]):
        raise UserError(f"guard bands of {guard} slices around the held-out blocks leave no training slice")
    return {**split, "train": [i for i in split["train"] if i not in near], "guard": sorted(near)}
