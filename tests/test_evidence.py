"""The evidence instrument's bookkeeping: paired statistics against hand-computed values, which slices
reach which trainer, the cell order with its validation choice, and resumption (the trainings
themselves run in `python -m bench.evidence`, not here)."""

import json
import math
import re
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest

from bench import evidence
from bench.evidence import (
    Bench,
    Cell,
    EvidenceConfig,
    Layout,
    cells,
    chosen_ratio,
    gain_rows,
    noise_floor,
    reference_row,
    segmenter_flags,
)
from bench.evidence import main as evidence_main
from bench.stats import paired_interval, seeds_needed, t_interval
from shared.errors import run_cli
from shared.phantom import PhantomConfig, phantom_stack
from shared.store import TileStore


def fake_trainers(calls: list):
    """A stand-in for bench's `run`: records each command and writes the product its caller checks for
    (a predicted mask stack of all foreground for segmentation_tf.predict)."""
    from shared.tiff_io import read_image_stack, write_stack

    def fake_run(args, log):
        calls.append(args)
        out = Path(args[args.index("--out") + 1])
        if args[0] in ("generation_torch.sample", "generation_torch.copy_paste"):
            # as a tile store is created: into an existing folder only
            assert out.parent.is_dir(), f"{out.parent}: output folder does not exist"
        out.mkdir(parents=True, exist_ok=True)
        if args[0] == "segmentation_tf.predict":
            shape = read_image_stack(args[args.index("--images") + 1]).shape
            write_stack(out / "mask.tif", np.ones(shape, np.uint8))
            return
        product = {"generation_torch.sample": "manifest.json", "generation_torch.copy_paste": "manifest.json"
                   }.get(args[0])
        (out / (product or ("vae.pt" if "vae" in args else "generator.pt"))).write_text("{}")

    return fake_run


def _faked_bench(tmp_path, monkeypatch, cfg):
    """A bench on a 12-page phantom whose trainers are fake_trainers (the calls are returned)."""
    from bench import synthetic_ablation

    images, masks = phantom_stack(12, seed=0, config=PhantomConfig(height=256, width=256))
    bench = Bench(cfg, tmp_path, images, masks, Layout.of(len(images), cfg), tmp_path / "log")
    calls = []
    fake_run = fake_trainers(calls)
    monkeypatch.setattr(synthetic_ablation, "run", fake_run)  # the generator helpers evidence shares
    monkeypatch.setattr(evidence, "run", fake_run)
    return bench, calls


def test_t_interval_matches_the_hand_computed_student_interval():
    got = t_interval([0.1, 0.3, 0.2])
    # mean 0.2, sample sd 0.1, t_{2, 0.975} = 4.302653: half-width 4.302653 * 0.1 / sqrt(3)
    half = 4.302653 * 0.1 / math.sqrt(3)
    assert got["n"] == 3 and got["mean"] == pytest.approx(0.2) and got["sd"] == pytest.approx(0.1)
    assert got["low"] == pytest.approx(0.2 - half, abs=1e-6)
    assert got["high"] == pytest.approx(0.2 + half, abs=1e-6)
    assert t_interval([0.5]) == {"n": 1, "mean": 0.5, "sd": None, "low": None, "high": None}


def test_paired_interval_uses_only_seeds_both_arms_hold():
    got = paired_interval({0: 0.5, 1: 0.7, 2: 0.6, 3: 0.9}, {0: 0.4, 1: 0.5, 2: 0.6, 7: 0.1})
    assert got["seeds"] == [0, 1, 2]
    assert got["mean"] == pytest.approx(0.1) and got["sd"] == pytest.approx(0.1)
    assert paired_interval({0: 0.5}, {1: 0.5}) is None


def test_seeds_needed_for_a_003_effect():
    # (t_{n-1,.975} + t_{n-1,.8}) * sd / sqrt(n) <= 0.03 at sd 0.01: n = 3 gives (4.303 + 1.061) * 0.01 /
    # 1.732 = 0.031 (too wide), n = 4 gives (3.182 + 0.978) * 0.01 / 2 = 0.0208
    assert seeds_needed(0.01, 0.03) == 4
    assert seeds_needed(0.02, 0.03) > seeds_needed(0.01, 0.03)


# the EPFL subset's pages: their z in the original stack (training_slices.json)
EPFL_Z = [0, 1, 2, 3, 13, 17, 24, 28, 42, 45, 46, 47, 48, 61, 62, 63, 75, 89, 90, 91, 105, 118, 135, 161, 162,
          163, 164]


def test_labelled_slices_are_nested_and_never_held_out():
    cfg = EvidenceConfig()
    layout = Layout.of(27, cfg)
    held_out = set(layout.test) | set(layout.val)
    assert not held_out & set(layout.pool) and not set(layout.test) & set(layout.val)
    assert sorted(held_out | set(layout.pool)) == list(range(27))  # independent slices: no guard band
    one, two, four = (layout.labelled(k, cfg) for k in (1, 2, 4))
    assert len(one) == 1 and len(two) == 2 and len(four) == 4
    assert set(one) < set(two) < set(four) < set(layout.pool)
    assert layout.labelled(0, cfg) == layout.pool


def test_guard_bands_keep_near_copies_of_held_out_pages_out_of_the_pool():
    cfg = EvidenceConfig()
    layout = Layout.of(27, cfg, EPFL_Z)
    assert layout.test == [20, 21, 22, 23, 24] and layout.val == [12, 13, 14, 15]
    # z 46 and 47 lie 2 and 1 slices from validation's 48; z 163 and 164 1 and 2 from test's 162
    assert layout.pool == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 17, 18, 19]
    # by hand: from z 75 (page 16, the earlier layout's start), z 0 is farthest (75); then z 42
    # (min distance 33 to {0, 75}); then z 24 (18 to {0, 42, 75}; z 17 gives 17, z 91 gives 16)
    assert [layout.labelled(k, cfg) for k in (1, 2, 4)] == [[16], [0, 16], [0, 6, 8, 16]]


@pytest.mark.parametrize("seed", range(20))
def test_no_pool_page_lies_within_the_guard_of_a_held_out_page(seed):
    cfg = EvidenceConfig(guard_z=3)
    rng = np.random.default_rng(seed)
    z = sorted(rng.choice(400, size=30, replace=False).tolist())
    layout = Layout.of(30, cfg, z)
    held_out = layout.test + layout.val
    assert all(abs(z[p] - z[h]) > 3 for p in layout.pool for h in held_out)
    previous: set[int] = set()
    for k in (1, 2, 4):
        taken = layout.labelled(k, cfg)
        assert len(set(taken)) == min(k, len(layout.pool)) and previous <= set(taken) <= set(layout.pool)
        previous = set(taken)


def test_a_work_folder_refuses_another_layout(tmp_path):
    cfg = EvidenceConfig()
    evidence.claim_work(tmp_path, Layout.of(27, cfg, EPFL_Z), cfg)
    evidence.claim_work(tmp_path, Layout.of(27, cfg, EPFL_Z), cfg)  # the same layout: fine
    with pytest.raises(evidence.UserError, match="another slice layout"):
        evidence.claim_work(tmp_path, Layout.of(27, cfg), cfg)  # the pool without guard bands
    old = tmp_path / "old"
    (old / "k0" / "labelled_store").mkdir(parents=True)
    with pytest.raises(evidence.UserError, match="before layouts were recorded"):
        evidence.claim_work(old, Layout.of(27, cfg), cfg)


def test_results_on_other_labelled_slices_run_again():
    cfg = EvidenceConfig()
    layout = Layout.of(27, cfg, EPFL_Z)
    old_pool = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 16, 17, 18, 19, 25, 26]
    results = {"a": {**_cell(1, "real_only", 0.0, 0, 0.87), "labelled_slices": [16]},
               "b": {**_cell(2, "real_only", 0.0, 0, 0.88), "labelled_slices": [16, 17]},
               "c": {**_cell(0, "real_only", 0.0, 0, 0.90), "labelled_slices": old_pool},
               # k = 1's slice, but its generator learnt from the pool before the guard bands
               "d": {**_cell(1, "images_plentiful", 0.3, 0, 0.86), "labelled_slices": [16]},
               "e": {**_cell(1, "images_plentiful", 0.3, 1, 0.86), "labelled_slices": [16],
                     "pool": layout.pool},
               "f": {**_cell(1, "aa", 0.0, 0, 0.87), "labelled_slices": [16]}}
    assert evidence.drop_other_layouts(results, layout, cfg) == ["b", "c", "d"]
    assert list(results) == ["a", "e", "f"]


def test_no_test_slice_reaches_a_store_and_validation_only_as_val(tmp_path):
    cfg = EvidenceConfig(ks=(1, 2, 0))
    images, masks = phantom_stack(12, seed=0, config=PhantomConfig(height=256, width=256))
    layout = Layout.of(len(images), cfg)
    bench = Bench(cfg, tmp_path, images, masks, layout, tmp_path / "log")
    for k in cfg.ks:
        store = TileStore(bench.store(k))
        by_split = {s: {store.records[int(i)]["slice"] for i in store.indices(s)} for s in ("train", "val")}
        assert by_split["train"] == set(layout.labelled(k, cfg))
        assert by_split["val"] == set(layout.val)
        assert not {r["slice"] for r in store.records} & set(layout.test)


def test_region_budgets_label_part_of_the_first_slice_which_stays_page_16():
    cfg = evidence.PRESETS["matched"]
    assert cfg.ks == ("256px", "512px", 1, 0)
    layout = Layout.of(27, cfg, EPFL_Z)
    # the first page drawn for the earlier runs of four slices (every k = 1 cell since 2026-11-28)
    assert layout.first == Layout.of(27, replace(cfg, ks=(1, 2, 4, 0), anchor_k=0), EPFL_Z).first == 16
    assert layout.labelled("256px", cfg) == layout.labelled("512px", cfg) == layout.labelled(1, cfg) == [16]
    assert Layout.of(27, EvidenceConfig(ks=("256px", 0)), EPFL_Z).first in layout.pool  # regions alone
    assert Cell("256px", "real_only", 0.0, 3).key == "k=256px|real_only|r=0|seed=3"
    assert evidence.segmenter_dir(Cell("256px", "aa", 0.0, 3), Path("w")) == Path("w/k256px_s3/aa_r0")


def test_grids_that_start_fresh_pseudo_label_at_todays_calibration_version():
    """A judge trained today is calibrated on today's threshold grid only: a recipe asking for an older
    version's pseudo-labels could not run in a fresh work folder."""
    for name in ("matched", "full", "quick"):
        recipes = evidence.PRESETS[name].recipes
        assert {r.pseudo_masks for r in recipes} <= {0, evidence.CALIBRATION_VERSION}, name
        assert any(r.pseudo_masks for r in recipes), name


def _region_bench(tmp_path) -> Bench:
    cfg = EvidenceConfig(ks=("256px", 1, 0))
    images, masks = phantom_stack(12, seed=0, config=PhantomConfig(height=512, width=512))
    return Bench(cfg, tmp_path, images, masks, Layout.of(len(images), cfg), tmp_path / "log")


def test_a_region_budget_trains_on_its_region_alone_with_the_validation_block(tmp_path):
    bench = _region_bench(tmp_path)
    first, region = bench.layout.first, bench.region("256px")
    assert region.size == 256 and bench.region(1) is None
    store = TileStore(bench.store("256px"))
    train = store.indices("train")
    assert len(train) == 1 and store.records[int(train[0])]["slice"] == first
    assert store.records[int(train[0])]["region"] == [region.y, region.x, 256]
    np.testing.assert_array_equal(store.masks(train)[0], region.crop(bench.masks[first]))
    assert {store.records[int(i)]["slice"] for i in store.indices("val")} == set(bench.layout.val)
    alone = TileStore(bench.labelled_only_store("256px"))
    assert len(alone) == 1 and len(alone.indices("val")) == 0
    corners = evidence.region_corners(bench.masks[first], bench.cfg)
    assert corners == {"region_256px": [region.y, region.x, 256]}


def test_a_region_budgets_pseudo_labels_cover_its_slice_but_the_region(tmp_path, monkeypatch):
    """The judge of a region predicts every pool slice, the region's own page too; the region keeps its
    real mask there (the labels a user has), the rest of that page takes the prediction."""
    from bench import synthetic_ablation
    from segmentation_tf.slices import slices_of
    from shared.tiff_io import read_image_stack

    bench = _region_bench(tmp_path)
    bench.judge("256px").mkdir(parents=True)
    (bench.judge("256px") / "segmenter.json").write_text(json.dumps(
        {"provenance": {"calibration": {"threshold": 0.5, "version": evidence.CALIBRATION_VERSION}}}))
    calls = []
    monkeypatch.setattr(synthetic_ablation, "run", fake_trainers(calls))
    monkeypatch.setattr(evidence, "run", fake_trainers(calls))
    store = TileStore(bench.pseudo_store("256px"))
    predict = next(c for c in calls if c[0] == "segmentation_tf.predict")
    assert len(read_image_stack(predict[predict.index("--images") + 1])) == len(bench.layout.pool)
    first, region = bench.layout.first, bench.region("256px")
    page = np.ones_like(bench.masks[first])
    region.crop(page)[...] = region.crop(bench.masks[first])
    idx = np.array([i for i, r in enumerate(store.records) if r["slice"] == first])
    (_, got), = slices_of(store, idx)
    np.testing.assert_array_equal(got, page)
    assert not region.crop(bench.masks[first]).all()  # the region's real mask is not the prediction
    # the labels' quality against the pool's real masks, the region left out: the prediction is all
    # foreground, so IoU = real foreground / predicted pixels, by count
    real = bench.masks[bench.layout.pool] > 0
    region.crop(real[bench.layout.pool.index(first)])[...] = False
    predicted = real.size - 256 * 256
    figures = evidence.pseudo_label_figures(bench, "256px", evidence.CALIBRATION_VERSION)
    assert figures == {"pseudo_iou": round(real.sum() / predicted, 4),
                       "pseudo_foreground": round(predicted / real.size, 4),
                       "pseudo_real_foreground": round(real.sum() / real.size, 4)}


def test_a_work_folder_takes_new_budgets_but_refuses_a_moved_region(tmp_path):
    cfg = EvidenceConfig()
    layout = Layout.of(27, cfg, EPFL_Z)
    evidence.claim_work(tmp_path, layout, cfg)
    wider = replace(cfg, ks=("256px", 1, 2, 4, 0))
    evidence.claim_work(tmp_path, layout, wider, {"region_256px": [256, 320, 256]})  # joins the record
    saved = json.loads((tmp_path / "layout.json").read_text())
    assert saved["region_256px"] == [256, 320, 256] and saved["labelled_k2"] == [0, 16]
    with pytest.raises(evidence.UserError, match="another slice layout"):
        evidence.claim_work(tmp_path, layout, wider, {"region_256px": [0, 0, 256]})
    record = {**_cell("256px", "real_only", 0.0, 0, 0.56), "labelled_slices": [16],
              "region": {"size": 256, "y": 256, "x": 320, "foreground": 0.056}}
    results = {"here": record, "moved": {**record, "region": {**record["region"], "x": 256}}}
    assert evidence.drop_other_layouts(results, layout, wider, {"region_256px": [256, 320, 256]}) == ["moved"]


def test_the_rise_runs_from_the_smallest_region_to_the_whole_pool():
    cfg = replace(evidence.PRESETS["matched"], seeds=(0, 1))
    values = {"256px": (0.56, 0.58), "512px": (0.70, 0.71), 1: (0.87, 0.875), 0: (0.887, 0.89)}
    results = {Cell(k, "real_only", 0.0, s).key: _cell(k, "real_only", 0.0, s, v[s])
               for k, v in values.items() for s in (0, 1)}
    results[Cell(2, "real_only", 0.0, 0).key] = _cell(2, "real_only", 0.0, 0, 0.889)  # an earlier budget
    assert [r["step"] for r in evidence.rise_rows(results, cfg)] == \
        ["k=256px -> 512px", "k=512px -> 1", "k=1 -> all"]
    assert evidence.rise_rows(results, cfg)[0]["mean"] == pytest.approx(0.135)  # (0.14 + 0.13) / 2
    assert [r["k"] for r in evidence.real_only_rows(results, cfg)] == ["256px", "512px", 1, 2, "all"]
    order = cells(cfg, {})
    assert order[:5] == [Cell("256px", "real_only", 0.0, 0), Cell(0, "real_only", 0.0, 0),
                         Cell(0, "reference", 0.0, 0), Cell("512px", "real_only", 0.0, 0),
                         Cell(1, "real_only", 0.0, 0)]
    assert order[5:7] == [Cell("256px", "aa", 0.0, 0), Cell("256px", "images_plentiful", 0.3, 0, "vpred")]


