"""Segmenter loss, weight map, metrics and threshold calibration against hand-computed values."""

import math

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from segmentation_tf.calibration import calibrate_threshold, iou_curve  # noqa: E402
from segmentation_tf.losses import BceJaccardLoss  # noqa: E402
from segmentation_tf.metrics import ForegroundDice, ForegroundIoU  # noqa: E402
from segmentation_tf.scores import dice, iou  # noqa: E402
from segmentation_tf.weights import border_weight_map  # noqa: E402

MASK = np.array([[1, 0], [0, 1]], np.float32)
PROB = np.array([[0.8, 0.2], [0.4, 0.6]], np.float32)


def nhwc(a):
    return np.asarray(a, np.float32)[None, ..., None]


def test_bce_jaccard_matches_hand_computation():
    bce = -(math.log(0.8) + math.log(0.8) + math.log(0.6) + math.log(0.6)) / 4
    inter, union = 0.8 + 0.6, 2 + 2.0 - 1.4
    jaccard = (inter + 1) / (union + 1)  # smooth = 1
    got = float(BceJaccardLoss()(nhwc(MASK), nhwc(PROB)))
    assert got == pytest.approx(bce + 1 - jaccard, rel=1e-5)
    assert float(BceJaccardLoss(jaccard_weight=0)(nhwc(MASK), nhwc(PROB))) == pytest.approx(bce, rel=1e-5)
    assert float(BceJaccardLoss(bce_weight=0)(nhwc(MASK), nhwc(PROB))) == pytest.approx(1 - jaccard, rel=1e-5)


def test_weight_map_channel_weights_the_bce_term():
    weight = np.array([[2, 1], [1, 3]], np.float32)
    target = np.stack([MASK, weight], -1)[None]
    bce = -(2 * math.log(0.8) + math.log(0.8) + math.log(0.6) + 3 * math.log(0.6)) / 4
    got = float(BceJaccardLoss(jaccard_weight=0)(target, nhwc(PROB)))
    assert got == pytest.approx(bce, rel=1e-5)


def test_perfect_prediction_has_near_zero_loss():
    assert float(BceJaccardLoss()(nhwc(MASK), nhwc(MASK))) < 1e-5


def test_border_weight_map_formula():
    mask = np.zeros((5, 11), np.uint8)
    mask[:, :3] = 1
    mask[:, 7:] = 1  # gap of columns 3..6 between two objects
    w = border_weight_map(mask, w0=10.0, sigma=5.0)
    # column 4: d1 = 2 (to column 2), d2 = 3 (to column 7)
    assert w[2, 4] == pytest.approx(1 + 10 * math.exp(-(2 + 3) ** 2 / (2 * 25)), rel=1e-5)
    assert np.all(w[mask > 0] == 1.0)
    single = np.zeros((5, 11), np.uint8)
    single[:, :3] = 1
    assert np.all(border_weight_map(single, w0=10.0) == 1.0)  # one object: no border term


def test_iou_and_dice_at_a_threshold():
    truth = np.array([[1, 0], [0, 1]])
    prob = np.array([[0.9, 0.6], [0.1, 0.4]])
    assert iou(prob, truth, 0.5) == pytest.approx(1 / 3)
    assert dice(prob, truth, 0.5) == pytest.approx(1 / 2)
    assert iou(prob, truth, 0.35) == pytest.approx(2 / 3)
    assert dice(prob, truth, 0.35) == pytest.approx(4 / 5)
    assert iou(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0


def test_keras_metrics_pool_over_batches():
    truth = np.array([[1, 0], [0, 1]], np.float32)
    prob = np.array([[0.9, 0.6], [0.1, 0.4]], np.float32)
    m_iou, m_dice = ForegroundIoU(0.5), ForegroundDice(0.5)
    for m in (m_iou, m_dice):
        m.update_state(nhwc(truth), nhwc(prob))
        m.update_state(nhwc(truth), nhwc(truth))  # a perfect batch: I=2, P=2, T=2
    assert float(m_iou.result()) == pytest.approx(3 / 5)  # I=3, union=4+4-3
    assert float(m_dice.result()) == pytest.approx(6 / 8)


def test_calibration_finds_the_separating_threshold():
    rng = np.random.default_rng(0)
    truth = rng.random((4, 32, 32)) < 0.2
    probs = np.where(truth, rng.uniform(0.3, 0.5, truth.shape), rng.uniform(0.0, 0.25, truth.shape))
    threshold, best = calibrate_threshold(probs, truth)
    assert 0.25 <= threshold <= 0.3 and best == pytest.approx(1.0)
    curve = iou_curve(probs, truth, np.array([0.5, 0.27]))
    assert curve[0] == 0.0 and curve[1] == pytest.approx(1.0)
    for t in (0.1, 0.4, 0.123456):  # exact at any threshold, not only at bin edges
        assert iou_curve(probs, truth, np.array([t]))[0] == pytest.approx(iou(probs, truth, t), abs=1e-12)


def test_calibration_reaches_an_over_confident_segmenters_threshold():
    """Foreground at 0.9999, false positives at 0.999 (a one-slice segmenter's over-segmentation): the
    old 0.02-0.98 grid stopped at 0.98 with IoU 1/2; the logit grid separates them."""
    from segmentation_tf.calibration import calibrate_slices, default_thresholds, edge_warning

    truth = np.zeros((2, 8, 8), bool)
    truth[:, :4, :4] = True  # 32 foreground pixels
    probs = np.full(truth.shape, 0.01, np.float32)
    probs[truth] = 0.9999
    probs[:, 4:, 4:] = 0.999  # 32 false positives
    assert iou_curve(probs, truth, np.array([0.98]))[0] == pytest.approx(0.5)
    threshold, best = calibrate_threshold(probs, truth)
    assert 0.999 < threshold <= 0.9999 and best == 1.0
    grid = default_thresholds()
    assert grid[0] == pytest.approx(0.02, abs=1e-6) and grid[-1] == pytest.approx(1 - 1e-6, abs=1e-7)
    assert np.all(np.diff(grid) >= 0)
    record = calibrate_slices(probs, truth)
    assert record["version"] == 2 and record["iou"] == 1.0 and record["iou_at_0.5"] == pytest.approx(0.5)
    assert not record["at_grid_top"]
    probs[truth] = 1.0
    probs[0, 4:, 4:], probs[1, 4:, 4:] = 0.99999, 0.9999999  # the second beyond any grid: flagged
    assert calibrate_slices(probs, truth)["at_grid_top"]
    assert "top of the grid (0.99999)" in edge_warning(calibrate_slices(probs, truth))
    # a model that under-calls: its foreground sits below the grid's bottom, background lower still
    probs = np.where(truth, 0.01, 0.001).astype(np.float32)
    probs[0, 0, 0] = 0.5  # one confident pixel: the top of the grid does worse than its bottom
    low = calibrate_slices(probs, truth)
    assert low["at_grid_bottom"] and not low["at_grid_top"] and low["threshold"] == pytest.approx(0.02)
    assert "bottom of the grid (0.02)" in edge_warning(low)
    assert edge_warning(record) is None and not record["at_grid_bottom"]
