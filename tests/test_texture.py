"""shared.texture: the decoder's residual spectrum and noise of that spectrum, against hand values."""

import numpy as np
import pytest

from shared.sampling import TileNoise
from shared.texture import add_texture, colored_noise, residual_spectrum


def test_residual_spectrum_of_white_noise_is_flat_at_its_variance():
    rng = np.random.default_rng(0)
    images = rng.normal(0.3, 0.2, (300, 32, 32))  # the 0.3 offset is removed by the reconstruction
    spectrum = residual_spectrum(images, np.full_like(images, 0.3))
    assert spectrum.shape == (32, 17) and spectrum.dtype == np.float32
    assert spectrum.mean() == pytest.approx(0.04, rel=0.02)  # orthonormal FFT: power = variance
    assert spectrum.std() / spectrum.mean() < 0.1


def test_colored_noise_round_trips_its_spectrum_and_pixel_variance():
    fy, fx = np.meshgrid(np.fft.fftfreq(32), np.fft.rfftfreq(32), indexing="ij")
    target = (0.05 * np.exp(-np.hypot(fy, fx) / 0.1)).astype(np.float32)  # low-pass, like blur
    noise = colored_noise(target, np.random.default_rng(1).standard_normal((2000, 32, 32)).astype(np.float32))
    measured = residual_spectrum(noise, np.zeros_like(noise))
    assert np.abs(measured - target).max() < 0.15 * target.max()
    full = np.concatenate([target, target[:, 1:-1][:, ::-1]], axis=1)  # the rfft half -> all 32 x 32
    assert noise.var() == pytest.approx(full.mean(), rel=0.05)
    with pytest.raises(ValueError, match="does not fit"):
        colored_noise(target, np.zeros((1, 16, 16), np.float32))


def test_add_texture_draws_from_each_tiles_stream_and_stays_in_range():
    spectrum = np.full((16, 9), 0.01, np.float32)
    tiles = np.zeros((3, 16, 16), np.float32)
    tiles[0] = 0.99
    out = add_texture(tiles, spectrum, 1.0, TileNoise([5, 6, 7]))
    again = add_texture(tiles[1:], spectrum, 1.0, TileNoise([6, 7]))
    np.testing.assert_array_equal(out[1:], again)  # tile i's noise does not depend on its batch
    assert out.max() <= 1.0 and out[1].std() == pytest.approx(0.1, rel=0.3)
    assert add_texture(tiles, spectrum, 0.0, TileNoise([5, 6, 7])) is tiles