def _cell(k, arm, ratio, seed, test, val=0.5, calibration=evidence.CALIBRATION_VERSION):
    return {"k": k, "arm": arm, "ratio": ratio, "seed": seed, "test_iou": test, "val_iou": val,
            "minutes": 1.0, **({"calibration": calibration} if calibration > 1 else {})}


def test_the_ratio_is_chosen_on_validation_not_test():
    cfg = EvidenceConfig(ks=(1,), seeds=(0, 1, 2), choice_seeds=2, ratios=(0.1, 0.3))
    results = {}
    for s in (0, 1):
        # 0.1: better on validation, worse on test; 0.3 the reverse
        results[Cell(1, "images_plentiful", 0.1, s).key] = _cell(1, "images_plentiful", 0.1, s, 0.6, 0.9)
        results[Cell(1, "images_plentiful", 0.3, s).key] = _cell(1, "images_plentiful", 0.3, s, 0.9, 0.6)
    assert chosen_ratio(results, 1, cfg) == 0.1
    order = cells(cfg, results)
    # the chosen ratio and 0.3 run on every seed; nothing else on the third
    assert Cell(1, "images_plentiful", 0.1, 2) in order and Cell(1, "images_plentiful", 0.3, 2) in order
    assert chosen_ratio({}, 1, cfg) is None


def test_gains_and_noise_floor_read_paired_differences():
    cfg = EvidenceConfig(ks=(1,), seeds=(0, 1, 2), choice_seeds=1, ratios=(0.3,))
    base, aa, syn = [0.70, 0.72, 0.74], [0.71, 0.71, 0.75], [0.75, 0.78, 0.77]
    results = {}
    for s in range(3):
        results[Cell(1, "real_only", 0.0, s).key] = _cell(1, "real_only", 0.0, s, base[s])
        results[Cell(1, "aa", 0.0, s).key] = _cell(1, "aa", 0.0, s, aa[s])
        results[Cell(1, "images_plentiful", 0.3, s).key] = _cell(1, "images_plentiful", 0.3, s, syn[s])
    floor = noise_floor(results, cfg)
    assert floor["pooled_sd"] == pytest.approx(np.std([0.01, -0.01, 0.01], ddof=1), abs=1e-4)
    assert floor["pairs"] == 3 and floor["met"] is None  # sd 0.0115, but 3 pairs judge nothing
    for s in (3, 4):
        results[Cell(1, "real_only", 0.0, s).key] = _cell(1, "real_only", 0.0, s, 0.70)
        results[Cell(1, "aa", 0.0, s).key] = _cell(1, "aa", 0.0, s, 0.70)
    five = noise_floor(results, replace(cfg, seeds=(0, 1, 2, 3, 4)))
    assert five["pairs"] == 5
    assert five["pooled_sd"] == pytest.approx(np.std([0.01, -0.01, 0.01, 0, 0], ddof=1), abs=1e-4)
    assert five["met"] is True  # 0.0084 <= 0.01
    (row,) = gain_rows(results, cfg)
    assert row["mean"] == pytest.approx(np.mean([0.05, 0.06, 0.03]), abs=1e-4)
    assert row["validation_chosen"] and row["ci_above_0"]


def test_the_reference_check_compares_means_over_the_seeds_each_has():
    cfg = EvidenceConfig(ks=(1, 0), seeds=(0, 1))
    results = {Cell(0, "real_only", 0.0, 0).key: _cell(0, "real_only", 0.0, 0, 0.887)}
    assert reference_row(results, cfg) is None  # no reference yet
    results[Cell(0, "reference", 0.0, 0).key] = _cell(0, "reference", 0.0, 0, 0.892)
    results[Cell(0, "reference", 0.0, 1).key] = {**_cell(0, "reference", 0.0, 1, 0.862), "minutes": 3.0}
    results[Cell(1, "real_only", 0.0, 0).key] = _cell(1, "real_only", 0.0, 0, 0.5)  # not the pool
    row = reference_row(results, cfg)
    assert (row["reference_test_iou"], row["reference_seeds"], row["whole_pool_seeds"]) == (0.877, 2, 1)
    assert row["gap"] == pytest.approx(-0.010) and row["within_0.02"] and row["reference_minutes"] == 2.0
    results[Cell(0, "real_only", 0.0, 1).key] = _cell(0, "real_only", 0.0, 1, 0.927)  # pool mean 0.907
    row = reference_row(results, cfg)
    assert row["gap"] == pytest.approx(-0.030) and not row["within_0.02"]


def test_a_rerun_skips_finished_cells(tmp_path, monkeypatch):
    images, masks = phantom_stack(10, seed=0, config=PhantomConfig(height=256, width=256))
    monkeypatch.setattr(evidence, "load_volume", lambda: (images, masks, "phantom"))
    monkeypatch.setattr(evidence, "slice_positions", lambda: None)
    ran = []

    def fake_cell(cell, bench):
        ran.append(cell.key)
        return _cell(cell.k, cell.arm, cell.ratio, cell.seed, 0.5 + 0.01 * len(ran))

    monkeypatch.setattr(evidence, "run_cell", fake_cell)
    results = tmp_path / "evidence.json"
    argv = ["--preset", "quick", "--work", str(tmp_path / "work"), "--results", str(results)]
    evidence.main([*argv, "--max-cells", "3"])
    first = list(ran)
    assert len(first) == 3 and len(json.loads(results.read_text())["results_by_cell"]) == 3
    evidence.main([*argv, "--max-cells", "2"])
    assert ran[:3] == first and not set(ran[3:]) & set(first) and len(ran) == 5
    saved = json.loads(results.read_text())
    assert set(saved["results_by_cell"]) == set(ran)
    assert saved["slices"]["test"] and not set(saved["slices"]["test"]) & set(saved["slices"]["pool"])


def test_the_instrument_answers_in_paired_rounds_then_checks_real_only_rises_with_k():
    cfg = EvidenceConfig(ks=(1, 2, 0), seeds=(0, 1), choice_seeds=1, ratios=(0.2, 0.3))
    order = cells(cfg, {})

    def block(k: int, rounds_done: bool = False) -> list[Cell]:
        rounds = [c for s in (0, 1) for c in (Cell(k, "real_only", 0.0, s), Cell(k, "aa", 0.0, s),
                                              Cell(k, "images_plentiful", 0.3, s, "vpred"),
                                              Cell(k, "self_training", 0.0, s))]
        if rounds_done:
            rounds = [c for c in rounds if c.arm != "real_only"]
        return (rounds + [Cell(k, "images_plentiful", 0.3, s, "vpred_pretrain") for s in (0, 1)]
                + [Cell(k, "real_pretrain", 0.0, s) for s in (0, 1)])

    # the budget probe first (seed 0): one slice and the whole pool, the reference, the other k's
    probe = [Cell(1, "real_only", 0.0, 0), Cell(0, "real_only", 0.0, 0), Cell(0, "reference", 0.0, 0),
             Cell(2, "real_only", 0.0, 0)]
    assert order[:4] == probe
    # k = 1: per seed real only, A/A, the main recipe and its control, self-training on the same
    # pseudo-labels (the main recipe's denoiser learns from them)
    assert order[4:11] == block(1)[1:8]
    # then real only at every other k on the other seeds: the budget must be limited by the data
    # before any further synthetic comparison means anything
    assert order[11:13] == [Cell(2, "real_only", 0.0, 1), Cell(0, "real_only", 0.0, 1)]
    # then the main generator's other use and its control (the pretrain phase on real tiles) at
    # k = 1; then k = 2's block (its real only already ran)
    assert order[13:17] == block(1)[8:]
    assert order[17:27] == block(2, rounds_done=True)
    # then the whole pool's A/A and the main recipe there (no self-training: the pool has its labels),
    # and only then the other rungs at k = 1, 2
    assert order[27:31] == [Cell(0, "aa", 0.0, 0), Cell(0, "aa", 0.0, 1),
                            *[Cell(0, "images_plentiful", 0.3, s, "vpred") for s in (0, 1)]]
    rungs = ("today", "spade", "pseudo", "texture", "levers", "levers_pretrain", "spectral_vae", "minsnr",
             "pool_pretrained")
    assert order[31:67] == [Cell(k, "images_plentiful", 0.3, s, r) for r in rungs for k in (1, 2)
                            for s in (0, 1)]
    assert order.index(Cell(0, "images_plentiful", 0.3, 0, "vpred")) < order.index(
        Cell(1, "images_plentiful", 0.2, 0))  # the main recipe on the whole pool before the ratio sweep
    assert not [c for c in order if c.arm == "strict" and c.k == 0]
    assert len(order) == len(set(order))


def test_recipes_share_generators_and_stores_only_when_their_flags_agree(tmp_path):
    from bench.evidence import (
        LEVERS,
        LEVERS_PRETRAIN,
        PSEUDO,
        SPADE,
        SPECTRAL,
        TEXTURE,
        TODAY,
        VPRED,
        segmenter_flags,
    )

    assert LEVERS.generator == TEXTURE.generator == PSEUDO.generator != SPADE.generator != TODAY.generator
    assert VPRED.generator != LEVERS.generator and VPRED.sampling.guidance == 1.5  # chosen on validation
    assert LEVERS.pseudo_masks and SPECTRAL.pseudo_masks and not SPADE.pseudo_masks
    assert SPECTRAL.vae != SPADE.vae == TODAY.vae == LEVERS.vae  # the spectrum loss trains its own VAE
    assert LEVERS.store == LEVERS_PRETRAIN.store != TEXTURE.store != SPADE.store  # masks; texture
    assert TEXTURE.sampling.texture == 1.0 and "_t1" in TEXTURE.store
    assert "--no-mask-every-level" in TODAY.denoiser_flags and SPADE.sampling.guidance == 3.0
    cfg = EvidenceConfig()
    bench = Bench(cfg, tmp_path, np.zeros((1, 1, 1)), np.zeros((1, 1, 1)), Layout.of(27, cfg), tmp_path / "l")
    cell = Cell(1, "images_plentiful", 0.3, 2, "levers_pretrain")
    assert bench.synthetic_dir(cell) == bench.synthetic_dir(replace(cell, recipe="levers"))
    other = bench.synthetic_dir(cell, replace(LEVERS.sampling, guidance=5.0))  # a guidance sweep's store
    assert other.parent == bench.synthetic_dir(cell).parent
    assert other.name == "synthetic_composed_dpmpp2m20_g5_t1"
    flags = segmenter_flags(cell, cfg, tmp_path / "syn")
    # pre-training has no synthetic share (segmentation_tf.fit rejects a ratio with it)
    assert flags[-4:] == ["--synthetic-store", str(tmp_path / "syn"), "--synthetic-schedule", "pretrain"]
    assert "--synthetic-ratio" not in flags
    mixed = segmenter_flags(replace(cell, recipe="vpred"), cfg, tmp_path / "syn")
    assert mixed[-4:] == ["--synthetic-store", str(tmp_path / "syn"), "--synthetic-ratio", "0.3"]
    control = segmenter_flags(Cell(1, "real_pretrain", 0.0, 2), cfg, tmp_path / "real")
    assert control[-4:] == ["--synthetic-store", str(tmp_path / "real"), "--synthetic-schedule", "pretrain"]
    assert control[:-4] == segmenter_flags(Cell(1, "real_only", 0.0, 2), cfg, None)  # same budget and seed
    pinned = segmenter_flags(Cell(1, "aa", 0.0, 2), cfg, None, "mixed_bfloat16")
    assert pinned[pinned.index("--precision") + 1] == "mixed_bfloat16"
    images, masks = phantom_stack(27, seed=0, config=PhantomConfig(height=256, width=256))
    real = Bench(cfg, tmp_path / "p", images, masks, Layout.of(27, cfg), tmp_path / "l")
    only = TileStore(real.labelled_only_store(1))  # real tiles of the k slices, no validation tile
    assert {r["slice"] for r in only.records} == set(real.layout.labelled(1, cfg))
    assert len(only.indices("val")) == 0
    assert cell.key == "k=1|images_plentiful|r=0.3|seed=2|levers_pretrain"
    assert Cell(1, "images_plentiful", 0.3, 2).key == "k=1|images_plentiful|r=0.3|seed=2"  # older keys


def test_the_users_arm_is_chosen_on_validation_and_gap_closed_by_hand():
    from bench.evidence import chosen_arm

    cfg = EvidenceConfig(ks=(1, 0), seeds=(0, 1), ratios=(0.3,), lever_ks=(1,))
    results = {}
    for s in (0, 1):
        results[Cell(1, "real_only", 0.0, s).key] = _cell(1, "real_only", 0.0, s, 0.70 + 0.02 * s)
        results[Cell(0, "real_only", 0.0, s).key] = _cell(0, "real_only", 0.0, s, 0.80 + 0.02 * s)
        # today: better on test, worse on validation; levers: the other way round
        results[Cell(1, "images_plentiful", 0.3, s).key] = {**_cell(1, "images_plentiful", 0.3, s, 0.76),
                                                           "val_iou": 0.5}
        lev = Cell(1, "images_plentiful", 0.3, s, "levers")
        results[lev.key] = {**_cell(1, "images_plentiful", 0.3, s, 0.74 + 0.02 * s), "val_iou": 0.6,
                            "recipe": "levers"}
    assert chosen_arm(results, 1, cfg) == (0.3, "levers")
    rows = {r["recipe"]: r for r in gain_rows(results, cfg) if r["k"] == 1}
    assert rows["levers"]["validation_chosen"] and not rows["today"]["validation_chosen"]
    # gain +0.04 on both seeds, gap pool - k = 0.81 - 0.71 = 0.10: 0.4 of the gap
    assert rows["levers"]["mean"] == pytest.approx(0.04) and rows["levers"]["gap_closed"] == 0.4


def test_resolution_says_how_many_seeds_the_generator_goal_needs():
    from bench.evidence import resolution_rows

    cfg = EvidenceConfig(ks=(1, 0), seeds=(0, 1, 2, 3, 4), ratios=(0.3,), lever_ks=())
    results = {}
    aa_diffs, syn_diffs = [0.01, -0.01, 0.01, 0.0, 0.0], [0.02, -0.02, 0.0, 0.04, -0.04]
    for s in range(5):
        results[Cell(1, "real_only", 0.0, s).key] = _cell(1, "real_only", 0.0, s, 0.86)
        results[Cell(1, "aa", 0.0, s).key] = _cell(1, "aa", 0.0, s, 0.86 + aa_diffs[s])
        results[Cell(1, "images_plentiful", 0.3, s).key] = _cell(1, "images_plentiful", 0.3, s,
                                                                 0.86 + syn_diffs[s])
    assert resolution_rows(results, cfg) == []  # no whole-pool cell yet: no gap
    results[Cell(0, "real_only", 0.0, 0).key] = _cell(0, "real_only", 0.0, 0, 0.88)
    (row,) = resolution_rows(results, cfg)
    # gap 0.88 - 0.86 = 0.02, goal 0.01; A/A sd = std([.01, -.01, .01, 0, 0]) = sqrt(280e-6 / 4) = 0.008367
    assert row["gap"] == pytest.approx(0.02) and row["goal"] == pytest.approx(0.01)
    assert row["aa_sd"] == pytest.approx(0.0084, abs=1e-4)
    # (t_{n-1,.975} + t_{n-1,.8}) sd / sqrt(n) <= 0.01 first at n = 8 (n = 7: (2.447 + 0.906) 0.008367
    # / 2.646 = 0.0106; n = 8: (2.365 + 0.896) 0.008367 / 2.828 = 0.00965)
    assert row["seeds_at_aa_sd"] == 8 and row["grid_seeds"] == 5
    # synthetic arm sd = std([.02, -.02, 0, .04, -.04]) = 0.03162: far more seeds
    assert row["noisiest_arm_sd"] == pytest.approx(0.0316, abs=1e-4)
    assert row["seeds_at_arm_sd"] > 50


