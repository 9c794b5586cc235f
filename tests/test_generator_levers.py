"""Generator levers. Mask conditioning at every level of the denoiser (SPADE): each modulated norm
responds to a mask change where it changed and nowhere else; configs and weights of input-only
(version 1) denoisers still load. The VAE spectral loss sees lost texture, not phase."""

import pytest

torch = pytest.importorskip("torch")

from generation_torch.config import UNetConfig, to_dict, unet_config  # noqa: E402
from generation_torch.layers import CondResBlock, Modulation  # noqa: E402
from generation_torch.unet import UNet, mask_condition  # noqa: E402

SMALL = UNetConfig(in_channels=4, channels=(16, 32), time_dims=(16, 32, 32), heads=2)


def randomized(module: torch.nn.Module) -> torch.nn.Module:
    """Zero-initialized modulation ignores the condition at first: give it random weights."""
    torch.manual_seed(0)
    for m in module.modules():
        if isinstance(m, Modulation):
            for conv in (m.scale, m.shift):
                torch.nn.init.normal_(conv.weight, std=0.3)
    return module


def conditions(size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    mask = torch.zeros(1, size * 8, size * 8)
    changed = mask.clone()
    changed[:, :32, :32] = 1.0  # top-left 32 px at full resolution = 4 latent px
    return mask_condition(mask, size), mask_condition(changed, size)


def test_every_modulated_norm_responds_where_the_mask_changed():
    unet = randomized(UNet(SMALL)).eval()
    norms = [m for m in unet.modules() if isinstance(m, Modulation)]
    assert len(norms) == 2 * sum(isinstance(m, CondResBlock) for m in unet.modules()) > 8
    cond, changed = conditions()
    for size in (16, 8):  # both resolution levels
        x = torch.randn(1, norms[0].norm.num_channels, size, size)
        for m in [n for n in norms if n.norm.num_channels == x.shape[1]][:1]:
            diff = (m(x, changed) - m(x, cond)).abs().sum(1)[0]
            region = 4 * size // 16  # the changed 4 latent px at this level
            assert diff[:region, :region].mean() > 1e-3
            assert diff[region + 3:, region + 3:].max() == 0  # 3x3 convs reach 2 px further, no more


def test_the_denoiser_output_follows_a_local_mask_change():
    unet = randomized(UNet(SMALL)).eval()
    torch.nn.init.normal_(unet.head[-1].weight, std=0.1)  # the head starts at zero ("predict 0")
    cond, changed = conditions()
    x, t = torch.randn(1, 4, 16, 16), torch.tensor([500.0])
    with torch.no_grad():
        diff = (unet(x, changed, t) - unet(x, cond, t)).abs().sum(1)[0]
    assert diff[:4, :4].mean() > 3 * diff[10:, 10:].mean()


def test_input_only_checkpoints_still_load():
    old = UNet(unet_config({**to_dict(SMALL), "mask_every_level": False}))
    saved = {k: v for k, v in to_dict(old.cfg).items() if k != "mask_every_level"}  # a version-1 config
    cfg = unet_config(saved)
    assert cfg.mask_every_level is False and UNetConfig().mask_every_level is True
    UNet(cfg).load_state_dict(old.state_dict())  # same layout: strict load succeeds
    with pytest.raises(RuntimeError):
        UNet(SMALL).load_state_dict(old.state_dict())


def test_spectral_loss_sees_lost_texture_that_mse_barely_sees():
    from generation_torch.vae import spectral_loss, vae_loss

    torch.manual_seed(0)
    x = torch.randn(2, 1, 64, 64) * 0.3
    blurred = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1)
    shifted = torch.roll(x, 5, dims=-1)  # same texture, other phase
    assert spectral_loss(x, x) == 0
    assert spectral_loss(x, blurred) > 5 * spectral_loss(x, shifted)
    assert float(spectral_loss(x, shifted)) < 0.01 < float(spectral_loss(x, blurred))
    mean, logvar = torch.zeros(2, 4, 8, 8), torch.zeros(2, 4, 8, 8)
    plain, mse = vae_loss(x, blurred, mean, logvar, beta=1.0)
    weighted, _ = vae_loss(x, blurred, mean, logvar, beta=1.0, spectral_weight=0.5)
    assert float(weighted - plain) == pytest.approx(0.5 * float(spectral_loss(x, blurred)), rel=1e-5)


