"""bench.feature_labels: the page <-> tile geometry, block means, the denoiser's feature levels and the
filter bank, each against values computed by hand."""

import numpy as np
import pytest

from bench.feature_labels import area_average, filter_bank, page_tiles, untile


def test_pages_tile_row_major_and_untile_back():
    pages = np.arange(2 * 512 * 768, dtype=np.float32).reshape(2, 512, 768)
    tiles = page_tiles(pages)
    assert tiles.shape == (12, 256, 256)
    assert tiles[1][0, 0] == pages[0, 0, 256] and tiles[3][0, 0] == pages[0, 256, 0]  # row-major
    assert tiles[6][5, 7] == pages[1, 5, 7]
    features = np.stack([tiles, -tiles], axis=1)  # two channels per tile
    back = untile(features, 2, 2, 3)
    assert back.shape == (2, 2, 512, 768)
    assert np.array_equal(back[:, 0], pages) and np.array_equal(back[:, 1], -pages)


def test_area_average_is_the_mean_of_each_block():
    masks = np.zeros((1, 8, 8), np.float32)
    masks[0, :2, :2] = 1  # a full block
    masks[0, 2, 2] = 1    # a quarter of one
    out = area_average(masks, 2)
    assert out.shape == (1, 4, 4)
    assert out[0, 0, 0] == 1.0 and out[0, 1, 1] == 0.25 and out.sum() == 1.25


def test_filter_bank_channels_and_a_flat_page():
    page = np.full((64, 64), 0.3, np.float32)
    bank = filter_bank(page)
    assert bank.shape == (31, 64, 64)  # the page + 6 filters at 5 scales
    smooth = bank[1::6]
    assert np.allclose(smooth, 0.3, atol=1e-5)  # smoothing keeps a constant
    # a constant has no gradient; the LoG is 0 up to scipy's truncated kernel at sigma 0.7 (-0.003)
    assert np.allclose(bank[3::6], 0.0, atol=1e-5) and np.allclose(bank[2::6], 0.0, atol=5e-3)


def test_denoiser_features_stack_every_up_level_at_latent_resolution():
    torch = pytest.importorskip("torch")
    from bench.feature_labels import tile_features, up_levels
    from generation_torch.config import UNetConfig, VAEConfig
    from generation_torch.pipeline import Generator
    from generation_torch.unet import UNet
    from generation_torch.vae import VAE
    from shared import diffusion

    torch.manual_seed(0)
    unet = UNet(UNetConfig(channels=(8, 16, 16), time_dims=(16, 32, 32), heads=2)).eval()
    assert len(up_levels(unet)) == 3  # one per resolution level
    gen = Generator(VAE(VAEConfig(downsample=4, channels=(8, 8))).eval(), unet,
                    diffusion.Schedule.make("linear", 1000), "eps", 1.0)
    tiles = np.random.default_rng(0).uniform(-1, 1, (3, 256, 256)).astype(np.float32)
    feats = tile_features(gen, tiles, (50, 250), batch=2)
    assert feats.shape == (3, 2 * (8 + 16 + 16), 64, 64)
    again = tile_features(gen, tiles[:1], (50, 250))
    assert np.allclose(again, feats[:1], atol=1e-5)  # fixed noise: the same features in another batch


def test_a_budget_the_judge_has_not_labelled_is_one_clear_error(tmp_path):
    from bench.feature_labels import main
    from shared.errors import UserError

    with pytest.raises(UserError, match=r"layout.json: no grid layout \(run bench.evidence first\)"):
        main(["--work", str(tmp_path), "--k", "2", "--features", "filters"])
    (tmp_path / "layout.json").write_text("{}")
    with pytest.raises(UserError, match=r"k2/pseudo_c2/predicted/mask.tif: the judge of k = 2 has not"):
        main(["--work", str(tmp_path), "--k", "2", "--features", "filters"])