def test_the_chosen_arm_runs_on_as_many_seeds_as_the_goal_needs():
    from bench.evidence import chosen_arm, resolving_cells

    cfg = EvidenceConfig(ks=(1, 0), seeds=(0, 1, 2, 3, 4), choice_seeds=1, ratios=(0.3,), lever_ks=(),
                         resolve_seeds=7)
    results = {}
    aa_diffs = [0.01, -0.01, 0.01, 0.0, 0.0]  # A/A sd 0.008367: a goal of 0.01 needs 8 seeds (above)
    for s in range(5):
        results[Cell(1, "real_only", 0.0, s).key] = _cell(1, "real_only", 0.0, s, 0.86)
        results[Cell(1, "aa", 0.0, s).key] = _cell(1, "aa", 0.0, s, 0.86 + aa_diffs[s])
    assert resolving_cells(results, cfg) == []  # no gap yet, no arm chosen yet
    results[Cell(0, "real_only", 0.0, 0).key] = _cell(0, "real_only", 0.0, 0, 0.88)
    assert resolving_cells(results, cfg) == []  # the gap is there, the choice not yet
    for s in range(5):
        results[Cell(1, "images_plentiful", 0.3, s).key] = _cell(1, "images_plentiful", 0.3, s, 0.5, 0.9)
    assert chosen_arm(results, 1, cfg) == (0.3, "today")
    # 8 needed, capped at 7 in all: seeds 5 and 6, each a real-only cell and the chosen arm
    extra = [Cell(1, arm, r, s) for s in (5, 6) for arm, r in (("real_only", 0.0), ("images_plentiful", 0.3))]
    assert resolving_cells(results, cfg) == extra
    assert [c for c in cells(cfg, results) if c.seed > 4] == extra
    assert resolving_cells(results, replace(cfg, resolve_seeds=0)) == []
    assert resolving_cells(results, replace(cfg, resolve_seeds=16)) == [
        Cell(1, arm, r, s) for s in (5, 6, 7) for arm, r in (("real_only", 0.0), ("images_plentiful", 0.3))]
    # results on the extra seeds never change which arm was chosen, nor unchoose it
    results[Cell(1, "images_plentiful", 0.3, 5).key] = _cell(1, "images_plentiful", 0.3, 5, 0.5, 0.1)
    assert chosen_arm(results, 1, cfg) == (0.3, "today")


def test_the_results_page_shows_intervals_noise_floor_and_rise(tmp_path, monkeypatch):
    from bench import report

    images, masks = phantom_stack(10, seed=0, config=PhantomConfig(height=256, width=256))
    monkeypatch.setattr(evidence, "load_volume", lambda: (images, masks, "phantom"))
    monkeypatch.setattr(evidence, "slice_positions", lambda: None)
    monkeypatch.setattr(evidence, "run_cell", lambda cell, bench: _cell(
        cell.k, cell.arm, cell.ratio, cell.seed, 0.6 + 0.05 * (cell.k == 0) + 0.001 * cell.seed))
    results = tmp_path / "evidence.json"
    evidence.main(["--preset", "quick", "--work", str(tmp_path / "w"), "--results", str(results),
                   "--max-cells", "11"])
    page = "\n".join(report.section(results, "evidence"))
    assert "A/A noise floor" in page and "pooled_sd" in page
    assert "k=256px -> all" in page and "| k | n | mean | sd | low | high |" in page
    assert "Can the grid resolve the generator goal?" in page and "seeds_at_aa_sd" in page
    assert (tmp_path / "evidence.png").is_file()
    row = report.table([{"cell": "k=1|aa|r=0|seed=0", "iou": 0.5}])[-1]
    assert row == "| k=1\\|aa\\|r=0\\|seed=0 | 0.5 |"  # a cell key stays in its column


def test_each_generator_is_measured_once_and_only_with_its_own_judge(tmp_path):
    from bench.evidence import generators_to_measure

    cfg = EvidenceConfig(ks=(1, 2), seeds=(0, 1))
    bench = Bench(cfg, tmp_path, np.zeros((1, 1, 1)), np.zeros((1, 1, 1)), Layout.of(27, cfg), tmp_path / "l")
    results = {Cell(k, "images_plentiful", 0.3, s).key: _cell(k, "images_plentiful", 0.3, s, 0.5)
               for k in (1, 2) for s in (0, 1)}
    results[Cell(1, "real_only", 0.0, 0).key] = _cell(1, "real_only", 0.0, 0, 0.5)
    assert generators_to_measure(results, {}, bench) == []  # no judge trained yet
    (tmp_path / "k1_s0" / "real_only_r0").mkdir(parents=True)
    (tmp_path / "k1_s0" / "real_only_r0" / "segmenter.json").write_text("{}")
    todo = generators_to_measure(results, {}, bench)
    assert [(c.k, c.arm) for c in todo] == [(1, "images_plentiful")]  # k = 2 waits for its own judge
    assert generators_to_measure(results, {"k=1|images_plentiful|today": {}}, bench) == []


def test_a_generator_measured_by_an_older_two_sample_test_is_measured_again_where_its_tiles_are(tmp_path):
    from bench.evidence import generators_to_measure
    from generation_torch.two_sample import VERSION

    cfg = EvidenceConfig(ks=(1,), seeds=(0,))
    bench = Bench(cfg, tmp_path, np.zeros((1, 1, 1)), np.zeros((1, 1, 1)), Layout.of(27, cfg), tmp_path / "l")
    cell = Cell(1, "images_plentiful", 0.3, 0)
    results = {cell.key: _cell(1, "images_plentiful", 0.3, 0, 0.5)}
    (tmp_path / "k1_s0" / "real_only_r0").mkdir(parents=True)
    (tmp_path / "k1_s0" / "real_only_r0" / "segmenter.json").write_text("{}")
    current = {"c2st_version": VERSION, "floor_c2st_accuracy": 0.5}
    old, new = {"k=1|images_plentiful|today": {}}, {"k=1|images_plentiful|today": current}
    assert generators_to_measure(results, old, bench) == []  # its tiles are on another machine
    bench.synthetic_dir(cell).mkdir(parents=True)
    (bench.synthetic_dir(cell) / "manifest.json").write_text("{}")
    assert generators_to_measure(results, old, bench) == []  # and its weights
    (bench.generator_dir(cell) / "generator.pt").write_bytes(b"")
    assert generators_to_measure(results, old, bench) == [cell]
    assert generators_to_measure(results, new, bench) == []
    no_floor = {"k=1|images_plentiful|today": {"c2st_version": VERSION}}  # measured before the floor
    assert generators_to_measure(results, no_floor, bench) == [cell]
    # pasted pairs have no weights: their tiles alone are measured again
    pasted = Cell(1, "images_plentiful", 0.3, 0, "copy_paste")
    cfg = replace(cfg, recipes=(*cfg.recipes, evidence.COPY_PASTE))
    bench = replace(bench, cfg=cfg)
    results = {pasted.key: {**_cell(1, "images_plentiful", 0.3, 0, 0.5), "recipe": "copy_paste"}}
    stale = {"k=1|images_plentiful|copy_paste": {}}
    assert generators_to_measure(results, stale, bench) == []
    bench.synthetic_dir(pasted).mkdir(parents=True)
    (bench.synthetic_dir(pasted) / "manifest.json").write_text("{}")
    assert generators_to_measure(results, stale, bench) == [pasted]


def test_a_generator_trained_again_is_measured_again_and_its_earlier_record_kept(tmp_path, monkeypatch):
    """Weights stay out of git, so a later machine trains a recipe's generator again: cells name the
    weights they drew from, and a record of other weights is measured again, the earlier one kept."""
    from bench.evidence import generator_identity, generators_to_measure, measure_generators, record_key
    from generation_torch.two_sample import VERSION

    cfg = EvidenceConfig(ks=(1,), seeds=(0, 1))
    bench = Bench(cfg, tmp_path, np.zeros((1, 1, 1)), np.zeros((1, 1, 1)), Layout.of(27, cfg), tmp_path / "l")
    first, second = Cell(1, "images_plentiful", 0.3, 0), Cell(1, "images_plentiful", 0.3, 1)
    _touch(tmp_path / "k1_s0" / "real_only_r0" / "segmenter.json")
    _touch(bench.synthetic_dir(first) / "manifest.json")
    weights = bench.generator_dir(first) / "generator.pt"
    weights.write_bytes(b"abc")
    assert generator_identity(weights) == "ba7816bf8f01"  # sha256("abc"), first 12 hex digits
    earlier = {"k": 1, "regime": "images_plentiful", "recipe": "today", "c2st_version": VERSION,
               "floor_c2st_accuracy": 0.5, "fidelity_iou": 0.2}  # measured before identities
    measured = {record_key(earlier): earlier}
    results = {first.key: _cell(1, "images_plentiful", 0.3, 0, 0.5)}
    assert generators_to_measure(results, measured, bench) == []  # no cell names these weights
    results[second.key] = {**_cell(1, "images_plentiful", 0.3, 1, 0.6), "generator": "ba7816bf8f01"}
    assert generators_to_measure(results, measured, bench) == [second]  # the cell that names them
    monkeypatch.setattr(evidence, "generator_figures", lambda cell, bench: {
        **earlier, "generator": generator_identity(weights), "fidelity_iou": 0.35})
    measure_generators(results, measured, bench)
    assert measured["k=1|images_plentiful|today"]["fidelity_iou"] == 0.35
    assert measured["k=1|images_plentiful|today|unrecorded"] == {**earlier, "superseded_by": "ba7816bf8f01"}
    assert {record_key(g) for g in measured.values()} == set(measured)  # keys survive a reload
    assert generators_to_measure(results, measured, bench) == []  # measured as the weights here
    weights.write_bytes(b"abd")  # trained once more: the cells name other weights than these
    assert generators_to_measure(results, measured, bench) == []


def test_published_paths_name_no_folder_of_this_machine():
    from bench.common import ROOT, shown, shown_command

    assert shown(ROOT / "docs" / "x.json") == "docs/x.json"
    assert shown(ROOT.parent / "shared" / "data" / "a.tif") == "../shared/data/a.tif"
    assert shown("/tmp/some_scratch/seg_run") == "<scratch>/seg_run"
    assert shown_command("bench.x", ["--model", "/tmp/s/run", "--json", "docs/x.json"]) == \
        "python -m bench.x --model <scratch>/run --json docs/x.json"


def test_each_recipe_trains_and_draws_with_its_own_flags(tmp_path, monkeypatch):
    """The commands a recipe's cell runs: the VAE stage gets only VAE flags and runs once per VAE
    recipe; the denoiser stage only denoiser flags; sampling the recipe's masks, guidance, texture."""
    from bench.evidence import SPECTRAL

    cfg = EvidenceConfig(ks=(1, 0))
    images, masks = phantom_stack(12, seed=0, config=PhantomConfig(height=256, width=256))
    bench = Bench(cfg, tmp_path, images, masks, Layout.of(len(images), cfg), tmp_path / "log")
    calls = []
    fake_run = fake_trainers(calls)
    from bench import synthetic_ablation

    monkeypatch.setattr(synthetic_ablation, "run", fake_run)  # the generator helpers evidence shares
    monkeypatch.setattr(evidence, "run", fake_run)  # the pseudo-labels' prediction
    bench.judge(1).mkdir(parents=True)
    judge = {"provenance": {"calibration": {"threshold": 0.98}}}  # version 1: no "version" key
    (bench.judge(1) / "segmenter.json").write_text(json.dumps(judge))
    for recipe in ("levers", "texture", "spectral_vae"):
        bench.generator(Cell(1, "images_plentiful", 0.3, 0, recipe))
    stages = [(c[c.index("--stage") + 1], c) for c in calls if c[0] == "generation_torch.train"]
    vaes = [c for stage, c in stages if stage == "vae"]
    assert len(vaes) == 2 and "--spectral-weight" in vaes[1] and "--spectral-weight" not in vaes[0]
    denoisers = [c for stage, c in stages if stage == "diffusion"]
    assert len(denoisers) == 2  # levers and texture share the pseudo generator; spectral_vae has its own
    assert all("--resume" in c for _, c in stages)  # a stage killed with the grid continues
    assert len([c for c in calls if c[0] == "segmentation_tf.predict"]) == 1  # pseudo-labels once per k
    assert all("--mask-every-level" in c and "--spectral-weight" not in c for c in denoisers)
    samples = [c for c in calls if c[0] == "generation_torch.sample"]
    assert len(samples) == 3
    assert samples[0][samples[0].index("--mask-source") + 1] == "composed"
    assert samples[0][samples[0].index("--texture") + 1] == "1.0"
    assert samples[2][samples[2].index("--mask-source") + 1] == "labelled" and "--texture" not in samples[2]
    assert SPECTRAL.sampling.guidance == 3.0 == float(samples[2][samples[2].index("--guidance") + 1])


def test_generator_levers_choose_the_lowest_guidance_that_follows_the_masks():
    from bench.generator_levers import chosen_guidance

    def row(recipe, guidance, share, fid):
        return {"k": 1, "recipe": recipe, "guidance": guidance, "fidelity_share": share, "fidelity_iou": fid}

    rows = [row("spade", 5.0, 0.95, 0.6), row("spade", 2.0, 0.5, 0.3), row("spade", 3.0, 0.91, 0.58),
            row("minsnr", 2.0, 0.2, 0.1), row("minsnr", 3.0, 0.4, 0.25), row("minsnr", 5.0, 0.3, 0.2)]
    # spade reaches 0.9 of the judge at 3 and 5: the lower wins; minsnr never does: its most faithful
    assert chosen_guidance(rows) == {"k=1|minsnr": 3.0, "k=1|spade": 3.0}