def test_latent_stats_figures_against_hand_computed_values():
    import numpy as np

    from bench.latent_stats import latent_figures, tile_figures

    z = torch.zeros(2, 1, 2, 2)
    z[1] = 2.0  # tile means 0 and 2: channel mean 1, per-tile-mean std sqrt(2) (ddof 1)
    fig = latent_figures(z)
    assert fig["z_mean"] == [1.0] and abs(fig["z_tile_mean_std"][0] - 2 ** 0.5) < 1e-6
    rng = np.random.default_rng(0)
    real = rng.normal(0, 0.2, (4, 64, 64)).astype(np.float32)
    same, louder = tile_figures(real, real), tile_figures(2 * real, real)
    assert list(same["log10_power_ratio"]) == ["1-4", "4-8", "8-16", "16-32"]  # 64 px: radius <= 32
    assert all(v == 0 for v in same["log10_power_ratio"].values())
    # twice the amplitude is four times the power in every band: log10(4) = 0.602
    assert all(abs(v - np.log10(4)) < 1e-3 for v in louder["log10_power_ratio"].values())


def test_grain_share_against_a_hand_computed_pair_of_tiles():
    from bench.latent_stats import grain_share

    # tile 1: a 9 at the centre of 3x3 zeros (every 3x3 window holds it once: mean 1 everywhere, residual
    # 8 at the centre, -1 elsewhere); tile 2: flat 2 (residual 0). Residual variance 72/17, the
    # latents' (mean 1.5) 76.5/17
    z = torch.zeros(2, 1, 3, 3)
    z[0, 0, 1, 1] = 9.0
    z[1] = 2.0
    assert grain_share(z) == pytest.approx(72 / 76.5, rel=1e-6)


def test_sampled_latents_decode_to_the_generated_tiles(tmp_path):
    import numpy as np

    from generation_torch.pipeline import load_generator
    from shared.sampling import SamplerSettings, TileNoise, tile_seeds

    from .test_exporters_generator import tiny_checkpoint

    gen = load_generator(tiny_checkpoint(tmp_path / "g.pt", texture=False))
    masks = torch.zeros(2, 256, 256)
    masks[0, 64:128, 64:160] = 1
    settings = SamplerSettings("ddim", 3, guidance=2.0)
    tiles = gen.generate(masks, settings, seed=3)
    z = gen.sample_latents(masks, settings, TileNoise(tile_seeds(3, 0, 2)))
    assert z.shape == (2, gen.vae.cfg.latent_channels, gen.latent_size, gen.latent_size)
    np.testing.assert_array_equal(gen.decode(z).numpy(), tiles.numpy())


def test_the_lever_figure_shows_the_most_labelled_real_tiles_then_each_guidance(tmp_path, monkeypatch):
    import matplotlib.image
    import numpy as np

    import bench.generator_levers as levers
    from bench.evidence import Cell, EvidenceConfig
    from shared.phantom import PhantomConfig, phantom_stack
    from shared.store import TileStore
    from shared.tiles import tile_stack

    images, masks = phantom_stack(2, seed=1, config=PhantomConfig(height=128, width=128))

    def store(path, split):
        out = TileStore.create(path, tile_size=64)
        out.append(*tile_stack(images, masks, "t", dict.fromkeys(range(2), split), tile=64))
        return out

    val = store(tmp_path / "val", "val")

    class FakeBench:  # what lever_figure reads of a Bench: the recipe and where each guidance drew
        cfg = EvidenceConfig()

        def synthetic_dir(self, cell, sampling):
            path = tmp_path / f"g{sampling.guidance:g}"
            if not path.exists():
                store(path, "train")
            return path

    monkeypatch.setattr(levers, "val_tiles", lambda bench: val)
    figure = tmp_path / "f.png"
    levers.lever_figure(figure, FakeBench(), Cell(1, "images_plentiful", 0.3, 0, "vpred"), [1.5, 2.0], n=2)
    png = matplotlib.image.imread(figure)  # 8-bit grey: (H, W)
    assert png.shape[0] == 3 * 64 + 2 * 12  # real tiles, then two guidances, 12 px apart
    most = max(val.indices(), key=lambda i: float(val.masks([i]).mean()))
    # the top-left pair: the most labelled validation tile's mask beside it (pairs sit 2 px apart)
    np.testing.assert_allclose(png[:64, 66:130], val.masks([most])[0], atol=1 / 255)


