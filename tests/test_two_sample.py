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

FAST = TwoSampleConfig(width=8, steps=120, crop=32, batch_size=32)


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


def test_a_held_out_tile_is_judged_by_its_mean_logit_over_its_crops():
    import torch

    from generation_torch.two_sample import tile_logits

    class MeanPixel(torch.nn.Module):  # a stand-in critic: a crop's logit is its mean pixel
        def forward(self, x):
            return x.mean(dim=(1, 2, 3))[:, None]

    tile = np.zeros((1, 4, 6), np.float32)
    tile[0, :2, :2], tile[0, 2:, 4:] = 1.0, -3.0  # crops of 2 x 2: means 1, 0, 0 / 0, 0, -3
    got = tile_logits(MeanPixel(), tile, side=2)
    assert got.tolist() == pytest.approx([(1.0 - 3.0) / 6])
    # a side that does not divide the tile: the remainder is left out (rows 0-2, cols 0-2 and 3-5)
    assert tile_logits(MeanPixel(), tile, side=3).tolist() == pytest.approx([(4 / 9 + (-3 * 2 / 9)) / 2])


def test_the_result_names_its_version(tiles):
    from generation_torch.two_sample import VERSION

    got = two_sample_accuracy(tiles[::2], tiles[1::2], FAST)
    assert got["c2st_version"] == VERSION == 2 and got["c2st_tiles"] == min(len(tiles[::2]), len(tiles[1::2]))
