"""Tiling, stitching and blended whole-slice prediction."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.tiling import blend_window, grid_origins, predict_tiled, stitch_tiles, tile_slice


def test_1024x768_gives_12_tiles_in_a_4x3_grid():
    image = np.arange(768 * 1024, dtype=np.uint32).reshape(768, 1024)
    tiles, origins = tile_slice(image, 256)
    assert tiles.shape == (12, 256, 256)
    assert origins[:5] == [(0, 0), (0, 256), (0, 512), (0, 768), (256, 0)]
    assert np.array_equal(tiles[5], image[256:512, 256:512])


def test_odd_sizes_are_padded_by_reflection():
    image = np.arange(300 * 20, dtype=np.int32).reshape(300, 20)
    tiles, origins = tile_slice(image, 256)
    assert origins == [(0, 0), (256, 0)]
    # row 300 (first padded row) mirrors row 298; column 20 mirrors column 18
    assert np.array_equal(tiles[1][300 - 256, :20], image[298])
    assert np.array_equal(tiles[0][:, 20], image[:256, 18])


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 600), w=st.integers(1, 600), tile=st.sampled_from([16, 64, 256]),
       dtype=st.sampled_from([np.uint8, np.uint16, np.float32]), seed=st.integers(0, 2**16))
def test_tile_then_stitch_is_exact(h, w, tile, dtype, seed):
    rng = np.random.default_rng(seed)
    image = (rng.random((h, w)) * 200).astype(dtype)
    tiles, origins = tile_slice(image, tile)
    assert tiles.shape[1:] == (tile, tile)
    back = stitch_tiles(tiles, origins, image.shape)
    assert back.dtype == image.dtype and np.array_equal(back, image)


@settings(max_examples=25, deadline=None)
@given(h=st.integers(1, 400), w=st.integers(1, 400), overlap=st.sampled_from([0, 8, 31]),
       seed=st.integers(0, 2**16))
def test_blended_prediction_of_identity_returns_the_slice(h, w, overlap, seed):
    image = np.random.default_rng(seed).random((h, w)).astype(np.float32)
    out = predict_tiled(lambda batch: batch, image, tile=64, overlap=overlap, batch_size=5)
    assert out.shape == image.shape
    np.testing.assert_allclose(out, image, rtol=0, atol=1e-6)


def test_blending_averages_disagreeing_windows_smoothly():
    image = np.zeros((64, 120), np.float32)
    calls = iter(range(100))
    out = predict_tiled(lambda b: np.stack([np.full(t.shape, float(next(calls))) for t in b]), image,
                        tile=64, overlap=16, batch_size=1)
    # two windows (origins 0 and 48 -> padded); values move monotonically from 0 to 1 across the overlap
    row = out[0]
    assert row[0] == 0.0 and row[-1] > 0.99
    assert np.all(np.diff(row) >= -1e-6)


def test_blend_window_is_positive_and_flat_inside():
    w = blend_window(64, 16)
    assert w.min() > 0 and w[16:48, 16:48].min() == 1.0
    np.testing.assert_allclose(w, w.T)


def test_grid_origins_cover_the_axis():
    assert grid_origins(768, 256) == [0, 256, 512]
    assert grid_origins(1000, 256, 64) == [0, 192, 384, 576, 768]
    assert grid_origins(10, 256) == [0]


def test_dihedral_transforms_are_eight_distinct_invertible_maps():
    from shared.tiling import dihedral, inverse_dihedral

    x = np.arange(2 * 4 * 4).reshape(2, 4, 4)
    views = [dihedral(x, k) for k in range(8)]
    assert len({v.tobytes() for v in views}) == 8
    for k in range(8):
        assert np.array_equal(inverse_dihedral(views[k], k), x)
    assert np.array_equal(dihedral(x, 1)[0], np.rot90(x[0]))
    assert np.array_equal(dihedral(x, 4)[0], x[0][:, ::-1])


def test_tta_of_an_equivariant_predictor_is_exact_and_of_a_biased_one_averages():
    from shared.tiling import with_tta

    x = np.random.default_rng(0).random((3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(with_tta(lambda t: t * 2)(x), x * 2, rtol=1e-6)
    ramp = np.arange(8, dtype=np.float32)[None, None, :].repeat(8, axis=1)
    out = with_tta(lambda t: t * 0 + ramp)(x)  # a predictor that ignores its input: averages to const
    np.testing.assert_allclose(out, np.full_like(out, ramp.mean()), rtol=1e-6)


def test_predict_box_pieces_equal_the_whole_slice_prediction():
    """A slice predicted box by box from blocks with a halo (as a volume's chunks are) equals
    predict_tiled on the whole slice, seams and reflected borders included."""
    from shared.tiling import predict_box

    rng = np.random.default_rng(0)

    def nonlinear(b):  # depends on the whole tile, so any change of window would show
        return np.tanh(b * b.mean(axis=(1, 2), keepdims=True))

    image = rng.random((150, 230)).astype(np.float32)
    want = predict_tiled(nonlinear, image, 64, 16, 4)
    got = np.zeros_like(want)
    for y0, y1 in [(0, 70), (70, 150)]:
        for x0, x1 in [(0, 64), (64, 170), (170, 230)]:
            by, bx = max(0, y0 - 64), max(0, x0 - 64)
            block = image[by:y1 + 64, bx:x1 + 64]
            box = ((y0, y1), (x0, x1))
            got[y0:y1, x0:x1] = predict_box(nonlinear, block, (by, bx), image.shape, box, 64, 16, 3)
    assert np.array_equal(got, want)


def test_border_windows_read_the_slice_mirrored_by_half_the_overlap():
    """The first window starts half an overlap before the slice (mirrored context, as bioimageio.core
    pads by its halo) and the windows cover the slice padded so on both sides."""
    from shared.tiling import window_origins

    image = np.arange(100 * 90, dtype=np.float32).reshape(100, 90)
    seen = []
    predict_tiled(lambda b: seen.extend(b) or b, image, tile=64, overlap=16, batch_size=50)
    padded = np.pad(image, ((8, 60), (8, 60)), mode="reflect")  # slice coordinate y is padded[y + 8]
    assert window_origins(100, 64, 16) == [-8, 40, 88] and window_origins(90, 64, 16) == [-8, 40]
    assert np.array_equal(seen[0], padded[:64, :64])
    assert np.array_equal(seen[-1], padded[96:160, 48:112])
