"""bench.regions and bench.label_budget: region placement, the region store, the probe's rows, and
resuming cell by cell."""

import argparse
import json
from dataclasses import asdict

import numpy as np
import pytest

import bench.label_budget as lb
from bench.label_budget import gaps_to_pool, grid_real_only, summary_row
from bench.regions import Region, budget_label, budget_order, nested_regions, parse_budget, region_store
from segmentation_tf.slices import slices_of
from shared.errors import UserError
from shared.phantom import phantom_stack
from shared.store import TileStore


def two_blobs() -> np.ndarray:
    mask = np.zeros((8, 8), np.uint8)
    mask[0:2, 0:2] = 1   # 4 px
    mask[4:8, 4:8] = 1   # 16 px: the slice's fraction is 20/64 = 0.3125
    return mask


def test_regions_nest_and_sit_nearest_the_slice_fraction():
    # size 4 on a stride of 2: fractions 0.25 at (0, 0) and (2, 2) (a tie: row-major first), 0.5 at
    # (2, 4) and (4, 2), 1 at (4, 4), 0 elsewhere; size 2 inside (0, 0, 4): 1 at (0, 0), 0 at the rest
    big, small = nested_regions(two_blobs(), (2, 4), stride=2)
    assert big == Region(4, 0, 0, 0.25)
    assert small == Region(2, 0, 2, 0.0)


def test_a_region_larger_than_the_slice_is_refused():
    with pytest.raises(UserError, match="a 16 px region does not fit in a 8x8 slice"):
        nested_regions(two_blobs(), (16,))


def test_the_region_store_trains_on_the_region_alone(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 512, 512), np.uint8)
    masks = rng.integers(0, 2, (3, 512, 512), np.uint8)
    region = Region(256, 128, 64, 0.5)
    (tmp_path / "s.tmp").mkdir()  # a killed build's leftover is replaced
    path = region_store(tmp_path / "s", images, masks, 1, region, [2])
    store = TileStore(path)
    train, val = store.indices("train"), store.indices("val")
    assert len(train) == 1 and len(val) == 4
    assert store.records[int(train[0])]["slice"] == 1
    assert store.records[int(train[0])]["region"] == [128, 64, 256]
    assert {store.records[int(i)]["slice"] for i in val} == {2}
    # the slice random crops read from is the region itself, nothing around it
    (_, mask), = slices_of(store, train)
    np.testing.assert_array_equal(mask, masks[1, 128:384, 64:320])
    np.testing.assert_array_equal(store.raw_images(train)[0], images[1, 128:384, 64:320])
    assert not (tmp_path / "s.tmp").exists()
    assert region_store(tmp_path / "s", images[::-1], masks, 0, region, [0]) == path  # built once
    assert len(TileStore(path)) == 5


def test_summary_rows_carry_a_t_interval_from_two_seeds():
    row = summary_row("x", [{"seed": 1, "precision": "float32", "test_iou": 0.9},
                            {"seed": 0, "precision": "float32", "test_iou": 0.8}])
    # mean 0.85, sd 0.0707107, t(0.975, 1) = 12.7062: half width 12.7062 * 0.0707107 / sqrt(2) = 0.63531
    assert row == {"labelled": "x", "seeds": [0, 1], "precision": "float32", "test_iou": 0.85,
                   "ci95": [0.2147, 1.4853]}
    assert "ci95" not in summary_row("y", [{"seed": 0, "precision": "bf16", "test_iou": 0.8}])


def test_gaps_are_paired_with_the_whole_pool_of_the_same_seed():
    grid = {"a": {"arm": "real_only", "k": 0, "seed": 0, "test_iou": 0.887, "precision": "float32"},
            "b": {"arm": "real_only", "k": 2, "seed": 1, "test_iou": 0.9, "precision": "float32"}}
    records = {"region=256|seed=0": {"seed": 0, "test_iou": 0.8, "precision": "float32"},
               "region=256|seed=1": {"seed": 1, "test_iou": 0.7, "precision": "float32"}}
    assert gaps_to_pool(records, grid) == [{"cell": "region=256|seed=0", "gap_to_whole_pool": 0.087,
                                            "same_precision": True}]


def test_finished_cells_are_skipped_on_rerun(tmp_path, monkeypatch):
    images, masks = phantom_stack(27, seed=0)
    monkeypatch.setattr(lb, "load_volume", lambda: (images, masks, "phantom"))
    monkeypatch.setattr(lb, "slice_positions", lambda: None)
    monkeypatch.setattr(lb, "native_precision", lambda: "float32")
    trained = []

    def fake_cell(size, seed, base):
        trained.append((size, seed))
        return {"seed": seed, "test_iou": 0.5 + size / 1000, "val_iou": 0.5, "minutes": 1.0,
                "precision": "float32", "region": asdict(base.region(f"{size}px"))}

    monkeypatch.setattr(lb, "run_region", fake_cell)
    argv = ["--size", "256", "--size", "512", "--work", str(tmp_path / "w"), "--json",
            str(tmp_path / "r.json"), "--no-xla"]
    lb.main(argv)
    lb.main([*argv, "--seed", "0", "--seed", "1"])
    assert trained == [(256, 0), (512, 0), (256, 1), (512, 1)]
    saved = json.loads((tmp_path / "r.json").read_text())
    assert sorted(saved["results_by_cell"]) == ["region=256|seed=0", "region=256|seed=1",
                                                "region=512|seed=0", "region=512|seed=1"]
    assert saved["rows"][0]["test_iou"] == 0.756 and saved["rows"][0]["seeds"] == [0, 1]
    assert set(saved["regions"]) == {"256", "512"}
    # one size alone lies where the grid's nesting puts it (inside the 512 px region), so it pairs
    lb.main(["--size", "256", "--seed", "2", *argv[4:]])
    again = json.loads((tmp_path / "r.json").read_text())
    assert again["regions"]["256"] == saved["regions"]["256"] and trained[-1] == (256, 2)
    # a recorded cell whose region moved runs again
    again["results_by_cell"]["region=256|seed=0"]["region"]["x"] += 64
    (tmp_path / "r.json").write_text(json.dumps(again))
    lb.main(["--size", "256", "--seed", "0", "--seed", "2", *argv[4:]])
    assert trained[-1] == (256, 0) and len(trained) == 6


def test_budgets_order_by_labelled_pixels_and_bad_ones_are_one_line():
    budgets = [0, 2, "512px", 1, "256px"]
    assert sorted(budgets, key=budget_order) == ["256px", "512px", 1, 2, 0]
    assert [budget_label(k) for k in ("256px", 1, 2, 0)] == ["256 px region", "1 slice", "2 slices",
                                                             "whole pool"]
    assert parse_budget("4") == 4 and parse_budget("256px") == "256px"
    for bad in ("px", "-2px", "0px", "256 px", "two"):
        with pytest.raises(argparse.ArgumentTypeError, match="labelled budget"):
            parse_budget(bad)
    with pytest.raises(UserError, match="labelled budget '256'"):  # a region names its unit
        budget_order("256")


def test_grid_rows_name_regions_and_slices_fewest_pixels_first():
    grid = {f"{k}{s}": {"arm": "real_only", "k": k, "seed": s, "test_iou": 0.5 + s / 10,
                        "precision": "float32"} for k in (0, 1, "256px") for s in (0, 1)}
    rows = grid_real_only(grid)
    assert [r["labelled"] for r in rows] == ["256 px region (grid)", "1 slice (grid)", "whole pool (grid)"]
    assert rows[0]["test_iou"] == 0.55 and rows[0]["seeds"] == [0, 1]
