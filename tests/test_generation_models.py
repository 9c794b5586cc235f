"""generation_torch building blocks: shapes, conditioning, checkpoints, masks, metrics, precision."""

from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from generation_torch import checkpoint, metrics, precision, tasks  # noqa: E402
from generation_torch.config import UNetConfig, VAEConfig  # noqa: E402
from generation_torch.data import dihedral, encode_all, latent_scale  # noqa: E402
from generation_torch.masks import elastic, varied_masks  # noqa: E402
from generation_torch.unet import UNet, mask_condition, null_condition  # noqa: E402
from generation_torch.vae import VAE, vae_loss  # noqa: E402
from shared import diffusion, tiling  # noqa: E402
from shared.errors import UserError  # noqa: E402


@pytest.mark.parametrize("downsample,latent", [(8, 32), (4, 64)])
def test_vae_shapes(downsample, latent):
    vae = VAE(VAEConfig(downsample=downsample, channels=(8, 8, 8)))
    x = torch.randn(2, 1, 256, 256)
    recon, mean, logvar = vae(x)
    assert recon.shape == x.shape and mean.shape == (2, 4, latent, latent) == logvar.shape
    loss, mse = vae_loss(x, recon, mean, logvar, beta=1e-4)
    assert loss >= mse > 0


def test_default_models_are_sized_as_designed():
    unet = UNet(UNetConfig())
    n = sum(p.numel() for p in unet.parameters())
    assert 2e6 <= n <= 6e6, n
    assert unet.time_mlp[0].in_features < unet.time_mlp[0].out_features < unet.time_mlp[2].out_features
    vae = VAE()
    assert vae.encoder(torch.zeros(1, 1, 256, 256)).shape == (1, 8, 32, 32)


def test_unet_condition_and_guidance_paths():
    unet = UNet(UNetConfig(channels=(16, 32), time_dims=(16, 32, 32), heads=2))
    torch.nn.init.normal_(unet.head[-1].weight, std=0.1)
    masks = torch.zeros(2, 256, 256)
    masks[:, :128] = 1
    cond = mask_condition(masks, 32)
    assert cond.shape == (2, 2, 32, 32) and cond[:, 0, :16].eq(1).all() and cond[:, 1].eq(1).all()
    assert null_condition(cond).abs().sum() == 0
    x, t = torch.randn(2, 4, 32, 32), torch.tensor([3.0, 900.0])
    out_c, out_u = unet(x, cond, t), unet(x, null_condition(cond), t)
    assert out_c.shape == x.shape and not torch.allclose(out_c, out_u)


