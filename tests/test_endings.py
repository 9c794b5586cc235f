"""bench.endings' pure parts: which epoch each ending picks, how noisy a figure is from epoch to
epoch, the diagnostics over the second half of training, a folder trained without --keep-epochs."""

import math

import pytest

from bench.endings import diagnostic_rows, diagnostics, kept_epochs, picked_epochs, swing
from shared.errors import UserError


def test_picks_take_the_first_of_ties_and_the_last_epoch():
    rows = {e: {"val_precise": v} for e, v in ((1, 0.5), (2, 0.7), (3, 0.7), (4, 0.6))}
    logged = [0.2, 0.4, 0.9, 0.9]
    assert picked_epochs(rows, logged) == {"best_moving": 3, "best_precise": 2, "last": 4}
    del rows[4]  # best_precise waits for every epoch's figures
    assert picked_epochs(rows, logged) == {"best_moving": 3, "last": 4}


def test_swing_is_the_sd_of_epoch_to_epoch_changes():
    # changes +0.2, -0.2, +0.2: mean 0.0667, deviations 0.1333, -0.2667, 0.1333 -> var 0.1067 / 2
    assert swing([0.5, 0.7, 0.5, 0.7]) == pytest.approx(math.sqrt((2 * 0.1333**2 + 0.2667**2) / 2), abs=2e-4)
    assert swing([0.1, 0.2, 0.3, 0.4]) == pytest.approx(0.0, abs=1e-12)  # steady climb: no swing
    assert swing([0.1, 0.2]) is None


def test_diagnostics_use_the_second_half_and_compare_the_logged_figure():
    rows = {e: {"val_moving": v, "test_moving": t, "val_precise": 0.8 + e / 100,
                "test_precise": 0.9 - e / 100}
            for e, v, t in ((1, 0.1, 0.1), (2, 0.2, 0.2), (3, 0.6, 0.7), (4, 0.8, 0.9), (5, 0.6, 0.7),
                            (6, 0.8, 0.9))}
    logged = [0.1, 0.2, 0.6, 0.8, 0.6, 0.8005]
    d = diagnostics(rows, logged)
    assert d["epochs"] == [4, 6]
    assert d["moving"]["val_mean"] == pytest.approx(0.7333, abs=1e-4)  # epochs 4-6: 0.8, 0.6, 0.8
    assert d["moving"]["val_test_correlation"] == pytest.approx(1.0)  # test = val + 0.1
    assert d["precise"]["val_swing"] == pytest.approx(0.0, abs=1e-4)  # +0.01 every epoch
    assert d["precise"]["val_test_correlation"] == pytest.approx(-1.0)
    assert d["logged_minus_measured_val"] == pytest.approx(0.0005)
    table = diagnostic_rows({"0": {"diagnostics": d}, "1": {}})  # seed 1 not analysed yet
    assert [(r["seed"], r["epochs"], r["statistics"]) for r in table] == [("0", "4-6", "moving"),
                                                                         ("0", "4-6", "precise")]


def test_a_run_without_kept_epochs_is_named(tmp_path):
    (tmp_path / "log.csv").write_text("epoch,val_iou\n0,0.5\n1,0.6\n")
    with pytest.raises(UserError, match=r"epochs: no weights kept for epoch\(s\) \[1, 2\].*--keep-epochs"):
        kept_epochs(tmp_path)