def test_kept_pseudo_labels_stand_in_for_a_judge_that_is_not_here(tmp_path, monkeypatch, capsys):
    """A grid keeps its judge's pseudo-labels beside its results; a fresh work folder builds the same
    pseudo-labelled store from them without the judge, unless they were made for other pages."""
    import tifffile

    from bench import synthetic_ablation
    from shared.tiff_io import read_image_stack, write_stack

    calls = []

    def fake_run(args, log):  # the judge predicts a pattern that differs page by page
        calls.append(args)
        out = Path(args[args.index("--out") + 1])
        if args[0] in ("generation_torch.sample", "generation_torch.copy_paste"):
            # as a tile store is created: into an existing folder only
            assert out.parent.is_dir(), f"{out.parent}: output folder does not exist"
        out.mkdir(parents=True, exist_ok=True)
        images = read_image_stack(args[args.index("--images") + 1])
        above = images > np.median(images, axis=(1, 2), keepdims=True)
        write_stack(out / "mask.tif", above.astype(np.uint8))

    monkeypatch.setattr(evidence, "run", fake_run)
    monkeypatch.setattr(synthetic_ablation, "run", fake_run)
    kept = tmp_path / "evidence_matched_pseudo"
    bench = replace(_region_bench(tmp_path / "first"), kept=kept)
    bench.judge("256px").mkdir(parents=True)
    (bench.judge("256px") / "segmenter.json").write_text(json.dumps(
        {"provenance": {"calibration": {"threshold": 0.35, "version": evidence.CALIBRATION_VERSION}}}))
    (bench.judge("256px") / "test_scores.json").write_text(json.dumps({"iou": 0.56}))
    def all_masks(store):
        return TileStore(store).masks(np.arange(len(TileStore(store))))

    made = all_masks(bench.pseudo_store("256px"))
    tif, record = bench.kept_pseudo("256px", evidence.CALIBRATION_VERSION)
    saved = json.loads(record.read_text())
    assert saved["pages"] == bench.predicted_pages("256px") == bench.layout.pool
    assert saved["judge"] == {"cell": "k=256px|real_only|r=0|seed=0", "threshold": 0.35, "test_iou": 0.56}
    assert saved["region"]["size"] == 256
    figures = evidence.pseudo_label_figures(bench, "256px", evidence.CALIBRATION_VERSION)
    assert {key: saved[key] for key in figures} == figures and figures["pseudo_foreground"] > 0
    with tifffile.TiffFile(tif) as t:
        assert t.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE
    # another machine: no judge, no work folder; nothing may train or predict
    monkeypatch.setattr(evidence, "run", lambda *a, **k: pytest.fail("the judge was not needed"))
    fresh = replace(bench, work=tmp_path / "second", log=tmp_path / "second.log")
    np.testing.assert_array_equal(all_masks(fresh.pseudo_store("256px")), made)
    assert made.any() and not made.all()
    assert "pseudo-labels from" in capsys.readouterr().out
    # labels made for other pages are not used: the judge (trained again here) predicts
    record.write_text(json.dumps({**saved, "pages": saved["pages"][1:]}))
    monkeypatch.setattr(evidence, "run", fake_run)
    monkeypatch.setattr(evidence, "run_cell", lambda cell, b: calls.append(["run_cell", cell.key]))
    third = replace(bench, work=tmp_path / "third")
    before = len(calls)
    with pytest.raises(FileNotFoundError):  # the fake judge leaves no weights behind
        third.pseudo_store("256px")
    assert calls[before] == ["run_cell", "k=256px|real_only|r=0|seed=0"]
    assert "made for other pages or another region" in capsys.readouterr().out
    # a kept stack of the wrong size is the user's to mend, named
    record.write_text(json.dumps(saved))
    tifffile.imwrite(tif, np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(evidence.UserError, match="holds"):
        replace(bench, work=tmp_path / "fourth").pseudo_store("256px")


def test_pseudo_labels_cover_only_unlabelled_pool_slices_and_reach_only_the_denoiser(tmp_path, monkeypatch):
    """The pseudo recipe: the k slices' judge predicts the other pool slices (never a validation or
    test slice); the denoiser's store holds real masks on the labelled and validation slices and the
    predictions elsewhere; the VAE and the drawn masks are unchanged."""
    from bench import synthetic_ablation
    from bench.evidence import VPRED_SDEDIT, VPRED_SDEDIT_POOL
    from shared.tiff_io import read_image_stack

    cfg = EvidenceConfig(ks=(1, 0), side_recipes=(VPRED_SDEDIT, VPRED_SDEDIT_POOL))
    images, masks = phantom_stack(12, seed=0, config=PhantomConfig(height=256, width=256))
    bench = Bench(cfg, tmp_path, images, masks, Layout.of(len(images), cfg), tmp_path / "log")
    bench.judge(1).mkdir(parents=True)
    calibrations = {"calibration": {"threshold": 0.9995, "version": 2},
                    "earlier_calibrations": [{"threshold": 0.98}]}  # version 1 kept a recalibration
    (bench.judge(1) / "segmenter.json").write_text(json.dumps({"provenance": calibrations}))
    calls = []

    fake_run = fake_trainers(calls)

    monkeypatch.setattr(synthetic_ablation, "run", fake_run)
    monkeypatch.setattr(evidence, "run", fake_run)
    bench.generator(Cell(1, "images_plentiful", 0.3, 0, "pseudo"))
    predict = [c for c in calls if c[0] == "segmentation_tf.predict"]
    assert len(predict) == 1 and Path(predict[0][predict[0].index("--model") + 1]) == bench.judge(1)
    assert predict[0][predict[0].index("--threshold") + 1] == "0.98"  # the pseudo recipe's version 1
    bench.generator(Cell(1, "images_plentiful", 0.3, 0, "vpred"))  # version 2: a second pseudo store
    predict = [c for c in calls if c[0] == "segmentation_tf.predict"]
    assert len(predict) == 2 and predict[1][predict[1].index("--threshold") + 1] == "0.9995"
    assert bench.pseudo_store(1, 2) != bench.pseudo_store(1, 1)
    with pytest.raises(evidence.UserError, match="grid version 3"):
        bench.pseudo_store(1, 3)
    labelled, layout = bench.layout.labelled(1, cfg), bench.layout
    unlabelled = [z for z in layout.pool if z not in labelled]
    assert len(read_image_stack(predict[0][predict[0].index("--images") + 1])) == len(unlabelled)
    store = TileStore(bench.pseudo_store(1))
    slices = {r["slice"] for r in store.records}
    assert slices == set(layout.pool) | set(layout.val) and not slices & set(layout.test)
    for z in slices:
        idx = [i for i, r in enumerate(store.records) if r["slice"] == z]
        got = store.masks(np.array(idx))
        if z in unlabelled:
            assert got.all()  # the prediction
        else:
            assert (got.sum() > 0) and not got.all()  # the real phantom masks (labelled or validation)
    stages = {c[c.index("--stage") + 1]: c for c in calls if c[0] == "generation_torch.train"}
    assert Path(stages["diffusion"][stages["diffusion"].index("--store") + 1]) == bench.pseudo_store(1)
    assert Path(stages["vae"][stages["vae"].index("--store") + 1]) == bench.store(0)
    sample = next(c for c in calls if c[0] == "generation_torch.sample")
    assert Path(sample[sample.index("--masks-from") + 1]) == bench.store(1)  # masks from labelled slices
    # starting from real tiles: the labelled ones, or the pool's with its pseudo-labels (version 2), with
    # vpred's generator (no more training), each into a store of its own
    trained = len([c for c in calls if c[0] == "generation_torch.train"])
    for recipe, source in (("vpred_sdedit", bench.store(1)), ("vpred_sdedit_pool", bench.pseudo_store(1, 2))):
        out = bench.generator(Cell(1, "images_plentiful", 0.3, 0, recipe))
        sample = [c for c in calls if c[0] == "generation_torch.sample"][-1]
        assert Path(sample[sample.index("--masks-from") + 1]) == source
        assert sample[sample.index("--strength") + 1] == "0.5"
        assert Path(sample[sample.index("--out") + 1]) == out
    assert len([c for c in calls if c[0] == "generation_torch.train"]) == trained
    assert len({VPRED_SDEDIT.store, VPRED_SDEDIT_POOL.store, cfg.recipe("vpred").store}) == 3
    with pytest.raises(ValueError, match="without pseudo_masks: bad"):
        EvidenceConfig(side_recipes=(replace(VPRED_SDEDIT_POOL, name="bad", pseudo_masks=0),))


def test_pool_pretrained_denoiser_trains_once_without_masks_and_starts_every_k(tmp_path, monkeypatch):
    bench, calls = _faked_bench(tmp_path, monkeypatch, EvidenceConfig(ks=(1, 2, 0)))
    for k in (1, 2):
        bench.generator(Cell(k, "images_plentiful", 0.3, 0, "pool_pretrained"))
    denoisers = [c for c in calls if c[0] == "generation_torch.train" and "diffusion" in c]
    pool, per_k = denoisers[0], denoisers[1:]
    assert Path(pool[pool.index("--store") + 1]) == bench.store(0)
    assert pool[pool.index("--cond-dropout") + 1] == "1" and "--init-denoiser" not in pool
    assert pool[-2:] == ["--diffusion-minutes", "60"]  # after the grid's own time box: the last flag wins
    assert len(per_k) == 2  # the pool denoiser trained once, both k start from it
    for k, c in zip((1, 2), per_k, strict=True):
        assert Path(c[c.index("--store") + 1]) == bench.store(k) and "--cond-dropout" not in c
        assert Path(c[c.index("--init-denoiser") + 1]) == Path(pool[pool.index("--out") + 1]) / "generator.pt"
    assert len([c for c in calls if "vae" in c]) == 1  # one pool VAE


def test_cells_on_an_older_threshold_grid_are_recalibrated_from_their_saved_segmenters(tmp_path, monkeypatch):
    """A finished cell whose segmenter was calibrated on the version-1 grid is recalibrated and scored
    again (prediction only, no training, no generator); one whose segmenter is not on this machine is
    dropped so it trains again; generator figures judged at an older threshold are dropped."""
    cfg = EvidenceConfig(ks=(1,))
    images, masks = phantom_stack(10, seed=0, config=PhantomConfig(height=256, width=256))
    bench = Bench(cfg, tmp_path, images, masks, Layout.of(len(images), cfg), tmp_path / "log")
    kept, gone = Cell(1, "images_plentiful", 0.3, 0, "vpred"), Cell(1, "real_only", 0.0, 1)
    seg = evidence.segmenter_dir(kept, tmp_path)
    seg.mkdir(parents=True)
    provenance = {"calibration": {"threshold": 0.98, "iou": 0.6}, "train_seconds_this_process": 600,
                  "policy": "mixed_bfloat16"}
    (seg / "segmenter.json").write_text(json.dumps({"threshold": 0.98, "provenance": provenance}))
    (seg / "test_scores.json").write_text(json.dumps({"iou": 0.6}))
    results = {kept.key: {**_cell(1, "images_plentiful", 0.3, 0, 0.6, calibration=1), "recipe": "vpred",
                          "minutes": 8.0},
               gone.key: _cell(1, "real_only", 0.0, 1, 0.7, calibration=1)}
    measured = {"k=1|images_plentiful|vpred": {"fidelity_iou": 0.9}, "fresh": {"judge_calibration": 2}}
    calls = []

    def fake_run(args, log):
        calls.append(args[0])
        if args[0] == "segmentation_tf.recalibrate":
            calibration = {"threshold": 0.9995, "iou": 0.75, "version": 2}
            (seg / "segmenter.json").write_text(json.dumps(
                {"threshold": 0.9995, "provenance": {**provenance, "calibration": calibration}}))
        elif args[0] == "segmentation_tf.evaluate":
            Path(args[args.index("--json") + 1]).write_text(json.dumps({"iou": 0.7}))

    monkeypatch.setattr(evidence, "run", fake_run)
    monkeypatch.setattr(Bench, "generator", lambda self, cell: pytest.fail("a rescore needs no generator"))
    evidence.rescore_stale(results, measured, bench)
    assert calls == ["segmentation_tf.recalibrate", "segmentation_tf.evaluate"]
    record = results[kept.key]
    assert record["test_iou"] == 0.7 and record["val_iou"] == 0.75 and record["threshold"] == 0.9995
    assert record["test_iou_before_recalibration"] == 0.6 and record["threshold_before_recalibration"] == 0.98
    assert record["minutes"] == 8.0 and record["calibration"] == 2 and record["recipe"] == "vpred"
    assert gone.key not in results and list(measured) == ["fresh"]
    assert evidence.recalibration_rows(results) == [
        {"cell": kept.key, "threshold_before": 0.98, "threshold": 0.9995, "test_iou_before": 0.6,
         "test_iou": 0.7}]
    calls.clear()
    evidence.rescore_stale(results, measured, bench)
    assert calls == []  # nothing stale any more


def test_self_training_trains_on_the_pseudo_labelled_pool_with_the_real_only_budget(tmp_path, monkeypatch):
    cfg = EvidenceConfig(ks=(1,))
    images, masks = phantom_stack(12, seed=0, config=PhantomConfig(height=256, width=256))
    bench = Bench(cfg, tmp_path, images, masks, Layout.of(len(images), cfg), tmp_path / "log")
    bench.judge(1).mkdir(parents=True)
    judge = {"provenance": {"calibration": {"threshold": 0.99, "version": evidence.CALIBRATION_VERSION}}}
    (bench.judge(1) / "segmenter.json").write_text(json.dumps(judge))
    calls, trainers = [], fake_trainers([])

    def fake_run(args, log):
        calls.append(args)
        if args[0] == "segmentation_tf.fit":
            out = Path(args[args.index("--out") + 1])
            out.mkdir(parents=True)
            calibration = {"threshold": 0.99, "iou": 0.7, "version": evidence.CALIBRATION_VERSION}
            provenance = {"calibration": calibration, "train_seconds_this_process": 60,
                          "policy": "mixed_bfloat16"}
            (out / "segmenter.json").write_text(json.dumps({"threshold": 0.99, "provenance": provenance}))
        elif args[0] == "segmentation_tf.evaluate":
            Path(args[args.index("--json") + 1]).write_text(json.dumps({"iou": 0.75}))
        else:
            trainers(args, log)

    monkeypatch.setattr(evidence, "run", fake_run)
    record = evidence.run_cell(Cell(1, "self_training", 0.0, 3), bench)
    fit = next(c for c in calls if c[0] == "segmentation_tf.fit")
    assert Path(fit[fit.index("--store") + 1]) == bench.pseudo_store(1)
    assert fit[-5:] == ["--seed", "3", "--precision", "float32", "--no-xla"]  # a new group: this machine's
    assert "--synthetic-store" not in fit and "--data-seed" not in fit
    assert record["test_iou"] == 0.75 and record["arm"] == "self_training"


def test_judge_figures_on_drawn_and_real_tiles_by_hand(tmp_path, monkeypatch):
    """Fidelity with the judge's precision, recall and mean probability on mask pixels (how easy the
    tiles are for it), from stubbed judge probabilities: counts by hand."""
    from bench.synthetic_variants import fidelity
    from segmentation_tf import filter_synthetic
    from shared.tiles import tile_stack

    masks = np.zeros((1, 256, 256), np.uint8)
    masks[0, :16, :16] = 1  # 256 true pixels
    images = np.zeros((1, 256, 256), np.uint8)
    store = TileStore.create(tmp_path / "s")
    store.append(*tile_stack(images, masks, "t", {0: "train"}))
    probs = np.zeros((1, 256, 256), np.float32)
    probs[0, :16, :8] = 0.9  # 128 true positives at 0.9
    probs[0, :16, 8:16] = 0.3  # 128 missed at 0.3
    probs[0, 100:104, :16] = 0.8  # 64 false positives
    monkeypatch.setattr(filter_synthetic, "judge_probabilities", lambda judge, s: (probs, 0.5))
    got = fidelity(store, tmp_path / "judge")
    assert got["fidelity_iou"] == pytest.approx(128 / (256 + 64))
    assert got["judge_precision"] == pytest.approx(128 / 192) and got["judge_recall"] == pytest.approx(0.5)
    assert got["judge_prob_on_mask"] == pytest.approx(0.6)
    figures = evidence.judge_figures(got, {**got, "judge_recall": 0.25})
    assert figures["judge_recall"] == 0.5 and figures["judge_recall_real"] == 0.25
    assert figures["judge_on_real_test"] == round(128 / 320, 4)


def test_a_damaged_results_file_is_one_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "evidence.json"
    bad.write_text('{"results_by_cell": ')
    assert run_cli(evidence_main, ["--results", str(bad), "--work", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {bad}: not a results file of bench.evidence") and "\n" not in err
    bad.write_text('{"results_by_cell": [1, 2]}')
    assert run_cli(evidence_main, ["--results", str(bad), "--work", str(tmp_path)]) == 2
    assert "no results_by_cell mapping" in capsys.readouterr().err


def test_the_long_and_tiles_presets_as_fit_reads_their_flags():
    from segmentation_tf.data import batch_composition
    from segmentation_tf.fit import parser
    from segmentation_tf.presets import PRESETS

    final, long, tiles, matched_ema, matched_best, matched = (
        parser().parse_args(["--store", "s", *evidence.PRESETS[p].segmenter_flags])
        for p in ("final", "long", "tiles", "matched_ema", "matched_best", "matched"))
    assert (final.epochs * final.steps_per_epoch, long.epochs * long.steps_per_epoch) == (800, 2000)
    # long: everything else (crop, batch, EMA, precision, prediction) is the final preset's
    assert {k: v for k, v in vars(long).items() if k not in ("epochs", "steps_per_epoch")} == \
        {k: v for k, v in vars(final).items() if k not in ("epochs", "steps_per_epoch")}
    # tiles: the reference's preset (whole 256 px tiles, its overlap), 720 fixed steps of 10, EMA; the
    # precision is each pairing group's (Bench.precision), none in the presets
    assert (tiles.preset, tiles.crop, tiles.overlap, tiles.batch_size) == ("real", None, None, 10)
    assert (tiles.epochs * tiles.steps_per_epoch, tiles.ema, tiles.restore_best) == (720, 0.99, False)
    assert not any("--precision" in evidence.PRESETS[p].segmenter_flags for p in ("matched", "final"))
    # matched_ema: the same with the reference's tile count (1485 steps of 8 = 11880 tiles)
    assert matched_ema.epochs * matched_ema.steps_per_epoch * matched_ema.batch_size == 12000
    assert {k: v for k, v in vars(matched_ema).items() if k != "epochs"} == \
        {k: v for k, v in vars(tiles).items() if k != "epochs"}
    # matched_best: matched_ema ending like the reference (the real preset's best validation epoch)
    ending = ("ema", "restore_best")
    assert {k: v for k, v in vars(matched_best).items() if k not in ending} == \
        {k: v for k, v in vars(matched_ema).items() if k not in ending}
    # the records measured before 2026-12-06 keep the real preset's ending of then (best validation
    # epoch); the live grids' references end as the preset does now (EMA 0.99 of the last weights)
    reference = parser().parse_args(["--store", "s", *evidence.PRESETS["matched_best"].reference_flags])
    assert (matched_best.ema, matched_best.restore_best) == (None, None)
    assert (reference.ema, reference.restore_best) == (None, True)
    assert not PRESETS["real"].train.restore_best and PRESETS["real"].train.ema_momentum == 0.99
    for name in ("standard", "final", "long", "tiles", "matched_ema", "matched_best"):
        assert "--restore-best" in evidence.PRESETS[name].reference_flags, name
    for name in ("matched", "full"):
        live = parser().parse_args(["--store", "s", *evidence.PRESETS[name].reference_flags])
        assert (live.ema, live.restore_best) == (None, None), name
    # matched: matched_ema with fit's default precise BatchNorm statistics, and so is its reference
    # (the user's documented command); every record keeps the statistics it was measured with
    assert {k: v for k, v in vars(matched).items() if k != "precise_bn"} == \
        {k: v for k, v in vars(matched_ema).items() if k != "precise_bn"}
    user = parser().parse_args(["--store", "s", *evidence.PRESETS["matched"].reference_flags])
    assert matched.precise_bn is user.precise_bn is None and PRESETS["real"].train.precise_bn
    for name in ("standard", "final", "long", "tiles", "matched_ema", "matched_best"):
        for flags in (evidence.PRESETS[name].segmenter_flags, evidence.PRESETS[name].reference_flags):
            assert parser().parse_args(["--store", "s", *flags]).precise_bn is False, name
    # batches of 10 hold every ratio exactly (8 would give 0.2 and 0.3 the same 2 tiles)
    cfg = evidence.PRESETS["tiles"]
    assert [batch_composition(tiles.batch_size, r)[1] for r in cfg.ratios] == [1, 2, 3]
    assert batch_composition(8, 0.2) == batch_composition(8, 0.3)
    # the GPU preset has a fixed step count too (the real preset's epochs are one pass over the real
    # tiles: 2 steps at k = 1), and it is the CPU default's budget
    full = parser().parse_args(["--store", "s", *evidence.PRESETS["full"].segmenter_flags])
    assert vars(full) == vars(matched)
    for name in ("long", "tiles", "matched_ema", "matched_best", "matched"):
        assert evidence.PRESETS[name].generator_flags == evidence.PRESETS["final"].generator_flags
        # baseline, main recipe, its pretrain use; matched also the long-denoiser rung and the paired
        # starting-from-real-tiles and copy-paste recipes, copy-paste onto the labelled tiles, half drawn
        # half pasted, the pasted re-rendered, copy-paste onto unlabelled pool tiles and onto their far
        # negatives (retired: none measured here), the generator drawing the pool's shapes (2 regions x 5
        # seeds each), and the ratio probe (vpred and copy-paste onto the labelled tiles at 0.6: the
        # 256 px region x 5 seeds)
        assert len(cells(evidence.PRESETS[name], {})) == (232 if name == "matched" else 142)


def test_threshold_readouts_by_hand():
    from bench.thresholds import readout

    # foreground probabilities 0.4, 0.6, 0.8; background 0.2, 0.55
    probs = np.array([[0.2, 0.4, 0.6, 0.8, 0.55]], np.float32)
    masks = np.array([[0, 1, 1, 1, 0]], np.uint8)
    r = readout(probs, masks, calibrated=0.7)
    assert r["calibrated"] == pytest.approx(1 / 3)   # only 0.8 predicted: 1 of 3 foreground
    assert r["at_0.5"] == pytest.approx(2 / 4)       # 0.55, 0.6, 0.8: 2 hits, union 3 + 1 false
    assert r["oracle"] == pytest.approx(3 / 4)       # at 0.4 (0.55 still a false positive): 3 / 4
    assert 0.2 < r["oracle_threshold"] <= 0.4


def test_error_budget_splits_errors_by_where_they_lie_by_hand():
    from bench.thresholds import edge_band, error_budget

    masks = np.zeros((1, 12, 12), np.uint8)
    masks[0, 3:9, 3:9] = 1                      # one 6 x 6 object: 36 px
    band = edge_band(masks, width=1)
    assert band.sum() == 20 + 24 + 4            # the outer ring, the 4-neighbours, the corners (1.41 -> 1)
    pred = np.zeros_like(masks, bool)
    pred[0, 3:9, 4:10] = True                   # shifted one px right: column 3 missed, column 9 false
    pred[0, 5, 5] = False                       # a hole in the core
    pred[0, 0, 11] = True                       # a false pixel far from the object
    e = error_budget(pred, masks, width=1, min_object_px=30)
    assert e["fn_edge"] == pytest.approx(6 / 36) and e["fn_core"] == pytest.approx(1 / 36)
    assert e["fp_edge"] == pytest.approx(6 / 36) and e["fp_far"] == pytest.approx(1 / 36)
    assert e["objects_missed"] == 0.0           # 29 of 36 px found
    iou = 29 / (36 + 7)
    assert 1 - iou == pytest.approx(sum(e[k] for k in ("fn_edge", "fn_core", "fp_edge", "fp_far"))
                                    / (1 + e["fp_edge"] + e["fp_far"]))
    masks[0, 0:2, 0:2] = 1                      # a 4 px object found: too small to count either way
    masks[0, 10:12, 0:11] = 1                   # a 22 px object not found
    assert error_budget(pred, masks, width=1, min_object_px=20)["objects_missed"] == pytest.approx(1 / 2)
    # an object on the image border: the border is not an edge, so its core reaches it
    border = np.zeros((1, 8, 8), np.uint8)
    border[0, :, :4] = 1
    assert not edge_band(border, width=1)[0, 3, 0] and edge_band(border, width=1)[0, 3, 3]


def test_threshold_readouts_pair_each_arm_with_real_only_by_seed():
    from bench.thresholds import paired_readouts

    def scores(*values: float) -> dict[int, dict[str, float]]:
        return {s: {"calibrated": v, "at_0.5": v + 0.01, "oracle": v + 0.02} for s, v in enumerate(values)}

    rows = paired_readouts({"real_only": scores(0.80, 0.82, 0.84), "aa": scores(0.81, 0.81, 0.85, 0.99)})
    (row,) = rows
    assert row["arm"] == "aa" and row["seeds"] == [0, 1, 2]   # seed 3 has no real-only pair
    assert row["calibrated"] == pytest.approx(1 / 300, abs=1e-4)       # (0.01 - 0.01 + 0.01) / 3
    assert row["at_0.5"] == row["calibrated"] == row["oracle"]
    assert row["calibrated_95"][0] < row["calibrated"] < row["calibrated_95"][1]


def test_threshold_rescoring_without_a_grid_says_which_file_is_missing(tmp_path, monkeypatch, capsys):
    from bench import thresholds

    monkeypatch.setattr(thresholds, "ROOT", tmp_path)
    assert run_cli(thresholds.main, ["--preset", "matched", "--work", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "evidence_matched.json: no results of the matched grid" in err and "Traceback" not in err


def test_threshold_rescoring_reuses_cached_probabilities_only_for_the_same_weights(tmp_path, monkeypatch):
    from bench.thresholds import model_digest, test_probs
    from segmentation_tf import sidecar

    class Predicting(Exception):
        pass

    def read_sidecar(_):
        raise Predicting  # the first step of a fresh prediction

    monkeypatch.setattr(sidecar, "read_sidecar", read_sidecar)

    (tmp_path / "segmenter.keras").write_bytes(b"weights A")
    probs = np.full((1, 4, 4), 0.25, np.float32)
    np.savez_compressed(tmp_path / "test_probs.npz", probs=probs.astype(np.float16),
                        model_sha256=model_digest(tmp_path))
    np.testing.assert_array_equal(test_probs(tmp_path, np.zeros((1, 4, 4), np.float32)), probs)
    (tmp_path / "segmenter.keras").write_bytes(b"weights B")  # e.g. recalibrated with new statistics
    with pytest.raises(Predicting):  # not reused: predicted afresh
        test_probs(tmp_path, np.zeros((1, 4, 4), np.float32))


def test_slice_positions_come_from_the_subsets_json(tmp_path, monkeypatch):
    from bench import synthetic_ablation

    monkeypatch.setattr(synthetic_ablation, "EPFL", tmp_path)
    assert synthetic_ablation.slice_positions() is None  # no EPFL stack: the phantom, independent slices
    (tmp_path / "training.tif").write_bytes(b"")
    (tmp_path / "training_slices.json").write_text(json.dumps({"slices": [0, 5, 9]}))
    assert synthetic_ablation.slice_positions() == [0, 5, 9]
    (tmp_path / "training_slices.json").write_text("{")
    with pytest.raises(evidence.UserError, match="training_slices.json: cannot read"):
        synthetic_ablation.slice_positions()


def test_a_resumed_cell_counts_the_training_of_its_killed_processes():
    resumed = {"train_seconds_this_process": 600.0, "train_seconds_all_processes": 1500.0}
    assert evidence.cell_minutes(resumed, 900.0) == {"train_minutes": 25.0, "minutes": 30.0}
    older = {"train_seconds_this_process": 600.0}  # a fit from before it kept the count
    assert evidence.cell_minutes(older, 900.0) == {"train_minutes": 10.0, "minutes": 15.0}


def test_pairing_groups_keep_their_xla_use_and_new_float32_groups_take_it(tmp_path):
    from segmentation_tf.fit import parser

    cfg = evidence.PRESETS["matched"]
    results = {Cell(2, "real_only", 0.0, 0).key: _cell(2, "real_only", 0.0, 0, 0.88),  # from before XLA
               Cell(4, "real_only", 0.0, 0).key: {**_cell(4, "real_only", 0.0, 0, 0.88), "xla": True},
               Cell(4, "aa", 0.0, 0).key: {**_cell(4, "aa", 0.0, 0, 0.88), "xla": False}}  # arms don't decide
    assert evidence.group_xlas(results) == {(2, 0): False, (4, 0): True}
    bench = Bench(cfg, tmp_path, np.zeros((1, 1, 1)), np.zeros((1, 1, 1)), Layout.of(27, cfg), tmp_path / "l",
                  xlas=evidence.group_xlas(results), native_xla=True)
    assert bench.xla(Cell(2, "images_plentiful", 0.3, 0, "vpred")) is False  # paired with its real only
    assert bench.xla(Cell(4, "images_plentiful", 0.3, 0, "vpred")) is True
    assert bench.xla(Cell(2, "real_only", 0.0, 1)) is True  # a new group: this machine's choice
    assert replace(bench, native_xla=False).xla(Cell(2, "real_only", 0.0, 1)) is False
    assert bench.xla(Cell(0, "reference", 0.0, 0)) is None  # a user's command
    cell = Cell(2, "real_only", 0.0, 0)
    for xla, flag in ((True, ["--xla"]), (False, ["--no-xla"]), (None, [])):
        flags = segmenter_flags(cell, cfg, None, "float32", xla)
        assert flags == [*segmenter_flags(cell, cfg, None, "float32"), *flag]
        assert parser().parse_args(["--store", "s", *flags]).xla is xla


def test_pairing_groups_keep_their_precision_and_a_machine_runs_its_own_first(tmp_path):
    cfg = replace(evidence.PRESETS["matched"], ks=(1, 2, 4, 0), lever_ks=(1, 2))  # its slice budgets
    results = {}
    for s in range(5):  # the k = 1 groups ran in bf16 on an AMX machine
        for arm in ("real_only", "aa"):
            results[Cell(1, arm, 0.0, s).key] = {**_cell(1, arm, 0.0, s, 0.87), "precision": "mixed_bfloat16"}
    layout = Layout.of(27, cfg, EPFL_Z)
    todo = [c for c in cells(cfg, results) if c.key not in results]
    fp32 = Bench(cfg, tmp_path, np.zeros((1, 1, 1)), np.zeros((1, 1, 1)), layout, tmp_path / "l",
                 evidence.group_precisions(results), native="float32")
    bf16 = replace(fp32, native="mixed_bfloat16")
    vpred = Cell(1, "images_plentiful", 0.3, 0, "vpred")
    assert fp32.precision(vpred) == bf16.precision(vpred) == "mixed_bfloat16"  # paired with its real only
    assert evidence.next_cell(todo, bf16) == todo[0]
    # a float32 machine skips the bf16 groups and opens a new one in its own precision
    first = evidence.next_cell(todo, fp32)
    assert first.arm in ("real_only", "reference") and (first.k, first.seed) not in fp32.precisions
    assert fp32.precision(Cell(2, "aa", 0.0, 0)) is None  # its real only decides first
    assert not fp32.runnable_here(Cell(2, "aa", 0.0, 0)) and fp32.runnable_here(Cell(2, "real_only", 0.0, 0))
    assert evidence.next_cell([vpred], fp32) == vpred  # nothing else left: it runs, slowly
    # the plan: a float32 machine opens new groups in float32, then runs their arms in float32 too,
    # and leaves every arm of the bf16 groups to a bf16 machine
    here, waiting = evidence.plan(todo, fp32)
    assert {p for _, p in here} == {"float32"} and {p for _, p in waiting} == {"mixed_bfloat16"}
    assert [c for c, _ in waiting] == [c for c in todo if c.k == 1]
    assert Cell(2, "aa", 0.0, 0) in [c for c, _ in here]
    assert fp32.precisions == evidence.group_precisions(results)  # planning changes nothing
    here, waiting = evidence.plan(todo, bf16)
    assert [c for c, _ in here] == todo and waiting == []
    # the hours a plan prints: the mean minutes of the real-only and A/A cells in that precision
    results[Cell(1, "real_only", 0.0, 0).key]["minutes"] = 31.0  # the others: 1.0
    assert evidence.segmenter_minutes(results, precision="mixed_bfloat16") == pytest.approx(4.0)  # 40 / 10
    assert evidence.segmenter_minutes(results, precision="float32") is None
    assert evidence.hours(30, 4.0) == "; at 4 min a cell, 2 h or more" and evidence.hours(30, None) == ""


def _costed_bench(tmp_path, monkeypatch, cfg=None):
    """A float32 bench without XLA on a CPU called EPYC, whose 256 px real-only seed 0 took 80 min."""
    cfg = cfg or evidence.PRESETS["matched"]
    monkeypatch.setattr(evidence, "machine", lambda: {"cpu": "EPYC", "isa": "avx512_bf16"})
    results = {Cell("256px", "real_only", 0.0, 0).key: {**_cell("256px", "real_only", 0.0, 0, 0.56),
                                                         "minutes": 80.0, "cpu": "EPYC", "xla": False,
                                                         "precision": "float32"}}
    masks = np.zeros((27, 768, 1024), np.uint8)
    masks[:, 300:340, 400:460] = 1  # one mitochondrion per page: the regions find their corners
    bench = Bench(cfg, tmp_path, np.zeros((1, 1, 1)), masks, Layout.of(27, cfg, EPFL_Z),
                  tmp_path / "l", evidence.group_precisions(results), native="float32",
                  xlas=evidence.group_xlas(results))
    return bench, results


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{}")


def test_a_cells_cost_adds_what_it_must_train_first(tmp_path, monkeypatch):
    bench, results = _costed_bench(tmp_path, monkeypatch)
    cost = lambda cell: evidence.cell_cost(cell, bench, results)  # noqa: E731
    names = lambda c: [name for name, _ in c.first]  # noqa: E731
    assert cost(Cell("256px", "real_only", 0.0, 1)) == evidence.Cost(80.0)
    self_training = Cell("256px", "self_training", 0.0, 0)
    # the judge (the grid's real-only seed 0, absent here) trains again, then labels the pool
    assert cost(self_training).minutes == pytest.approx(80 + 80 + evidence.PREDICT_MINUTES)
    assert names(cost(self_training)) == ["its judge", "pseudo-labels"]
    _touch(bench.judge("256px") / "segmenter.json")
    assert cost(self_training).minutes == pytest.approx(80 + evidence.PREDICT_MINUTES)
    _touch(evidence.pseudo_folder(bench.work, "256px") / "store" / "manifest.json")
    assert cost(self_training) == evidence.Cost(80.0)
    # pseudo-labels kept beside the results for today's pages stand in for an absent judge
    kept = replace(bench, work=tmp_path / "fresh", kept=tmp_path / "kept")
    assert names(evidence.cell_cost(self_training, kept, results)) == ["its judge", "pseudo-labels"]
    record = kept.kept_pseudo("256px", evidence.CALIBRATION_VERSION)[1]
    record.parent.mkdir()
    record.write_text(json.dumps(kept.pseudo_record("256px", evidence.CALIBRATION_VERSION)))
    assert evidence.cell_cost(self_training, kept, results) == evidence.Cost(80.0)
    # the main recipe's generator: the pool VAE (35 min box of the real preset), the denoiser (25), drawing
    vpred = Cell("256px", "images_plentiful", 0.3, 0, "vpred")
    assert cost(vpred).minutes == pytest.approx(80 + 35 + 25 + evidence.DRAW_MINUTES)
    assert names(cost(vpred)) == ["the pool VAE", "the generator", "its tiles"]
    _touch(bench.work / f"pool_vae_{bench.cfg.recipe('vpred').vae}" / "vae.pt")
    assert cost(vpred).minutes == pytest.approx(80 + 25 + evidence.DRAW_MINUTES)
    # a plan counts what its earlier cells make: the next seed only trains its segmenter, and a recipe
    # drawn by the same generator only draws
    sdedit = Cell("256px", "images_plentiful", 0.3, 0, "vpred_sdedit_pool_low")
    later = evidence.planned_costs([vpred, replace(vpred, seed=1), sdedit], bench, results)
    draw = evidence.DRAW_MINUTES
    assert [c.minutes for c in later] == pytest.approx([80 + 25 + draw, 80, 80 + draw])
    # a trained segmenter costs its scoring only, still counted at a cell's minutes (an upper bound)
    _touch(evidence.segmenter_dir(vpred, bench.work) / "segmenter.json")
    assert cost(vpred) == evidence.Cost(80.0)
    # a cell measured on this CPU model with this instruction set counts before the model's others
    results[Cell("256px", "real_only", 0.0, 1).key] = {**results[Cell("256px", "real_only", 0.0, 0).key],
                                                       "seed": 1, "minutes": 40.0, "isa": "avx512_bf16"}
    assert cost(Cell("256px", "real_only", 0.0, 2)) == evidence.Cost(40.0)
    # nothing measured on this CPU, or a stage without a time box (the GPU preset): not estimable
    assert evidence.cell_cost(vpred, bench, {}).minutes is None
    full, _ = _costed_bench(tmp_path / "full", monkeypatch, evidence.PRESETS["full"])
    assert evidence.cell_cost(replace(vpred, seed=1), full, results).minutes is None


def test_another_arms_fit_on_this_isa_counts_before_other_isas_real_only_cells(tmp_path, monkeypatch):
    """Where this CPU's instruction set has no real-only or A/A cell with the group's XLA use, another
    arm's training minutes there (plus the scoring) beat the model's other machines' cells."""
    bench, results = _costed_bench(tmp_path, monkeypatch)  # real only seed 0: 80 min, no ISA recorded
    seed1 = Cell("256px", "real_only", 0.0, 1)
    assert evidence.cell_cost(seed1, bench, results) == evidence.Cost(80.0)
    here = {"cpu": "EPYC", "isa": "avx512_bf16", "xla": False, "precision": "float32"}
    results[Cell("256px", "self_training", 0.0, 2).key] = {
        **_cell("256px", "self_training", 0.0, 2, 0.57), **here, "minutes": 60.0, "train_minutes": 18.5}
    results[Cell("256px", "images_plentiful", 0.3, 2, "vpred").key] = {
        **_cell("256px", "images_plentiful", 0.3, 2, 0.6), **here, "minutes": 90.0, "train_minutes": 21.5}
    assert evidence.fit_minutes(results, **here) == pytest.approx(20.0 + evidence.SCORE_MINUTES)
    assert evidence.cell_cost(seed1, bench, results) == evidence.Cost(20.0 + evidence.SCORE_MINUTES)
    # another XLA use there is not this one: the model's cells count again
    assert evidence.fit_minutes(results, **{**here, "xla": True}) is None
    results[Cell("256px", "real_only", 0.0, 3).key] = {**_cell("256px", "real_only", 0.0, 3, 0.5), **here,
                                                       "minutes": 25.0, "train_minutes": 23.0}
    assert evidence.cell_cost(seed1, bench, results) == evidence.Cost(25.0)  # real only there: first


def test_the_cost_rows_keep_apart_the_instruction_sets_of_one_cpu_model():
    """One model name covers EPYCs with and without avx512: cells that recorded the set count apart."""
    results = {Cell(1, "real_only", 0.0, s).key: {**_cell(1, "real_only", 0.0, s, 0.87), "minutes": m,
                                                  "cpu": "AMD EPYC", **isa}
               for s, m, isa in ((0, 90.0, {}), (1, 70.0, {}), (2, 30.0, {"isa": "avx512_bf16"}))}
    results[Cell(1, "aa", 0.0, 2).key] = {**_cell(1, "aa", 0.0, 2, 0.87), "minutes": 40.0, "cpu": "AMD EPYC",
                                          "isa": "avx512_bf16"}
    assert evidence.cost_by_cpu(results) == [
        {"cpu": "AMD EPYC", "cells": 2, "minutes": 160.0, "minutes_per_real_only_cell": 80.0},
        {"cpu": "AMD EPYC", "isa": "avx512_bf16", "cells": 2, "minutes": 70.0,
         "minutes_per_real_only_cell": 35.0}]


def test_a_deadline_starts_only_cells_that_fit(tmp_path, monkeypatch):
    bench, results = _costed_bench(tmp_path, monkeypatch)
    self_training, plain = Cell("256px", "self_training", 0.0, 0), Cell("256px", "aa", 0.0, 0)
    other_precision = Cell(1, "aa", 0.0, 0)
    bench.precisions[(1, 0)] = "mixed_bfloat16"
    todo = [other_precision, self_training, plain]
    cell, passed = evidence.affordable_cell(todo, bench, results, 100.0)
    assert cell == plain and [c for c, _ in passed] == [self_training]  # 165 min does not fit in 100
    assert evidence.affordable_cell(todo, bench, results, 200.0)[0] == self_training
    assert evidence.affordable_cell(todo, bench, results, 79.0)[0] is None


def test_a_run_with_minutes_stops_where_no_cell_fits(tmp_path, monkeypatch, capsys):
    images, masks = phantom_stack(10, seed=0, config=PhantomConfig(height=256, width=256))
    monkeypatch.setattr(evidence, "load_volume", lambda: (images, masks, "phantom"))
    monkeypatch.setattr(evidence, "slice_positions", lambda: None)
    monkeypatch.setattr(evidence, "native_precision", lambda: "float32")
    monkeypatch.setattr(evidence, "run", lambda *a, **k: pytest.fail("nothing may train"))
    results = tmp_path / "r.json"
    evidence.main(["--preset", "quick", "--work", str(tmp_path / "w"), "--results", str(results),
                   "--minutes", "30"])
    assert "no cell left fits in the 30 min left of --minutes" in capsys.readouterr().out  # none measured
    assert json.loads(results.read_text())["results_by_cell"] == {}
    with pytest.raises(SystemExit) as exit_info:
        evidence.main(["--preset", "quick", "--minutes", "0"])
    assert exit_info.value.code == 2 and "--minutes: must be > 0" in capsys.readouterr().err


def test_a_cell_trained_outside_the_grid_takes_its_groups_recorded_precision(tmp_path):
    assert evidence.grid_precisions("matched", tmp_path) == {}  # no grid yet: the machine's own
    record = {**_cell(1, "real_only", 0.0, 0, 0.87), "precision": "mixed_bfloat16"}
    saved = {"results_by_cell": {Cell(1, "real_only", 0.0, 0).key: record}}
    (tmp_path / "evidence_matched.json").write_text(json.dumps(saved))
    assert evidence.grid_precisions("matched", tmp_path) == {(1, 0): "mixed_bfloat16"}


def test_named_cells_run_in_the_order_given_and_a_wrong_key_exits_2(tmp_path, monkeypatch, capsys):
    """--cell: the named cells only, in the order given (not the plan's), a measured one skipped with
    a line; a key outside the grid is one line naming it, exit 2, before anything is written."""
    images, masks = phantom_stack(10, seed=0, config=PhantomConfig(height=256, width=256))
    monkeypatch.setattr(evidence, "load_volume", lambda: (images, masks, "phantom"))
    monkeypatch.setattr(evidence, "slice_positions", lambda: None)
    monkeypatch.setattr(evidence, "native_precision", lambda: "float32")
    monkeypatch.setattr(evidence, "measure_generators", lambda *a: None)
    ran = []

    def fake_cell(cell, bench):
        ran.append(cell.key)
        return {**asdict(cell), "test_iou": 0.5, "val_iou": 0.5, "minutes": 1.0,
                "calibration": evidence.CALIBRATION_VERSION}

    monkeypatch.setattr(evidence, "run_cell", fake_cell)
    monkeypatch.setattr(evidence, "write_results", lambda path, results, *a: path.write_text(
        json.dumps({"results_by_cell": results})))
    results = tmp_path / "r.json"
    first, second = "k=0|real_only|r=0|seed=1", "k=256px|real_only|r=0|seed=0"
    common = ["--preset", "quick", "--work", str(tmp_path / "w"), "--results", str(results)]
    evidence.main([*common, "--cell", first, "--cell", second])
    assert ran == [first, second]
    total = len(cells(evidence.PRESETS["quick"], {}))
    assert f"[1/{total}] {first} ..." in capsys.readouterr().out  # counted in the whole grid
    evidence.main([*common, "--cell", second])
    assert ran == [first, second]
    assert f"{second}: measured already (0.5000); skipped" in capsys.readouterr().out
    assert run_cli(evidence_main, [*common, "--cell", "k=3|real_only|r=0|seed=0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: --cell k=3|real_only|r=0|seed=0: not a cell of the quick grid "
                   "(--plan N lists the next N)")


def test_plan_writes_nothing(tmp_path, monkeypatch, capsys):
    images, masks = phantom_stack(10, seed=0, config=PhantomConfig(height=256, width=256))
    monkeypatch.setattr(evidence, "load_volume", lambda: (images, masks, "phantom"))
    monkeypatch.setattr(evidence, "slice_positions", lambda: None)
    monkeypatch.setattr(evidence, "native_precision", lambda: "float32")
    evidence.main(["--preset", "quick", "--work", str(tmp_path / "w"), "--results", str(tmp_path / "r.json"),
                   "--plan", "3"])
    out = capsys.readouterr().out
    assert "train here in float32" in out and "  1. " in out and "  4. " not in out
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(SystemExit) as exit_info:
        evidence.main(["--preset", "quick", "--plan", "-1"])
    assert exit_info.value.code == 2 and "--plan: must be >= 0" in capsys.readouterr().err


def test_the_rise_with_k_is_paired_by_seed_and_names_its_precisions():
    cfg = EvidenceConfig(ks=(1, 2), seeds=(0, 1, 2))
    results = {}
    for s, (one, two) in enumerate([(0.80, 0.84), (0.82, 0.85), (0.81, 0.86)]):
        for k, iou, precision in ((1, one, "bf16"), (2, two, "fp32")):
            record = {**_cell(k, "real_only", 0.0, s, iou), "precision": precision}
            results[Cell(k, "real_only", 0.0, s).key] = record
    (row,) = evidence.rise_rows(results, cfg)
    # differences 0.04, 0.03, 0.05: mean 0.04, sd 0.01, t(2) 4.303 -> half width 0.0248
    assert row["mean"] == pytest.approx(0.04) and row["low"] == pytest.approx(0.04 - 0.0248, abs=1e-4)
    assert row["rises"] and row["precisions"] == "bf16, fp32"


def test_new_groups_take_xla_only_where_it_was_measured_faster(monkeypatch):
    from segmentation_tf import precision

    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "fma"})
    assert evidence.xla_measured_faster("float32") and not evidence.xla_measured_faster("mixed_bfloat16")
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
    assert not evidence.xla_measured_faster("float32")  # unmeasured there: Keras's default


def test_cells_name_the_widest_instruction_set_of_their_cpu():
    from bench.common import machine, widest_isa

    assert widest_isa({"avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16"}) == "amx"
    assert widest_isa({"avx2", "avx512f", "avx512_bf16"}) == "avx512_bf16"
    assert widest_isa({"avx2", "avx512f"}) == "avx512" and widest_isa({"avx2"}) == "avx2"
    assert widest_isa(set()) == "other"
    assert machine()["isa"] in ("amx", "avx512_bf16", "avx512", "avx2", "other")


def test_the_long_denoiser_rung_trains_its_own_denoiser_longer_than_the_preset_allows():
    from bench.evidence import PRESETS
    from generation_torch.cli_args import parser, stages_from_args

    cfg = PRESETS["matched"]
    long, main = cfg.recipe("vpred_long"), cfg.recipe("vpred")
    assert long.generator != main.generator and long.vae == main.vae  # own denoiser, the same pool VAE
    assert (long.sampling, long.mask_source, long.pseudo_masks) == (main.sampling, main.mask_source,
                                                                    main.pseudo_masks)
    # train_generator puts a recipe's flags after the preset's: they win
    common = [*cfg.generator_flags, "--seed", "0", "--no-progress", "--resume"]
    preset = stages_from_args(parser().parse_args(["--store", "s", *common, *main.denoiser_flags]))
    stages = stages_from_args(parser().parse_args(["--store", "s", *common, *long.denoiser_flags]))
    assert (stages.diffusion.train.steps, stages.diffusion.minutes) == (6000, 180.0)
    assert stages.diffusion.train.steps > preset.diffusion.train.steps
    assert stages.diffusion.minutes > preset.diffusion.minutes
    # its side twin differs only in the validation loss that keeps the best weights: the mid band
    mid = cfg.recipe("vpred_long_mid")
    assert mid.generator not in (long.generator, main.generator) and mid.vae == main.vae
    twin = stages_from_args(parser().parse_args(["--store", "s", *common, *mid.denoiser_flags]))
    assert twin.diffusion.diffusion.val_selection == "mid"
    assert stages.diffusion.diffusion.val_selection == "all"
    assert replace(twin.diffusion, diffusion=stages.diffusion.diffusion) == stages.diffusion


def test_a_side_recipe_is_judged_by_the_levers_but_adds_no_grid_cell():
    from bench.evidence import PRESETS
    from generation_torch.cli_args import parser, stages_from_args

    cfg = PRESETS["matched"]
    f8, main = cfg.recipe("vpred_f8"), cfg.recipe("vpred")
    assert f8 in cfg.side_recipes and f8 not in cfg.recipes
    assert not any(c.recipe == "vpred_f8" for c in evidence.cells(cfg, {}))
    assert evidence.cells(cfg, {}) == evidence.cells(replace(cfg, side_recipes=()), {})
    # its own pool VAE (another folder) at d = 8 with 8 latent channels, its own denoiser
    assert (f8.vae, f8.generator) != (main.vae, main.generator)
    common = [*cfg.generator_flags, "--seed", "0", "--no-progress", "--resume"]
    stages = stages_from_args(parser().parse_args(["--store", "s", *common, *f8.vae_flags,
                                                   *f8.denoiser_flags]))
    assert (stages.vae.model.downsample, stages.vae.model.latent_channels) == (8, 8)
    assert stages.vae.model.channels == (48, 96, 128)
    assert (stages.diffusion.train.steps, stages.diffusion.minutes) == (6000, 50.0)
    # a name in both lists would resolve to the grid's recipe without a word: refused
    with pytest.raises(ValueError, match="repeated across recipes and side recipes: vpred$"):
        replace(cfg, side_recipes=(*cfg.side_recipes, replace(f8, name="vpred")))


def test_paired_recipes_follow_self_training_in_every_round_and_must_share_the_main_generator():
    """matched's starting-from-real-tiles recipe runs beside self-training, its control, in each paired
    round (seed by seed, before the next seed's real-only cell), once; a paired recipe that is not a
    grid recipe, or trains a generator of its own, is refused."""
    from bench.evidence import PRESETS, VPRED_F8

    cfg = PRESETS["matched"]
    order = evidence.cells(cfg, {})
    assert len(order) == len(set(order))
    for seed in cfg.seeds:
        i = order.index(Cell("256px", "self_training", 0.0, seed))
        sdedit = Cell("256px", "images_plentiful", cfg.lever_ratio, seed, "vpred_sdedit_pool_low")
        pasted = [Cell("256px", "images_plentiful", cfg.lever_ratio, seed, name)
                  for name in ("copy_paste", "copy_paste_labelled", "vpred_and_copy_paste_labelled",
                               "vpred_sdedit_over_copy_paste_labelled", "copy_paste_unlabelled")]
        # the generator's controls, round by round (far negatives retired: none measured here)
        assert order[i + 1:i + 7] == [sdedit, *pasted]
        far = Cell("256px", "images_plentiful", cfg.lever_ratio, seed, "copy_paste_far_negatives")
        assert far not in order
    assert order.index(Cell("256px", "images_plentiful", 0.3, 0, "vpred_sdedit_pool_low")) < order.index(
        Cell("256px", "real_only", 0.0, 1))
    with pytest.raises(ValueError, match="paired recipes must be grid recipes .*: vpred_f8"):
        replace(cfg, paired_recipes=("vpred_f8",))  # a side recipe
    with pytest.raises(ValueError, match="paired recipes must be grid recipes .*: vpred_f8"):
        replace(cfg, recipes=(*cfg.recipes, VPRED_F8), side_recipes=(), paired_recipes=("vpred_f8",))


def test_generator_levers_names_side_recipes_among_the_known_ones(capsys):
    from bench import generator_levers

    with pytest.raises(SystemExit) as exit_info:
        generator_levers.main(["--preset", "matched", "--k", "256px", "--recipes", "nope"])
    assert exit_info.value.code == 2
    known = ("today, vpred, vpred_pretrain, vpred_long, vpred_sdedit_pool_low, "
             "vpred_sdedit_over_copy_paste_labelled, vpred_pool_shapes, vpred_f8, vpred_midt, vpred_sdedit, "
             "vpred_sdedit_pool")
    assert f"unknown recipe(s) nope; choose from {known}" in capsys.readouterr().err


def test_the_copy_paste_control_pastes_onto_the_pseudo_labelled_pool_without_a_generator(tmp_path,
                                                                                         monkeypatch):
    """matched's copy-paste cell trains no generator: its pairs are pasted from the k labelled tiles
    onto the pool store with the judge's pseudo-labels (the main generator's own masks source), into
    its own folder; its cost is the pseudo-labels and the pasting, never a generator stage."""
    cfg = replace(evidence.PRESETS["matched"], ks=(1, 0), lever_ks=(1,))
    bench, calls = _faked_bench(tmp_path, monkeypatch, cfg)
    bench.judge(1).mkdir(parents=True)
    calibration = {"threshold": 0.99, "version": evidence.CALIBRATION_VERSION}
    (bench.judge(1) / "segmenter.json").write_text(json.dumps({"provenance": {"calibration": calibration}}))
    cell = Cell(1, "images_plentiful", 0.3, 2, "copy_paste")
    out = bench.generator(cell)
    assert [c[0] for c in calls] == ["segmentation_tf.predict", "generation_torch.copy_paste"]
    paste = calls[-1]
    assert Path(paste[paste.index("--labelled") + 1]) == bench.store(1)
    assert Path(paste[paste.index("--backgrounds") + 1]) == bench.pseudo_store(1, evidence.VPRED.pseudo_masks)
    assert out == bench.generator_dir(cell) / "pasted_composed_pool"
    assert paste[paste.index("--seed") + 1] == "0"
    assert not bench.weights(cell).exists()
    flags = segmenter_flags(cell, cfg, out)
    assert flags[flags.index("--synthetic-ratio") + 1] == "0.3"
    # its cost: the segmenter and the pasting (the pseudo-labels are here now), no generator stage
    monkeypatch.setattr(evidence, "machine", lambda: {"cpu": "EPYC", "isa": "avx512_bf16"})
    results = {Cell(1, "real_only", 0.0, 0).key: {**_cell(1, "real_only", 0.0, 0, 0.5), "minutes": 20.0,
                                                   "cpu": "EPYC", "isa": "avx512_bf16", "xla": False}}
    shutil.rmtree(out)
    cost = evidence.cell_cost(cell, bench, results)
    assert cost.minutes == pytest.approx(20 + evidence.PASTE_MINUTES)
    assert [name for name, _ in cost.first] == ["its tiles"]
    # onto the labelled tiles: the labelled store is both objects and backgrounds; no pseudo-labels needed
    onto_labelled = Cell(1, "images_plentiful", 0.3, 2, "copy_paste_labelled")
    out = bench.generator(onto_labelled)
    paste = calls[-1]
    flag = lambda name: Path(paste[paste.index(name) + 1])  # noqa: E731
    assert flag("--backgrounds") == bench.store(1) == flag("--labelled")
    assert out == bench.generator_dir(onto_labelled) / "pasted_composed"
    # the levers do not sweep it: it has no guidance
    with pytest.raises(SystemExit):
        from bench import generator_levers

        generator_levers.main(["--preset", "matched", "--k", "256px", "--recipes", "copy_paste"])


def test_the_main_arm_minus_each_control_by_hand_and_a_control_is_never_the_users_pick():
    """controls: vpred - self-training and vpred - copy_paste, paired by seed (by hand: +0.06 and +0.02
    on seeds 0 and 1); copy_paste, though best on validation, is not the chosen (generated) arm."""
    from bench.evidence import COPY_PASTE, VPRED, chosen_arm, control_rows

    cfg = EvidenceConfig(ks=(1, 0), seeds=(0, 1), ratios=(0.3,), lever_ks=(1,),
                         recipes=(evidence.TODAY, VPRED, COPY_PASTE), paired_recipes=("copy_paste",))
    results = {}
    for s in (0, 1):
        results[Cell(1, "real_only", 0.0, s).key] = _cell(1, "real_only", 0.0, s, 0.60)
        results[Cell(1, "self_training", 0.0, s).key] = _cell(1, "self_training", 0.0, s, 0.62 + 0.02 * s)
        arms = (("vpred", 0.70, 0.6), ("copy_paste", 0.66 + 0.02 * s, 0.9), ("today", 0.6, 0.5))
        for recipe, test, val in arms:
            c = Cell(1, "images_plentiful", 0.3, s, recipe)
            results[c.key] = {**_cell(1, "images_plentiful", 0.3, s, test), "val_iou": val, "recipe": recipe}
    rows = {r["minus"]: r for r in control_rows(results, cfg)}
    assert set(rows) == {"self_training", "copy_paste"}
    assert rows["self_training"]["mean"] == pytest.approx(0.07) and rows["self_training"]["n"] == 2
    assert rows["copy_paste"]["mean"] == pytest.approx(0.03) and rows["copy_paste"]["sd"] == pytest.approx(
        0.02 * math.sqrt(0.5), abs=1e-4)
    assert rows["copy_paste"]["ci_above_0"] is False  # t(0.975, 1) = 12.71: 0.03 +- 12.71 * 0.01
    assert chosen_arm(results, 1, cfg) == (0.3, "vpred")
    # a pasted recipe may be paired (no generator to train); another generator may not
    with pytest.raises(ValueError, match="paired recipes must be grid recipes .*: levers"):
        replace(cfg, recipes=(*cfg.recipes, evidence.LEVERS), paired_recipes=("copy_paste", "levers"))


def test_the_ratio_probe_runs_at_the_first_lever_k_and_pairs_each_ratio_by_hand():
    """probe: vpred and copy_paste at 0.6 on every seed at the first lever k only; rows by hand: vpred
    0.6 - 0.3 = +0.04 and +0.02 (mean +0.03), copy_paste 0.6 - 0.3 = -0.01 on both, vpred - copy_paste at
    0.6 = +0.05 and +0.01 (mean +0.03); the probed vpred is a generated arm the validation block may
    choose. Bad probes are refused."""
    from bench.evidence import COPY_PASTE, VPRED, chosen_arm, control_rows

    cfg = EvidenceConfig(ks=(1, 2, 0), seeds=(0, 1), ratios=(0.3,), lever_ks=(1, 2),
                         recipes=(evidence.TODAY, VPRED, COPY_PASTE), paired_recipes=("copy_paste",),
                         probe_recipes=("vpred", "copy_paste"), probe_ratios=(0.6,))
    keys = [c.key for c in cells(cfg, {})]
    probed = [key for key in keys if "r=0.6" in key]
    assert probed == [f"k=1|images_plentiful|r=0.6|seed={s}|{n}" for s in (0, 1)
                      for n in ("vpred", "copy_paste")]
    results = {}
    arms = {("vpred", 0.3): (0.60, 0.61), ("vpred", 0.6): (0.64, 0.63), ("copy_paste", 0.3): (0.60, 0.63),
            ("copy_paste", 0.6): (0.59, 0.62)}
    for (recipe, ratio), tests in arms.items():
        for s, test in enumerate(tests):
            c = Cell(1, "images_plentiful", ratio, s, recipe)
            results[c.key] = {**_cell(1, "images_plentiful", ratio, s, test), "recipe": recipe,
                              "val_iou": 0.7 if ratio == 0.6 and recipe == "vpred" else 0.6}
    rows = {(r["arm"], r["minus"]): r for r in control_rows(results, cfg)}
    assert rows[("vpred (ratio 0.6)", "vpred (ratio 0.3)")]["mean"] == pytest.approx(0.03)
    assert rows[("copy_paste (ratio 0.6)", "copy_paste (ratio 0.3)")]["mean"] == pytest.approx(-0.01)
    assert rows[("copy_paste (ratio 0.6)", "copy_paste (ratio 0.3)")]["sd"] == pytest.approx(0.0, abs=1e-9)
    versus = rows[("vpred (ratio 0.6)", "copy_paste (ratio 0.6)")]
    assert versus["mean"] == pytest.approx(0.03) and versus["n"] == 2
    assert versus["sd"] == pytest.approx(0.04 * math.sqrt(0.5), abs=1e-4)
    assert ("copy_paste (ratio 0.6)", "vpred (ratio 0.6)") not in rows  # the main recipe is the arm
    assert chosen_arm(results, 1, cfg) == (0.6, "vpred")
    for bad in ({"probe_ratios": (0.3,)}, {"probe_ratios": (1.0,)}, {"probe_recipes": ("vpred_f8",)},
                {"probe_recipes": ()}):
        with pytest.raises(ValueError, match="the ratio probe needs"):
            replace(cfg, **bad)


def test_a_retired_recipe_keeps_its_measured_cells_and_plans_no_others():
    """copy_paste retired after seed 1 at k = 1: its k = 1 seed 1 cell stays in the grid (a record), its
    seed 0 and k = 2 cells leave; without results none of its cells is planned. The main recipe, the
    baseline and names outside the grid cannot be retired."""
    from bench.evidence import COPY_PASTE, VPRED

    cfg = EvidenceConfig(ks=(1, 2, 0), seeds=(0, 1), ratios=(0.3,), lever_ks=(1, 2),
                         recipes=(evidence.TODAY, VPRED, COPY_PASTE), paired_recipes=("copy_paste",))
    pasted = [c.key for c in cells(cfg, {}) if c.recipe == "copy_paste"]
    assert len(pasted) == 4
    retired = replace(cfg, retired_recipes=("copy_paste",))
    assert [c for c in cells(retired, {}) if c.recipe == "copy_paste"] == []
    measured = {"k=1|images_plentiful|r=0.3|seed=1|copy_paste": {"test_iou": 0.5}}
    assert [c.key for c in cells(retired, measured) if c.recipe == "copy_paste"] == list(measured)
    assert len(cells(retired, {})) == len(cells(cfg, {})) - 4
    for bad in ("vpred", "today", "copy_paste_far_negatives"):
        with pytest.raises(ValueError, match="retired recipes must be grid recipes"):
            replace(cfg, retired_recipes=(bad,))


def _judged_with_main_weights(tmp_path, monkeypatch, recipe: str):
    """A faked matched bench at k = 1 (6 synthetic tiles) whose judge has a threshold and whose main
    generator's weights exist, and the cell of `recipe` (seed 2, ratio 0.3)."""
    cfg = replace(evidence.PRESETS["matched"], ks=(1, 0), lever_ks=(1,), n_synthetic=6)
    bench, calls = _faked_bench(tmp_path, monkeypatch, cfg)
    bench.judge(1).mkdir(parents=True)
    calibration = {"threshold": 0.99, "version": evidence.CALIBRATION_VERSION}
    (bench.judge(1) / "segmenter.json").write_text(json.dumps({"provenance": {"calibration": calibration}}))
    cell = Cell(1, "images_plentiful", 0.3, 2, recipe)
    bench.weights(cell).parent.mkdir(parents=True)
    bench.weights(cell).write_text("{}")
    return bench, calls, cell


def _pairs_store(path: Path, n: int, value: int) -> Path:
    """A synthetic store of n 256 px tiles: tile i is filled with value + i, its mask is 1 from row i."""
    store = TileStore.create(path, 256, kind="synthetic")
    images = (value + np.arange(n, dtype=np.uint8))[:, None, None] * np.ones((1, 256, 256), np.uint8)
    masks = (np.arange(256)[None, :, None] >= np.arange(n)[:, None, None]).astype(np.uint8) * np.ones(
        (1, 1, 256), np.uint8)
    store.append(images, masks, [{"source": path.name, "layout_index": i} for i in range(n)])
    return path


def test_a_recipe_of_shares_takes_each_parts_own_share_of_tile_indices(tmp_path, monkeypatch):
    """vpred_and_copy_paste_labelled: tiles 0-2 of vpred's drawn store and tiles 3-5 of the pasted one
    (n = 6), so the two parts' layouts (both drawn at layout seed 0) never repeat; each record names its
    part; it trains nothing, costs only its segmenter once its parts exist, and lives beside vpred's
    generator. A part with too few tiles is refused by name; a recipe of shares of a non-grid recipe too."""
    from bench.evidence import VPRED_AND_PASTE

    cfg = replace(evidence.PRESETS["matched"], ks=(1, 0), lever_ks=(1,), n_synthetic=6)
    bench, calls = _faked_bench(tmp_path, monkeypatch, cfg)
    cell = Cell(1, "images_plentiful", 0.3, 2, VPRED_AND_PASTE.name)
    drawn, pasted = (bench.synthetic_dir(replace(cell, recipe=name)) for name in VPRED_AND_PASTE.halves)
    for folder, value in ((drawn, 10), (pasted, 100)):
        folder.parent.mkdir(parents=True)
        _pairs_store(folder, 6, value)
    bench.weights(cell).write_text("{}")  # vpred's generator: the shares store lives beside it
    monkeypatch.setattr(evidence, "machine", lambda: {"cpu": "EPYC", "isa": "avx512_bf16"})
    results = {Cell(1, "real_only", 0.0, 0).key: {**_cell(1, "real_only", 0.0, 0, 0.5), "minutes": 20.0,
                                                   "cpu": "EPYC", "isa": "avx512_bf16", "xla": False}}
    cost = evidence.cell_cost(cell, bench, results)
    assert cost.minutes == pytest.approx(20.0) and cost.first == ()
    out = bench.generator(cell)
    assert calls == [] and out == bench.synthetic_dir(cell) and out.parent == drawn.parent
    store = TileStore(out)
    assert store.raw_images(store.indices())[:, 0, 0].tolist() == [10, 11, 12, 103, 104, 105]
    assert [int(m[:, 0].sum()) for m in store.masks(store.indices())] == [256 - i for i in range(6)]
    assert [(r["part"], r["part_index"], r["layout_index"]) for r in store.records] == [
        (drawn.name, 0, 0), (drawn.name, 1, 1), (drawn.name, 2, 2),
        (pasted.name, 3, 3), (pasted.name, 4, 4), (pasted.name, 5, 5)]
    assert out.with_name(f"{out.name}.png").exists() and not out.with_name(f"{out.name}.partial").exists()
    assert segmenter_flags(cell, cfg, out)[-2:] == ["--synthetic-ratio", "0.3"]
    # a part too small for its share: refused by name, nothing left behind
    shutil.rmtree(out)
    shutil.rmtree(pasted)
    _pairs_store(pasted, 5, 100)
    too_few = re.escape(f"{pasted}: 5 tiles, a share of tiles 3-5 wanted")
    with pytest.raises(evidence.UserError, match=too_few):
        bench.generator(cell)
    assert not out.exists()
    # the pasted part absent: it costs the pasting (no generator stage, vpred's store is there)
    shutil.rmtree(pasted)
    cost = evidence.cell_cost(cell, bench, results)
    assert cost.minutes == pytest.approx(20.0 + evidence.PASTE_MINUTES)
    assert cost.first == (("its tiles", pasted / "manifest.json"),)
    with pytest.raises(ValueError, match="recipes made of shares must name grid recipes .*: mixed"):
        replace(cfg, recipes=(*cfg.recipes, replace(VPRED_AND_PASTE, name="mixed", halves=("vpred", "nope"))))


def test_a_recipe_drawn_over_pasted_pairs_starts_from_them_under_their_own_masks(tmp_path, monkeypatch):
    """vpred_sdedit_over_copy_paste_labelled: the main generator samples from each pasted pair (noised
    to strength 0.4) under its mask, into a store of its own beside vpred's; it needs the pasted pairs
    first (their pasting is in its cost, never a generator of its own); only a pasted grid recipe, drawn
    from at strength < 1 with labelled masks, can be drawn over."""
    from bench.evidence import COPY_PASTE_LABELLED, VPRED_OVER_PASTE

    bench, calls, cell = _judged_with_main_weights(tmp_path, monkeypatch, VPRED_OVER_PASTE.name)
    cfg = bench.cfg
    pasted = bench.synthetic_dir(replace(cell, recipe=COPY_PASTE_LABELLED.name))
    monkeypatch.setattr(evidence, "machine", lambda: {"cpu": "EPYC", "isa": "avx512_bf16"})
    results = {Cell(1, "real_only", 0.0, 0).key: {**_cell(1, "real_only", 0.0, 0, 0.5), "minutes": 20.0,
                                                   "cpu": "EPYC", "isa": "avx512_bf16", "xla": False}}
    cost = evidence.cell_cost(cell, bench, results)
    assert [what for what, _ in cost.first] == ["its tiles", "its tiles"]  # the pasted pairs, then its own
    assert cost.minutes == pytest.approx(20.0 + evidence.PASTE_MINUTES + evidence.DRAW_MINUTES)
    out = bench.generator(cell)
    assert [c[0] for c in calls if c[0] != "segmentation_tf.predict"] == [
        "generation_torch.copy_paste", "generation_torch.sample"]
    sample = calls[-1]
    flag = lambda name: sample[sample.index(name) + 1]  # noqa: E731
    assert Path(flag("--masks-from")) == pasted and flag("--mask-source") == "labelled"
    assert flag("--strength") == "0.4" and flag("--guidance") == "1.5"
    assert out.parent == bench.generator_dir(cell)
    assert out.name == "synthetic_labelled_over_copy_paste_labelled_dpmpp2m20_g1.5_t1_s0.4"
    assert bench.weights(cell) == bench.weights(replace(cell, recipe="vpred"))  # the main generator
    with pytest.raises(ValueError, match="drawn over pairs must name a pasted grid recipe .*: over_vpred"):
        replace(cfg, recipes=(*cfg.recipes, replace(VPRED_OVER_PASTE, name="over_vpred", over="vpred")))
    with pytest.raises(ValueError, match="drawn over pairs .*: from_noise"):
        replace(cfg, recipes=(*cfg.recipes, replace(VPRED_OVER_PASTE, name="from_noise", sampling=replace(
            VPRED_OVER_PASTE.sampling, strength=1.0))))


def test_the_pool_shapes_recipe_composes_from_the_pseudo_labels_above_the_smallest_labelled_object(
        tmp_path, monkeypatch):
    """vpred_pool_shapes: the main generator draws composed layouts of the pseudo-labelled pool's
    objects, only those at least as large as the smallest labelled object (by hand: the smallest
    8-connected component of 30 px or more in the k labelled tiles); its own store, the main weights.
    A size floor on a pasted or labelled-mask recipe is refused."""
    from scipy import ndimage

    from bench.evidence import VPRED_POOL_SHAPES

    bench, calls, cell = _judged_with_main_weights(tmp_path, monkeypatch, VPRED_POOL_SHAPES.name)
    cfg = bench.cfg
    out = bench.generator(cell)
    sample = calls[-1]
    flag = lambda name: sample[sample.index(name) + 1]  # noqa: E731
    labelled = TileStore(bench.labelled_only_store(1))
    areas = [int(a) for m in labelled.masks(labelled.indices())
             for a in np.bincount(ndimage.label(m > 0, structure=np.ones((3, 3)))[0].ravel())[1:] if a >= 30]
    assert sample[0] == "generation_torch.sample" and flag("--min-object-area") == str(min(areas))
    assert Path(flag("--masks-from")) == bench.pseudo_store(1, VPRED_POOL_SHAPES.pseudo_masks)
    assert flag("--mask-source") == "composed" and flag("--guidance") == "1.5"
    assert out == bench.generator_dir(cell) / "synthetic_composed_pool_floor_dpmpp2m20_g1.5_t1"
    assert bench.weights(cell) == bench.weights(replace(cell, recipe="vpred"))
    for bad in (replace(evidence.COPY_PASTE, name="pasted_floor", labelled_size_floor=True),
                replace(VPRED_POOL_SHAPES, name="labelled_floor", mask_source="labelled")):
        with pytest.raises(ValueError, match=f"a size floor picks .*: {bad.name}"):
            replace(cfg, recipes=(*cfg.recipes, bad))


def test_a_recipe_of_shares_is_compared_with_each_part_and_is_never_the_users_pick():
    """controls: vpred_and_copy_paste_labelled minus vpred and minus copy_paste_labelled, paired by seed
    (by hand: +0.02 and +0.04 on seeds 0, 1 against vpred; +0.01 against the pasted part), beside vpred
    minus each control; best on validation, it is still not the chosen (generated) arm."""
    from bench.evidence import (
        COPY_PASTE_LABELLED,
        VPRED,
        VPRED_AND_PASTE,
        VPRED_OVER_PASTE,
        chosen_arm,
        control_rows,
    )

    paired = (COPY_PASTE_LABELLED, VPRED_AND_PASTE, VPRED_OVER_PASTE)
    cfg = EvidenceConfig(ks=(1, 0), seeds=(0, 1), ratios=(0.3,), lever_ks=(1,),
                         recipes=(evidence.TODAY, VPRED, *paired),
                         paired_recipes=tuple(r.name for r in paired))
    results = {}
    for s in (0, 1):
        results[Cell(1, "real_only", 0.0, s).key] = _cell(1, "real_only", 0.0, s, 0.60)
        arms = (("vpred", 0.70 - 0.02 * s, 0.6), ("copy_paste_labelled", 0.71, 0.7),
                (VPRED_AND_PASTE.name, 0.72, 0.9), ("today", 0.6, 0.5), (VPRED_OVER_PASTE.name, 0.66, 0.4))
        for recipe, test, val in arms:
            c = Cell(1, "images_plentiful", 0.3, s, recipe)
            results[c.key] = {**_cell(1, "images_plentiful", 0.3, s, test), "val_iou": val, "recipe": recipe}
    rows = {(r["arm"], r["minus"]): r for r in control_rows(results, cfg)}
    assert set(rows) == {("vpred", "copy_paste_labelled"), (VPRED_AND_PASTE.name, "vpred"),
                         (VPRED_AND_PASTE.name, "copy_paste_labelled"),
                         (VPRED_OVER_PASTE.name, "copy_paste_labelled")}
    assert rows[(VPRED_OVER_PASTE.name, "copy_paste_labelled")]["mean"] == pytest.approx(-0.05)
    assert rows[(VPRED_AND_PASTE.name, "vpred")]["mean"] == pytest.approx(0.03)
    assert rows[(VPRED_AND_PASTE.name, "copy_paste_labelled")]["mean"] == pytest.approx(0.01)
    assert rows[("vpred", "copy_paste_labelled")]["mean"] == pytest.approx(-0.02)
    assert chosen_arm(results, 1, cfg) == (0.3, "vpred")


def test_copy_paste_onto_unlabelled_pool_tiles_knows_only_what_it_pasted(tmp_path, monkeypatch):
    """copy_paste_unlabelled: its backgrounds are the pool's training tiles with no pixel annotated
    (a store built once), so no judge, no pseudo-labels: its cost is the pasting; only pasted recipes
    may draw onto such tiles."""
    from bench.evidence import COPY_PASTE_UNLABELLED

    cfg = replace(evidence.PRESETS["matched"], ks=(1, 0), lever_ks=(1,))
    bench, calls = _faked_bench(tmp_path, monkeypatch, cfg)
    cell = Cell(1, "images_plentiful", 0.3, 2, COPY_PASTE_UNLABELLED.name)
    monkeypatch.setattr(evidence, "machine", lambda: {"cpu": "EPYC", "isa": "avx512_bf16"})
    results = {Cell(1, "real_only", 0.0, 0).key: {**_cell(1, "real_only", 0.0, 0, 0.5), "minutes": 20.0,
                                                   "cpu": "EPYC", "isa": "avx512_bf16", "xla": False}}
    cost = evidence.cell_cost(cell, bench, results)
    assert cost.minutes == pytest.approx(20.0 + evidence.PASTE_MINUTES)
    assert [what for what, _ in cost.first] == ["its tiles"]
    out = bench.generator(cell)
    assert [c[0] for c in calls] == ["generation_torch.copy_paste"]
    assert out.name == "pasted_composed_unlabelled_pool"
    paste = calls[-1]
    backgrounds = TileStore(paste[paste.index("--backgrounds") + 1])
    pool = TileStore(bench.store(0))
    idx = backgrounds.indices()
    assert len(backgrounds) == len(pool.indices("train")) and backgrounds.partially_annotated
    assert not backgrounds.annotated(idx).any() and not backgrounds.masks(idx).any()
    np.testing.assert_array_equal(backgrounds.raw_images(idx), pool.raw_images(pool.indices("train")))
    assert Path(paste[paste.index("--labelled") + 1]) == bench.store(1)
    with pytest.raises(ValueError, match="only pasted recipes draw onto unlabelled pool tiles: drawn"):
        replace(cfg, recipes=(*cfg.recipes, replace(evidence.VPRED, name="drawn", masks_from="unlabelled")))


def test_far_negatives_by_hand():
    """A one-row page with its only object at x = 0: pixels x > 16 are known background (23 of 40); a
    page without objects is known throughout."""
    from bench.evidence import far_negatives

    masks = np.zeros((2, 1, 40), np.uint8)
    masks[0, 0, 0] = 1
    far = far_negatives(masks, 16)
    np.testing.assert_array_equal(far[0, 0], (np.arange(40) > 16).astype(np.uint8))
    assert far[1].all()


def test_copy_paste_onto_far_negatives_knows_the_pool_only_far_from_its_pseudo_objects(tmp_path, monkeypatch):
    """copy_paste_far_negatives: its backgrounds are the pool's training pages with masks all 0 and
    annotated only farther than FAR_MARGIN px from the judge's pseudo-labelled objects (measured on the
    page); its cost is the pseudo-labels (when absent) and the pasting; no generator; only pasted
    recipes with pseudo-labels may draw onto it."""
    from bench.evidence import COPY_PASTE_FAR, FAR_MARGIN
    from shared.tiff_io import write_stack

    cfg = replace(evidence.PRESETS["matched"], ks=(1, 0), lever_ks=(1,))
    bench, calls = _faked_bench(tmp_path, monkeypatch, cfg)
    bench.judge(1).mkdir(parents=True)
    calibration = {"threshold": 0.99, "version": evidence.CALIBRATION_VERSION}
    (bench.judge(1) / "segmenter.json").write_text(json.dumps({"provenance": {"calibration": calibration}}))
    cell = Cell(1, "images_plentiful", 0.3, 2, COPY_PASTE_FAR.name)
    monkeypatch.setattr(evidence, "machine", lambda: {"cpu": "EPYC", "isa": "avx512_bf16"})
    results = {Cell(1, "real_only", 0.0, 0).key: {**_cell(1, "real_only", 0.0, 0, 0.5), "minutes": 20.0,
                                                   "cpu": "EPYC", "isa": "avx512_bf16", "xla": False}}
    cost = evidence.cell_cost(cell, bench, results)
    assert [what for what, _ in cost.first] == ["pseudo-labels", "its tiles"]
    version = COPY_PASTE_FAR.pseudo_masks
    bench.pseudo_store(1, version)
    # the judge's objects: one pixel at (0, 0) of every page it labels
    predicted = np.zeros((len(bench.predicted_pages(1)), *bench.masks.shape[1:]), np.uint8)
    predicted[:, 0, 0] = 1
    write_stack(evidence.pseudo_folder(bench.work, 1, version) / "predicted" / "mask.tif", predicted)
    out = bench.generator(cell)
    assert out.name == "pasted_composed_far_negative_pool"
    paste = calls[-1]
    assert paste[0] == "generation_torch.copy_paste"
    backgrounds = TileStore(paste[paste.index("--backgrounds") + 1])
    pool = TileStore(bench.store(0))
    idx = backgrounds.indices()
    np.testing.assert_array_equal(backgrounds.raw_images(idx), pool.raw_images(pool.indices("train")))
    assert backgrounds.partially_annotated and not backgrounds.masks(idx).any()
    yy, xx = np.mgrid[:256, :256]
    by_hand = (yy ** 2 + xx ** 2 > FAR_MARGIN ** 2).astype(np.uint8)
    pages = [backgrounds.records[int(i)]["slice"] for i in idx]
    labelled = bench.layout.labelled(1, cfg)
    for i, page in zip(idx, pages, strict=True):
        area = backgrounds.annotated(np.array([i]))[0]
        if page in labelled:  # its real objects, known only far from them
            assert not area[bench.masks[page] > 0].any()
        else:
            np.testing.assert_array_equal(area, by_hand)
    figures = evidence.far_negative_figures(bench, 1, version)
    assert figures["far_margin"] == FAR_MARGIN and 0.5 < figures["far_known"] < 1.0
    with pytest.raises(ValueError, match="only pasted recipes draw onto unlabelled pool tiles: drawn"):
        replace(cfg, recipes=(*cfg.recipes, replace(evidence.VPRED, name="drawn", masks_from="far")))
    with pytest.raises(ValueError, match="without pseudo_masks: blind"):
        replace(cfg, recipes=(*cfg.recipes, replace(COPY_PASTE_FAR, name="blind", pseudo_masks=0)))