def test_latent_stats_reports_reconstruction_unexplained_variance_and_draws_its_rows(tmp_path, monkeypatch):
    import json

    import matplotlib.image
    import numpy as np

    from bench import latent_stats
    from generation_torch import two_sample
    from shared.phantom import PhantomConfig, phantom_stack
    from shared.store import TileStore
    from shared.tiles import tile_stack

    from .test_exporters_generator import tiny_checkpoint

    images, masks = phantom_stack(1, seed=2, config=PhantomConfig(height=256, width=512))
    val = TileStore.create(tmp_path / "val", tile_size=256)
    val.append(*tile_stack(images, masks, "t", {0: "val"}, tile=256))
    out, figure = tmp_path / "stats.json", tmp_path / "rows.png"
    # the critic's verdict stands in as the mean |tile - real tile|: it shows what it was shown
    monkeypatch.setattr(two_sample, "c2st_figures", lambda generated, real: {
        "c2st_accuracy": float(np.abs(generated - real).mean()), "c2st_version": two_sample.VERSION})
    latent_stats.main(["--generator", str(tiny_checkpoint(tmp_path / "g.pt")),
                       "--val-store", str(tmp_path / "val"), "--guidances", "2", "--steps", "2",
                       "--tiles", "2", "--out", str(out), "--figure", str(figure)])
    saved = json.loads(out.read_text())
    assert saved["command"].startswith("python -m bench.latent_stats --generator")
    recon = next(r for r in saved["rows"] if r["tiles"] == "VAE reconstructions")
    assert recon["recon_mse"] > 0
    # the critic saw reconstructions against the tiles they reconstruct; the textured ones differ more
    textured = next(r for r in saved["rows"] if r["tiles"] == "VAE reconstructions + texture")
    assert recon["c2st_accuracy"] == pytest.approx(np.sqrt(recon["recon_mse"]), rel=0.6)
    assert textured["c2st_accuracy"] > recon["c2st_accuracy"] and textured["recon_mse"] > recon["recon_mse"]
    assert 0 < saved["rows"][0]["z_grain_share"] <= 1.5
    by_t = {r["t"]: r for r in saved["x0_error_by_t"]}
    # a * x_t loses the signal as t grows: at t = 999 it explains almost nothing of the latents
    assert by_t[999]["scaled_x_t_unexplained"] > by_t[50]["scaled_x_t_unexplained"]
    assert by_t[999]["scaled_x_t_unexplained"] == pytest.approx(1.0, abs=0.1)
    png = matplotlib.image.imread(figure)  # 8-bit grey: (H, W)
    assert png.shape[0] == 6 * 256 + 5 * 12  # real, reconstructions, x0 at 3 t, one guidance
    most = int(np.argmax([m.mean() for m in val.masks(val.indices())]))
    np.testing.assert_allclose(png[:256, 258:514], val.masks([val.indices()[most]])[0], atol=1 / 255)


def test_the_report_names_every_command_that_wrote_a_results_file(tmp_path):
    import json

    from bench import report

    base = {"machine": {"cpu": "x", "cores": 2, "date": "d"}, "rows": [{"recipe": "a"}, {"recipe": "b"}]}
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    one.write_text(json.dumps({**base, "command": "python -m x --recipes a",
                               "commands": ["python -m x --recipes a"]}))
    two.write_text(json.dumps({**base, "command": "python -m x --recipes b",
                               "commands": ["python -m x --recipes a", "python -m x --recipes b"]}))
    assert not any(line.startswith("Commands") for line in report.section(one, "t"))
    assert "Commands that wrote its rows: `python -m x --recipes a`; `python -m x --recipes b`" in \
        report.section(two, "t")


def test_saved_rows_reads_rows_by_cell_and_every_command(tmp_path):
    """What a levers run reads again before each write (so rows another run wrote while it trained
    stay): rows by (k, recipe, guidance), and the commands, a file from before the list giving its one."""
    import json

    from bench.generator_levers import saved_rows

    path = tmp_path / "levers.json"
    assert saved_rows(path) == ({}, [])
    path.write_text(json.dumps({"command": "python -m x --recipes a",
                                "rows": [{"k": 1, "recipe": "a", "guidance": 2.0, "fidelity_iou": 0.5}]}))
    rows, commands = saved_rows(path)
    assert list(rows) == [(1, "a", 2.0)] and commands == ["python -m x --recipes a"]
    path.write_text(json.dumps({"commands": ["c1", "c2"], "rows": []}))
    assert saved_rows(path) == ({}, ["c1", "c2"])
