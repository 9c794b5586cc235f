"""bench.edge_profiles: object contrast and edge profiles of drawn and real stores, by hand."""

import json

import numpy as np
import pytest

from bench import edge_profiles
from bench.synthetic_ablation import make_store
from shared.errors import run_cli
from shared.store import TileStore


def disc_slices(n: int, inside: int, outside: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:256, :256]
    mask = ((yy - 128) ** 2 + (xx - 128) ** 2 <= 40**2).astype(np.uint8)
    image = np.where(mask > 0, inside, outside).astype(np.uint8)
    return np.repeat(image[None], n, 0), np.repeat(mask[None], n, 0)


def test_drawn_objects_against_the_test_block_by_hand(tmp_path, capsys):
    grid = tmp_path / "matched"
    for folder in ("k1", "gen_k1/gen_a"):
        (grid / folder).mkdir(parents=True)
    images, masks = disc_slices(3, inside=64, outside=192)       # real: x = pixel / 127.5 - 1
    make_store(grid / "test_store", images, masks, [0, 1, 2], [])
    make_store(grid / "k1" / "labelled_store", images, masks, [0], [1, 2])
    drawn, drawn_masks = disc_slices(2, inside=0, outside=255)   # twice the contrast
    record = {"source": "synthetic", "guidance": 3.0, "texture": 1.0, "mask_layout": "composed"}
    store = TileStore.create(grid / "gen_k1" / "gen_a" / "synthetic_g3", kind="synthetic")
    store.append(drawn, drawn_masks, [record] * 2)

    assert run_cli(edge_profiles.main, ["--work", str(tmp_path), "--out", str(tmp_path / "e.json")]) == 0
    rows = {r["set"]: r for r in json.loads((tmp_path / "e.json").read_text())["rows"]}
    real_contrast = (192 - 64) / 127.5
    assert rows["real: the test block"]["object_contrast"] == pytest.approx(real_contrast, abs=1e-4)
    assert rows["real: the validation block"]["edge_profile_l1"] == 0.0
    row = rows["gen_a/synthetic_g3"]
    assert row["object_contrast"] == pytest.approx(2.0, abs=1e-4)
    assert row["edge_profile_l1"] == pytest.approx((64 / 127.5 + 63 / 127.5) / 2, abs=1e-4)
    assert row["edge_profile_l1_labelled"] == row["edge_profile_l1"]
    assert (row["k"], row["guidance"], row["texture"], row["masks"]) == (1, 3.0, 1.0, "composed")
    assert row["tiles"] == 2


def test_no_grid_is_a_one_line_error(tmp_path, capsys):
    assert run_cli(edge_profiles.main, ["--work", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path}: no evidence grid folder" in err and "Traceback" not in err
