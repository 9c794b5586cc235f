"""bench.far_negatives: how honest background known far from a judge's objects is, by hand."""

import numpy as np
import pytest

from bench.far_negatives import chosen_margin, negatives_row

from .conftest import assert_one_line_error, run_module


def _one_row():
    """A 1 x 40 page: the judge found the object at x = 0; real objects at x = 0, 20 and 35."""
    predicted = np.zeros((1, 1, 40), bool)
    predicted[0, 0, 0] = True
    real = np.zeros_like(predicted)
    real[0, 0, [0, 20, 35]] = True
    return predicted, real


def test_negatives_by_hand():
    predicted, real = _one_row()
    row = negatives_row(predicted, real, 16)  # known: x = 17..39 (23 pixels), two real objects among them
    assert row == {"margin_px": 16, "known": pytest.approx(23 / 40, abs=1e-4),
                   "known_foreground": pytest.approx(2 / 23, abs=1e-4),
                   "foreground_taught_background": pytest.approx(2 / 3, abs=1e-4)}
    every = negatives_row(predicted, real, 0)  # all the judge calls background: x = 1..39
    assert every["known"] == pytest.approx(39 / 40, abs=1e-4)
    assert every["known_foreground"] == pytest.approx(2 / 39, abs=1e-4)
    far = negatives_row(predicted, real, 24)  # x = 25..39: only the object at 35
    assert far["known_foreground"] == pytest.approx(1 / 15, abs=1e-4)
    assert far["foreground_taught_background"] == pytest.approx(1 / 3, abs=1e-4)


def test_the_margin_is_the_smallest_under_the_share():
    """The judge found x = 0 and missed x = 5 nearby: at 0 px the miss is known background (1 of 39),
    beyond 5 px nothing real is (x = 9..39 at 8 px)."""
    predicted = np.zeros((1, 1, 40), bool)
    predicted[0, 0, 0] = True
    real = predicted.copy()
    real[0, 0, 5] = True
    rows = [negatives_row(predicted, real, m) for m in (0, 8, 16)]
    assert [r["known_foreground"] for r in rows] == [pytest.approx(1 / 39, abs=1e-4), 0.0, 0.0]
    assert chosen_margin(rows, 0.01) == 8
    assert chosen_margin(rows, 0.03) == 0
    assert chosen_margin(rows[:1], 0.01) is None


def test_without_the_grids_judge_it_stops_in_one_line(tmp_path, epfl_dir):
    proc = run_module("bench.far_negatives", "--work", tmp_path, "--json", tmp_path / "out.json", timeout=300)
    assert_one_line_error(proc, "no judge here; run the grid's cell 'k=256px|real_only|r=0|seed=0' first")
    assert not (tmp_path / "out.json").exists()
