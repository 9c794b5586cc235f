"""Classifier two-sample test: it sees an obvious difference, not a resample of the same tiles; its
interval matches the hand-computed Wilson interval."""

import math

import numpy as np
import pytest

pytest.importorskip("torch")

from generation_torch.two_sample import TwoSampleConfig, two_sample_accuracy, wilson_interval  # noqa: E402
from shared.normalization import normalize  # noqa: E402
from shared.phantom import PhantomConfig, phantom_stack  # noqa: E402
from shared.tiles import tile_stack  # noqa: E402

FAST = TwoSampleConfig(width=8, steps=120)


@pytest.fixture(scope="module")
def tiles():
    images, masks = phantom_stack(8, seed=2, config=PhantomConfig(height=256, width=256))
    raw, _, _ = tile_stack(images, masks, "t", dict.fromkeys(range(len(images)), "train"), tile=64)
    return normalize(raw)


def test_wilson_interval_by_hand():
    low, high = wilson_interval(40, 50)
    p, n, z = 0.8, 50, 1.96
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert (low, high) == pytest.approx((centre - half, centre + half))


def test_blurred_tiles_give_themselves_away(tiles):
    from scipy import ndimage

    blurred = np.stack([ndimage.gaussian_filter(t, 2.0) for t in tiles])
    got = two_sample_accuracy(blurred[::2], tiles[1::2], FAST)
    assert got["c2st_accuracy"] > 0.85 and got["c2st_low"] > 0.6


def test_two_halves_of_the_same_tiles_are_indistinguishable(tiles):
    order = np.random.default_rng(0).permutation(len(tiles))
    got = two_sample_accuracy(tiles[order[::2]], tiles[order[1::2]], FAST)
    assert got["c2st_low"] < 0.5 < got["c2st_high"] or abs(got["c2st_accuracy"] - 0.5) < 0.15


def test_too_few_tiles_are_refused(tiles):
    with pytest.raises(ValueError, match="at least 4"):
        two_sample_accuracy(tiles[:3], tiles[3:10], FAST)
