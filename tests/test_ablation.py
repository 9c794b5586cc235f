"""The synthetic-data ablation's bookkeeping: cell order, paired gains, the goal verdict, the labelled
slices (the trainings themselves run in `python -m bench.synthetic_ablation`, not here)."""

import json

import pytest

from bench import report
from bench.synthetic_ablation import (
    PRESETS,
    AblationConfig,
    Cell,
    cells,
    goal_verdict,
    labelled_slices,
    paired_gains,
    summarize,
    write_results,
)


def test_cells_run_low_k_first_and_share_the_whole_pool_regimes():
    cfg = AblationConfig(ks=(2, 0, 8), sweep_k=2, sweep_ratios=(0.1,), seeds=(0, 1))
    order = cells(cfg)
    assert order[:2] == [Cell(2, "real_only", 0.0, 0), Cell(2, "real_only", 0.0, 1)]
    assert order[2:6] == [Cell(2, "strict", 0.3, 0), Cell(2, "strict", 0.3, 1),
                          Cell(2, "images_plentiful", 0.3, 0), Cell(2, "images_plentiful", 0.3, 1)]
    # k = 0: every image is labelled, so images_plentiful is strict and does not run twice
    assert not [c for c in order if c.k == 0 and c.regime == "images_plentiful"]
    # the sweep follows the whole-pool cells, before k = 8
    sweep = order.index(Cell(2, "strict", 0.1, 0))
    assert order.index(Cell(0, "strict", 0.3, 1)) < sweep < order.index(Cell(8, "real_only", 0.0, 0))
    assert len(order) == len(set(order)) == 6 + 4 + 2 + 6  # k=2, k=0, sweep, k=8


def test_the_standard_grid_has_three_seeds_two_regimes_and_a_sweep():
    order = cells(PRESETS["standard"])
    assert {c.seed for c in order} == {0, 1, 2}
    assert {c.regime for c in order} == {"real_only", "strict", "images_plentiful"}
    assert {c.ratio for c in order if c.k == PRESETS["standard"].sweep_k} == {0.0, 0.1, 0.3, 0.5}


def test_labelled_slices_are_contiguous_seeded_and_inside_the_pool():
    pool = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 16, 17, 18, 19, 25, 26]
    a = labelled_slices(pool, 4, seed=1)
    assert a == labelled_slices(pool, 4, seed=1) and len(a) == 4 and set(a) <= set(pool)
    start = pool.index(a[0])
    assert a == pool[start:start + 4]
    assert labelled_slices(pool, 0, seed=0) == pool


def _cell(k, regime, ratio, seed, iou):
    return {"k": k, "regime": regime, "ratio": ratio, "seed": seed, "test_iou": iou}


RESULTS = {str(i): c for i, c in enumerate([
    _cell(2, "real_only", 0.0, 0, 0.40), _cell(2, "real_only", 0.0, 1, 0.50),
    _cell(2, "strict", 0.3, 0, 0.46), _cell(2, "strict", 0.3, 1, 0.52),
    _cell(0, "real_only", 0.0, 0, 0.80), _cell(0, "strict", 0.3, 0, 0.79),
])}


def test_gains_are_paired_by_seed():
    gains = {(g["k"], g["regime"]): g for g in paired_gains(RESULTS)}
    assert gains[(2, "strict")]["gain_mean"] == pytest.approx((0.06 + 0.02) / 2)
    assert gains[(2, "strict")]["gain_std"] == pytest.approx(0.02)
    assert gains[("all", "strict")]["gain_mean"] == pytest.approx(-0.01)
    rows = {(r["k"], r["regime"]): r for r in summarize(RESULTS)}
    assert rows[(2, "real_only")]["iou_mean"] == pytest.approx(0.45)
    assert rows[(2, "real_only")]["iou_std"] == pytest.approx(0.05)


def test_goal_verdict_names_each_cell_met_or_not():
    verdict = goal_verdict(paired_gains(RESULTS))
    assert "k=2 strict: +0.0400 +- 0.0200 (met)" in verdict
    assert "whole pool: -0.0100 +- 0.0000 (NOT met)" in verdict
    assert "incomplete" in goal_verdict(paired_gains({k: v for k, v in RESULTS.items() if v["k"] == 2}))


def test_results_json_and_report_section(tmp_path, monkeypatch):
    path = tmp_path / "synthetic_ablation.json"
    fidelity = [{"generator": "gen_k2/strict", "guidance": 12.0, "iou_generated": 0.5},
                {"generator": "guidance_sweep/g2", "guidance": 2.0, "iou_generated": 0.0}]  # not in the goal
    write_results(path, RESULTS, fidelity, "standard", PRESETS["standard"], "test", {"test": [20]})
    data = json.loads(path.read_text())
    assert data["goal_met"].endswith("mask fidelity 0.500 (NOT met)")
    assert path.with_suffix(".png").stat().st_size > 1000
    monkeypatch.setattr(report, "DOCS", tmp_path)
    monkeypatch.setattr(report, "SECTIONS", [(path.name, "Ablation")])
    page = report.build()
    assert "| k | regime | ratio | seeds | gain_mean | gain_std |" in page
    assert "iou_generated" in page and "![synthetic_ablation.png](synthetic_ablation.png)" in page


def test_one_generator_per_k_and_regime_unless_slices_vary_per_seed(tmp_path):
    from bench.synthetic_ablation import generator_dir

    shared = generator_dir(tmp_path, Cell(4, "strict", 0.3, 2), PRESETS["standard"])
    assert shared == (tmp_path / "gen_k4" / "strict", 0)
    per_seed = generator_dir(tmp_path, Cell(4, "strict", 0.3, 2), PRESETS["full"])
    assert per_seed == (tmp_path / "k4_s2" / "strict", 2)


def test_the_fidelity_judge_is_chosen_on_validation_not_test(tmp_path):
    from bench.synthetic_ablation import best_judge

    assert best_judge(tmp_path) is None
    for seed, (val, test) in enumerate([(0.6, 0.9), (0.8, 0.7)]):
        run = tmp_path / f"k0_s{seed}" / "real_only"
        run.mkdir(parents=True)
        (run / "segmenter.json").write_text(json.dumps({"provenance": {"calibration": {"iou": val}}}))
        (run / "test_scores.json").write_text(json.dumps({"iou": test}))
    assert best_judge(tmp_path) == tmp_path / "k0_s1" / "real_only"


def test_variant_rows_and_verdict_name_the_best_gain():
    from bench.synthetic_variants import variant_rows, verdict

    results = {"real_only": {"test_iou": [0.7, 0.8], "iou_mean": 0.75, "iou_std": 0.05},
               "g12": {"iou_mean": 0.74, "iou_std": 0.01, "gain_mean": -0.01, "gain_std": 0.04,
                       "fidelity_iou": 0.81234, "hist_w1": 0.1},
               "g12_filtered": {"iou_mean": 0.79, "iou_std": 0.01, "gain_mean": 0.04, "gain_std": 0.02}}
    rows = variant_rows(results)
    assert [r["variant"] for r in rows] == ["real_only", "g12", "g12_filtered"]
    assert rows[1]["fidelity_iou"] == 0.8123 and "test_iou" not in rows[0]
    text = verdict(results)
    assert text.startswith("best variant g12_filtered: +0.0400 +- 0.0200") and "(goal +0.03: met)" in text
    assert "2 of 4 variants" in text
    assert verdict({"real_only": results["real_only"]}) == "no variant finished yet"
    results["g12_filtered"]["gain_mean"] = 0.02
    assert "NOT met" in verdict(results)