def test_min_snr_weights_reach_the_diffusion_loss():
    from generation_torch.cli_args import parser, stages_from_args
    from generation_torch.config import DiffusionConfig
    from generation_torch.data import LatentCache
    from generation_torch.tasks import DiffusionTask

    args = parser().parse_args(["--preset", "quick", "--min-snr-gamma", "5"])
    assert stages_from_args(args).diffusion.diffusion.min_snr_gamma == 5.0
    unet = UNet(UNetConfig(channels=(16, 32), time_dims=(16, 32, 32), heads=2))
    torch.nn.init.normal_(unet.head[-1].weight, std=0.1)
    cache = LatentCache(torch.randn(6, 4, 8, 8), torch.full((6, 4, 8, 8), 0.1), torch.ones(6, 2, 8, 8))
    schedule = diffusion.Schedule.make("linear")

    def loss(gamma):
        task = DiffusionTask(unet, cache, cache, schedule, DiffusionConfig(min_snr_gamma=gamma), 1.0, None,
                             torch.device("cpu"))
        return float(task.loss(unet, torch.Generator().manual_seed(0), 4)[0].detach())

    # by hand: the same draws (batch, then t and noise), each sample's MSE times min(SNR, 5) / SNR
    task = DiffusionTask(unet, cache, cache, schedule, DiffusionConfig(), 1.0, None, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    z0, cond = task.batch(g, 4)
    x_t, t, target, _ = task.noisy_batch(z0, g)
    per_sample = (unet(x_t, cond, t.float()) - target).square().mean(dim=(1, 2, 3))
    snr = schedule.alphas_cumprod[t.numpy()] / (1 - schedule.alphas_cumprod[t.numpy()])
    weights = np.minimum(snr, 5.0) / snr
    assert loss(None) == pytest.approx(float(per_sample.mean()), rel=1e-5)
    assert loss(5.0) == pytest.approx(float((per_sample.detach().numpy() * weights).mean()), rel=1e-5)
    assert loss(5.0) < loss(None)  # weights are <= 1


def test_torch_and_numpy_share_the_update_maths():
    sch = diffusion.Schedule.make("cosine")
    rng = np.random.default_rng(0)
    x_np, pred_np = rng.standard_normal((2, 4)), rng.standard_normal((2, 4))
    a, s = (float(c) for c in sch.coefficients(500))
    for kind in diffusion.PREDICTIONS:
        x0_np, eps_np = diffusion.split_prediction(pred_np, x_np, a, s, kind)
        pred_t, x_t = torch.from_numpy(pred_np), torch.from_numpy(x_np)
        x0_t, eps_t = diffusion.split_prediction(pred_t, x_t, a, s, kind)
        np.testing.assert_allclose(x0_t.numpy(), x0_np)
        np.testing.assert_allclose(diffusion.ddim_step(x0_t, eps_t, sch.abar(500), sch.abar(480), 0.0, None)
                                   .numpy(), diffusion.ddim_step(x0_np, eps_np, sch.abar(500), sch.abar(480),
                                                                 0.0, None))


def test_dihedral_group():
    x = torch.arange(16.0).reshape(1, 4, 4)
    variants = {tuple(dihedral(x, k).flatten().tolist()) for k in range(8)}
    assert len(variants) == 8
    for k in range(8):
        np.testing.assert_array_equal(dihedral(x, k).numpy(), tiling.dihedral(x.numpy(), k))


def test_latent_cache_covers_all_transforms():
    vae = VAE(VAEConfig(channels=(8, 8, 8))).eval()
    images, masks = torch.randn(3, 1, 256, 256), (torch.rand(3, 1, 256, 256) > 0.5).float()
    cache = encode_all(vae.encode, images, masks, batch_size=2)
    assert len(cache) == 24 and cache.cond.shape == (24, 2, 32, 32) and cache.std.min() > 0
    assert latent_scale(cache) == pytest.approx(1 / cache.mean.std().item(), rel=1e-5)


def test_checkpoint_from_another_shape_is_a_user_error(tmp_path):
    small = VAE(VAEConfig(channels=(8, 8, 8)))
    with pytest.raises(UserError, match="another model shape"):
        checkpoint.load_weights(VAE(VAEConfig(channels=(8, 16, 16))), small.state_dict(), tmp_path / "x.pt",
                                "VAE")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable checkpoint"):
        checkpoint.load(tmp_path / "junk.pt")


def test_masks_stay_binary_and_vary():
    mask = np.zeros((256, 256), np.uint8)
    mask[100:160, 80:200] = 1
    out = elastic(mask, np.random.default_rng(0))
    assert set(np.unique(out)) <= {0, 1} and 0.7 < out.sum() / mask.sum() < 1.3 and (out != mask).any()
    a, rec = varied_masks(mask[None], 4, seed=1)
    b, _ = varied_masks(mask[None], 4, seed=1)
    np.testing.assert_array_equal(a, b)
    assert len(rec) == 4 and "dihedral" in rec[0]


def test_realism_metrics():
    rng = np.random.default_rng(0)
    real = rng.normal(0, 0.3, (8, 64, 64))
    assert metrics.histogram_wasserstein(real, real) == 0 and metrics.spectrum_distance(real, real) == 0
    shifted = real + 0.1
    assert metrics.histogram_wasserstein(shifted, real) == pytest.approx(0.1, rel=1e-6)
    blurred = (real + np.roll(real, 1, -1) + np.roll(real, 1, -2)) / 3
    assert metrics.spectrum_distance(blurred, real) > 0.1
    assert metrics.psnr(0.004) == pytest.approx(10 * np.log10(4 / 0.004))


def test_edge_profile_and_object_contrast_by_hand():
    tile = np.tile(np.arange(10, dtype=np.float32), (10, 1))     # intensity = column
    mask = np.zeros((10, 10), np.uint8)
    mask[:, :5] = 1                                              # columns 0-4 inside, boundary after 4
    assert list(metrics.signed_distances(mask)[0]) == [-5, -4, -3, -2, -1, 1, 2, 3, 4, 5]
    full = np.ones((10, 10), np.uint8)                           # no boundary: adds nothing
    profile = metrics.edge_profile(np.stack([tile, tile + 100]), np.stack([mask, full]), reach=3)
    assert list(profile) == [2, 3, 4, 5, 6, 7]                   # columns at distances -3..-1, 1..3
    assert metrics.object_contrast(profile) == pytest.approx(6.5 - 2.5)   # skips the px at +-1
    figures = metrics.edge_figures(tile[None] + 1, mask[None], tile[None], mask[None], reach=3)
    assert figures["edge_profile_l1"] == pytest.approx(1.0)
    assert figures["object_contrast"] == figures["object_contrast_real"] == pytest.approx(4.0)
    flipped = metrics.edge_figures(tile[None], 1 - mask[None], tile[None], mask[None], reach=3)
    assert flipped["object_contrast"] == pytest.approx(-4.0)      # objects brighter than their surround


def test_precision_choice():
    cpu = torch.device("cpu")
    assert precision.resolve("fp32", cpu) is None and precision.resolve("bf16", cpu) is torch.bfloat16
    assert precision.resolve("auto", cpu) == (torch.bfloat16 if precision.cpu_has_bf16() else None)
    with pytest.raises(UserError):
        precision.resolve("fp16", cpu)


def test_logit_normal_timesteps_against_hand_computed_values():
    from generation_torch.tasks import draw_timesteps

    # the same generator state gives the same normal draws u: t = floor(sigmoid(u) * T)
    u = torch.randn(20000, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    t = draw_timesteps(20000, 1000, "logit-normal", torch.Generator().manual_seed(3))
    expected = np.floor(1000 / (1 + np.exp(-u.numpy()))).astype(np.int64).clip(max=999)
    np.testing.assert_array_equal(t.numpy(), expected)
    assert int(t.min()) >= 0 and int(t.max()) <= 999
    # P(0.3 T <= t < 0.7 T) = P(|u| < logit(0.7) = 0.847) = 0.603; uniform: 0.4
    mid = lambda ts: float(((ts >= 300) & (ts < 700)).float().mean())  # noqa: E731
    assert mid(t) == pytest.approx(0.603, abs=0.01)
    assert mid(draw_timesteps(20000, 1000, "uniform", torch.Generator().manual_seed(3))) == \
        pytest.approx(0.4, abs=0.01)
    with pytest.raises(ValueError, match="unknown timestep sampling 'beta'"):
        draw_timesteps(4, 1000, "beta", torch.Generator())


def test_timestep_sampling_reaches_training_and_leaves_validation_uniform(monkeypatch):
    from generation_torch.cli_args import parser, stages_from_args
    from generation_torch.config import DiffusionConfig
    from generation_torch.data import LatentCache
    from generation_torch.tasks import DiffusionTask

    args = parser().parse_args(["--preset", "quick", "--t-sampling", "logit-normal"])
    assert stages_from_args(args).diffusion.diffusion.t_sampling == "logit-normal"
    default = stages_from_args(parser().parse_args(["--preset", "quick"]))
    assert default.diffusion.diffusion.t_sampling == "uniform"
    seen = []
    real_draw = tasks.draw_timesteps
    monkeypatch.setattr(tasks, "draw_timesteps",
                        lambda n, T, kind, g: seen.append(kind) or real_draw(n, T, kind, g))
    unet = UNet(UNetConfig(channels=(16, 32), time_dims=(16, 32, 32), heads=2))
    cache = LatentCache(torch.randn(6, 4, 8, 8), torch.full((6, 4, 8, 8), 0.1), torch.ones(6, 2, 8, 8))
    task = DiffusionTask(unet, cache, cache, diffusion.Schedule.make("linear"),
                         DiffusionConfig(t_sampling="logit-normal"), 1.0, None, torch.device("cpu"))
    task.loss(unet, torch.Generator().manual_seed(0), 4)
    with torch.no_grad():
        task.validate(unet)
    assert seen == ["logit-normal", "uniform"]
    # a stage saved before the field existed resumes under uniform sampling, not under another
    from shared.presets import changed_fields

    uniform = replace(task, dcfg=DiffusionConfig())
    before = {"schedule": "linear", "prediction": "eps", "cond_dropout": 0.15, "min_snr_gamma": None}
    old = {**uniform.describe(), "diffusion": before}
    assert changed_fields(old, uniform.describe(), absent=task.fields_added) == []
    assert changed_fields(old, task.describe(), absent=task.fields_added) == ["diffusion.t_sampling"]
    assert changed_fields(old, uniform.describe()) == ["diffusion.t_sampling", "diffusion.val_selection"]
    # a run from before per-level conditioning was input-only: resumed per level, it changed
    unet_before = {k: v for k, v in old["unet_config"].items() if k != "mask_every_level"}
    no_level = {**old, "unet_config": unet_before}
    assert changed_fields(no_level, uniform.describe(), absent=task.fields_added) == \
        ["unet_config.mask_every_level"]


def test_band_means_split_validation_errors_by_noise_level():
    """Errors at t = 0, 299 | 300, 699 | 999 of T = 1000: means 2, 6 and 10 by hand; an empty band is
    left out, and a 10-step schedule's bands end at 2, 6 and 9."""
    errors = torch.tensor([1.0, 3.0, 5.0, 7.0, 10.0], dtype=torch.float64)
    t = torch.tensor([0, 299, 300, 699, 999])
    assert tasks.band_means(errors, t, 1000) == {"val_loss_t0-299": 2.0, "val_loss_t300-699": 6.0,
                                                 "val_loss_t700-999": 10.0}
    assert tasks.band_means(errors[:2], t[:2], 1000) == {"val_loss_t0-299": 2.0}
    assert list(tasks.band_means(errors, torch.tensor([0, 2, 3, 6, 9]), 10)) == [
        "val_loss_t0-2", "val_loss_t3-6", "val_loss_t7-9"]


def test_a_validation_selection_picks_weights_by_its_noise_band():
    """Errors 1, 3 | 5, 7 | 10 at t = 0, 299 | 300, 699 | 999: by hand, all 5.2, low 2, mid 6, high 10,
    low-mid 4; a band no draw falls in falls back to the mean over every t."""
    from generation_torch.cli_args import parser, stages_from_args
    from generation_torch.config import DiffusionConfig
    from generation_torch.data import LatentCache
    from generation_torch.tasks import DiffusionTask

    errors = torch.tensor([1.0, 3.0, 5.0, 7.0, 10.0], dtype=torch.float64)
    t = torch.tensor([0, 299, 300, 699, 999])
    from generation_torch.config import VAL_SELECTIONS

    assert set(VAL_SELECTIONS) == set(tasks.SELECTION_RANGES)  # every flag value has its range
    picked = {s: tasks.selected_loss(errors, t, 1000, s) for s in tasks.SELECTION_RANGES}
    assert picked == pytest.approx({"all": 5.2, "low": 2.0, "mid": 6.0, "high": 10.0, "low-mid": 4.0})
    assert tasks.selected_loss(errors[:2], t[:2], 1000, "high") == pytest.approx(2.0)
    # the task validates by its selection and logs the mean over every t beside the bands
    unet = UNet(UNetConfig(channels=(16, 32), time_dims=(16, 32, 32), heads=2))
    cache = LatentCache(torch.randn(40, 4, 8, 8), torch.full((40, 4, 8, 8), 0.1), torch.ones(40, 2, 8, 8))
    task = DiffusionTask(unet, cache, cache, diffusion.Schedule.make("linear"), DiffusionConfig(), 1.0, None,
                         torch.device("cpu"))
    with torch.no_grad():
        mean, bands = task.validate(unet)
        mid, logs = replace(task, dcfg=DiffusionConfig(val_selection="mid")).validate(unet)
    assert "val_loss_all" not in bands and logs["val_loss_all"] == pytest.approx(mean)
    assert mid == pytest.approx(logs["val_loss_t300-699"]) and mid != pytest.approx(mean)
    stages = stages_from_args(parser().parse_args(["--val-selection", "mid"]))
    assert stages.diffusion.diffusion.val_selection == "mid"
    assert stages_from_args(parser().parse_args([])).diffusion.diffusion.val_selection == "all"


def test_varied_pairs_move_each_tile_with_its_mask():
    """The tile of a mask goes through the mask's own flip/rotation and deformation: a tile equal to
    2 * mask - 1 stays equal to its varied mask except at edge pixels (nearest vs bilinear), and the
    masks are varied_masks' for the same seed."""
    from generation_torch.masks import varied_pairs

    yy, xx = np.mgrid[:256, :256]
    masks = np.stack([(yy - 90) ** 2 + (xx - 150) ** 2 < 40**2, (yy > 200) & (xx < 60)]).astype(np.uint8)
    varied, tiles, origins = varied_pairs(masks, masks * 2.0 - 1.0, 6, seed=3)
    assert np.array_equal(varied, varied_masks(masks, 6, seed=3)[0])
    assert len({o["dihedral"] for o in origins}) > 1  # transforms differ between tiles
    disagree = (tiles > 0) != (varied == 1)
    assert disagree.mean() < 0.002 and tiles.dtype == np.float32
    assert varied_pairs(masks, None, 2, seed=3)[1] is None
