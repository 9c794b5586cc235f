"""Generator -> ONNX (torch.onnx) and the onnxruntime sampler: parity with PyTorch, metadata, CLI."""

import numpy as np
import pytest
import tifffile

from .conftest import assert_one_line_error, run_module

torch = pytest.importorskip("torch")


def tiny_checkpoint(path, texture=True, prediction="eps"):
    from generation_torch import checkpoint
    from generation_torch.config import DiffusionConfig, UNetConfig, VAEConfig
    from generation_torch.pipeline import product_dict
    from generation_torch.unet import UNet
    from generation_torch.vae import VAE

    torch.manual_seed(0)
    vae = VAE(VAEConfig(channels=(8, 16, 16)))
    unet = UNet(UNetConfig(channels=(16, 32, 32), time_dims=(32, 64, 64), heads=2))
    torch.nn.init.normal_(unet.head[-1].weight, std=0.05)  # the zero-initialized head would hide errors
    fy, fx = np.meshgrid(np.fft.fftfreq(256), np.fft.rfftfreq(256), indexing="ij")
    spectrum = (0.02 * np.hypot(fy, fx)).astype(np.float32)  # residual power rising with frequency
    checkpoint.save(path, product_dict(vae, unet, DiffusionConfig(schedule="cosine", prediction=prediction),
                                       0.8, "float32",
                                       texture_spectrum=spectrum if texture else None))
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    ckpt = tiny_checkpoint(root / "generator.pt")
    proc = run_module("exporters.torch_onnx", "--checkpoint", ckpt, "--out", root / "onnx")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("max |PyTorch - onnxruntime|") == 3
    return ckpt, root / "onnx"


def blob_masks(n, size=256, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    masks = np.zeros((n, size, size), np.uint8)
    for k in range(n):
        cy, cx, r = rng.uniform(40, 216), rng.uniform(40, 216), rng.uniform(15, 40)
        masks[k] = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
    return masks


def test_parts_have_metadata_and_dynamic_batch(exported):
    import onnxruntime as ort

    from exporters.onnx_io import read_metadata
    from generation_torch.pipeline import load_generator

    ckpt, folder = exported
    props = read_metadata(folder / "denoiser.onnx")
    assert props["emsynth.model"] == "denoiser" and props["schedule"] == "cosine"
    assert props["timesteps"] == "1000" and props["prediction"] == "eps"
    assert float(props["latent_scale"]) == pytest.approx(0.8) and props["latent_shape"] == "[4, 32, 32]"
    assert "area-averaged" in props["condition"] and props["norm_mean"] == "0.5"
    assert read_metadata(folder / "vae_encoder.onnx")["emsynth.model"] == "vae_encoder"
    gen = load_generator(ckpt)
    session = ort.InferenceSession(str(folder / "denoiser.onnx"), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(5)
    x, cond = torch.randn(5, 4, 32, 32, generator=g), torch.rand(5, 2, 32, 32, generator=g)
    t = torch.tensor([0.0, 10.0, 500.0, 900.0, 999.0])
    with torch.no_grad():
        want = gen.unet(x, cond, t).numpy()
    got = session.run(None, {"x_t": x.numpy(), "cond": cond.numpy(), "t": t.numpy()})[0]
    assert np.abs(want - got).max() <= 1e-4
    enc = ort.InferenceSession(str(folder / "vae_encoder.onnx"), providers=["CPUExecutionProvider"])
    image = torch.rand(1, 1, 256, 256) * 2 - 1
    mean, logvar = enc.run(None, {"image": image.numpy()})
    with torch.no_grad():
        want_mean, want_logvar = gen.vae.encode(image)
    assert np.abs(mean - want_mean.numpy()).max() <= 1e-4 and logvar.shape == (1, 4, 32, 32)


@pytest.mark.parametrize("sampler,steps,guidance,rescale", [("ddim", 8, 2.0, 0.0), ("dpmpp2m", 6, 1.0, 0.0),
                                                             ("dpmpp2m", 6, 8.0, 0.7)])
def test_onnxruntime_sampler_matches_pytorch_from_the_same_noise(exported, sampler, steps, guidance, rescale):
    from exporters.runtime import Generator, mask_condition
    from generation_torch.pipeline import load_generator
    from generation_torch.unet import mask_condition as torch_mask_condition
    from shared import diffusion
    from shared.sampling import SamplerSettings

    ckpt, folder = exported
    masks = blob_masks(2)
    noise = np.random.default_rng(1).standard_normal((2, 4, 32, 32)).astype(np.float32)
    cond = torch_mask_condition(torch.from_numpy(masks).float(), 32)
    np.testing.assert_allclose(mask_condition(masks.astype(np.float32), 32), cond.numpy(), atol=1e-6)
    gen = load_generator(ckpt)
    z = diffusion.sample(gen.model_fn(cond, guidance, rescale), torch.from_numpy(noise), gen.schedule,
                         sampler, steps, prediction=gen.prediction)
    want = gen.decode(z)[:, 0].numpy()
    settings = SamplerSettings(sampler, steps, guidance=guidance, guidance_rescale=rescale)
    got = Generator(folder, device="cpu").generate(masks, settings, initial_noise=noise)
    assert got.shape == (2, 256, 256)
    assert np.abs(got - want).max() <= 1e-3


def test_a_partial_walk_from_tiles_matches_pytorch_and_keeps_their_layout(exported):
    """Strength 0.5: onnxruntime (its VAE encoder, then the shared sampler) draws what PyTorch draws
    from the same tiles and seed; at a strength of one last step the drawn tile is the VAE's
    reconstruction of the tile it started from, which a walk from pure noise is not."""
    from exporters.runtime import Generator
    from generation_torch.pipeline import load_generator, reconstruct
    from shared.sampling import SamplerSettings

    ckpt, folder = exported
    masks = blob_masks(2, seed=2)
    tiles = np.where(masks == 1, 0.6, -0.4).astype(np.float32)
    tiles += np.random.default_rng(0).normal(0.0, 0.1, tiles.shape).astype(np.float32)
    gen, ort_gen = load_generator(ckpt), Generator(folder, device="cpu")

    def both(settings):
        want = gen.generate(torch.from_numpy(masks).float(), settings, seed=3,
                            init_images=torch.from_numpy(tiles)[:, None])[:, 0].numpy()
        return want, ort_gen.generate(masks, settings, seed=3, init_images=tiles)

    want, got = both(SamplerSettings("ddim", 8, guidance=2.0, strength=0.5))
    assert np.abs(got - want).max() <= 1e-3
    recon = np.clip(reconstruct(gen.vae, tiles), -1, 1)
    last_step, _ = both(SamplerSettings("ddim", 8, guidance=2.0, strength=0.1))
    from_noise = gen.generate(torch.from_numpy(masks).float(), SamplerSettings("ddim", 8), seed=3)[:, 0]
    assert np.abs(last_step - recon).mean() < 0.02 < np.abs(from_noise.numpy() - recon).mean()


@pytest.mark.slow
def test_a_v_prediction_generator_exports_and_samples_as_in_pytorch(tmp_path):
    """The v-prediction denoiser (the main recipe's): its type reaches the metadata and the
    onnxruntime sampler, which matches PyTorch; read as eps, the same network draws other tiles (so
    the check would see a sampler that ignored the type)."""
    from exporters.onnx_io import read_metadata
    from exporters.runtime import Generator
    from generation_torch.pipeline import load_generator
    from generation_torch.unet import mask_condition as torch_mask_condition
    from shared import diffusion
    from shared.sampling import SamplerSettings

    ckpt = tiny_checkpoint(tmp_path / "generator.pt", texture=False, prediction="v")
    proc = run_module("exporters.torch_onnx", "--checkpoint", ckpt, "--out", tmp_path / "onnx")
    assert proc.returncode == 0, proc.stderr
    assert read_metadata(tmp_path / "onnx" / "denoiser.onnx")["prediction"] == "v"
    masks = blob_masks(2, seed=4)
    noise = np.random.default_rng(2).standard_normal((2, 4, 32, 32)).astype(np.float32)
    gen = load_generator(ckpt)
    assert gen.prediction == "v"
    cond = torch_mask_condition(torch.from_numpy(masks).float(), 32)

    def torch_draw(prediction):
        z = diffusion.sample(gen.model_fn(cond, 1.5, 0.0), torch.from_numpy(noise), gen.schedule, "dpmpp2m",
                             6, prediction=prediction)
        return gen.decode(z)[:, 0].numpy()

    got = Generator(tmp_path / "onnx", device="cpu").generate(
        masks, SamplerSettings("dpmpp2m", 6, guidance=1.5), initial_noise=noise)
    assert np.abs(got - torch_draw("v")).max() <= 1e-3
    assert np.abs(got - torch_draw("eps")).max() > 1e-2


def test_sampling_is_deterministic_per_seed(exported):
    from exporters.runtime import Generator
    from shared.sampling import SamplerSettings

    gen = Generator(exported[1], device="cpu")
    masks = blob_masks(2, seed=3)
    ddim = SamplerSettings("ddim", 4)
    a = gen.sample(masks, ddim, seed=7)
    b = gen.sample(masks, ddim, seed=7)
    c = gen.sample(masks, ddim, seed=8)
    assert a.dtype == np.uint8 and np.array_equal(a, b) and not np.array_equal(a, c)
    ddpm = SamplerSettings("ddpm", 3)  # stochastic sampler, seeded too
    assert np.array_equal(gen.sample(masks, ddpm, seed=7), gen.sample(masks, ddpm, seed=7))


# a stochastic sampler with guidance and rescale: every random draw and both condition halves count
STOCHASTIC = dict(sampler="ddim", steps=5, eta=1.0, guidance=3.0, guidance_rescale=0.5, texture=0.8)


def torch_tiles(ckpt, masks, settings, seed, batch_size):
    from generation_torch.pipeline import load_generator
    from generation_torch.sample import generate_tiles

    return generate_tiles(load_generator(ckpt), masks, settings, seed, batch_size, progress=False)


def ort_tiles(folder, masks, settings, seed, batch_size):
    from exporters.runtime import Generator

    gen = Generator(folder, device="cpu")
    return np.concatenate([gen.generate(masks[s:s + batch_size], settings, seed, start=s)
                           for s in range(0, len(masks), batch_size)])


@pytest.mark.parametrize("path", [torch_tiles, ort_tiles], ids=["pytorch", "onnxruntime"])
def test_tiles_do_not_depend_on_the_batch_size(exported, path):
    from shared.sampling import SamplerSettings

    ckpt, folder = exported
    source = ckpt if path is torch_tiles else folder
    masks, settings = blob_masks(5, seed=6), SamplerSettings(**STOCHASTIC)
    whole = path(source, masks, settings, 4, 5)
    for batch_size in (1, 3):
        np.testing.assert_allclose(path(source, masks, settings, 4, batch_size), whole, atol=1e-5)
    assert np.abs(path(source, masks, settings, 5, 5) - whole).max() > 1e-2  # another seed, other tiles


@pytest.mark.parametrize("settings", [STOCHASTIC, dict(sampler="dpmpp2m", steps=4, guidance=2.0),
                                      dict(sampler="ddpm", steps=3, unconditional=True)],
                         ids=["ddim-eta1-guided", "dpmpp2m", "ddpm-unconditional"])
def test_onnxruntime_and_pytorch_draw_the_same_tiles_for_a_seed(exported, settings):
    """The same seed, sampler, steps and guidance give the same tiles by both paths, batched alike or not."""
    from shared.sampling import SamplerSettings

    ckpt, folder = exported
    masks, settings = blob_masks(4, seed=2), SamplerSettings(**settings)
    want = torch_tiles(ckpt, masks, settings, 3, 4)
    for batch_size in (1, 3, 4):
        assert np.abs(ort_tiles(folder, masks, settings, 3, batch_size) - want).max() <= 1e-3


@pytest.mark.fault("onnxruntime layer",
                   "masks of another size, steps 0, guidance rescale 1.5, NaN masks, missing folder",
                   "the project's errors")
def test_generator_runtime_bad_input(exported, tmp_path):
    from exporters.runtime import Generator, InputError, ModelFileError
    from shared.sampling import SamplerSettings

    gen = Generator(exported[1], device="cpu")
    with pytest.raises(InputError, match=r"masks must be \(N, 256, 256\)"):
        gen.sample(np.zeros((2, 64, 64), np.uint8))
    with pytest.raises(InputError, match="steps must be in"):
        gen.sample(blob_masks(1), SamplerSettings(steps=1001))
    with pytest.raises(InputError, match="seed must be >= 0"):
        gen.sample(blob_masks(1), seed=-1)
    with pytest.raises(ValueError, match="steps must be in"):
        SamplerSettings(steps=0)
    with pytest.raises(ValueError, match=r"guidance_rescale must be in \[0, 1\], got 1.5"):
        SamplerSettings(guidance_rescale=1.5)
    with pytest.raises(InputError, match="NaN"):
        gen.sample(np.full((1, 256, 256), np.nan, np.float32))
    with pytest.raises(ModelFileError, match="no such folder"):
        Generator(tmp_path / "nothing")
    with pytest.raises(InputError, match=r"starts from one tile per mask \(1, 256, 256\), got none"):
        gen.sample(blob_masks(1), SamplerSettings(strength=0.5))


def test_infer_generate_cli(exported, tmp_path):
    from shared.normalization import normalize

    masks = blob_masks(3, seed=4)
    tifffile.imwrite(tmp_path / "masks.tif", masks * 255, photometric="minisblack")
    proc = run_module("exporters.infer", "generate", "--model-dir", exported[1], "--masks",
                      tmp_path / "masks.tif", "--out", tmp_path / "gen", "--steps", "3", "--n", "4",
                      "--batch-size", "2")
    assert proc.returncode == 0, proc.stderr
    images = tifffile.imread(tmp_path / "gen" / "images.tif")
    written = tifffile.imread(tmp_path / "gen" / "masks.tif")
    assert images.shape == (4, 256, 256) and images.dtype == np.uint8
    assert np.array_equal(written[3], masks[0])  # masks are reused in order
    from exporters.runtime import Generator
    from shared.sampling import SamplerSettings

    alone = Generator(exported[1], device="cpu").sample(written, SamplerSettings(steps=3), seed=0)
    assert np.abs(alone.astype(int) - images).max() <= 1  # batches of 2 draw what one batch of 4 does
    bad = run_module("exporters.infer", "generate", "--model-dir", exported[1], "--masks",
                     tmp_path / "masks.tif", "--out", tmp_path / "g2", "--steps", "0")
    assert_one_line_error(bad, "--steps", ">= 1")
    # starting from the masks' own tiles: tile k of --start-from goes with mask k
    tiles = (masks * 150 + 50).astype(np.uint8)
    tifffile.imwrite(tmp_path / "tiles.tif", tiles, photometric="minisblack")
    common = ["generate", "--model-dir", exported[1], "--masks", tmp_path / "masks.tif", "--steps", "4",
              "--strength", "0.5"]
    proc = run_module("exporters.infer", *common, "--start-from", tmp_path / "tiles.tif", "--out",
                      tmp_path / "g3")
    assert proc.returncode == 0, proc.stderr
    want = Generator(exported[1], device="cpu").sample(masks, SamplerSettings(steps=4, strength=0.5),
                                                       init_images=normalize(tiles))
    assert np.abs(tifffile.imread(tmp_path / "g3" / "images.tif").astype(int) - want).max() <= 1
    assert_one_line_error(run_module("exporters.infer", *common, "--out", tmp_path / "g4"), "--start-from")
    tifffile.imwrite(tmp_path / "two.tif", tiles[:2], photometric="minisblack")
    proc = run_module("exporters.infer", *common, "--start-from", tmp_path / "two.tif", "--out",
                      tmp_path / "g5")
    assert_one_line_error(proc, "two.tif", "one tile per mask")
    assert not (tmp_path / "g4").exists() and not (tmp_path / "g5").exists()


def test_both_sample_commands_show_one_guidance_default():
    from shared.sampling import GUIDANCE

    for module, *sub in (("generation_torch.sample",), ("exporters.infer", "generate")):
        proc = run_module(module, *sub, "--help")
        assert proc.returncode == 0, proc.stderr
        assert f"(default {GUIDANCE};" in " ".join(proc.stdout.split()), proc.stdout


@pytest.mark.fault("export", "checkpoint of another format", "one-line error, nothing written")
def test_export_refuses_foreign_checkpoint(tmp_path):
    torch.save({"format": "something-else"}, tmp_path / "x.pt")
    proc = run_module("exporters.torch_onnx", "--checkpoint", tmp_path / "x.pt", "--out", tmp_path / "o")
    assert_one_line_error(proc, "x.pt")
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_texture_adds_the_residual_spectrum_by_both_paths_and_needs_one(exported, tmp_path):
    """--texture adds noise of the decoder's residual spectrum (high frequencies here) after decoding,
    the same by PyTorch and onnxruntime; a generator without a spectrum refuses it in one line."""
    from exporters.runtime import Generator, InputError
    from shared.errors import UserError
    from shared.sampling import SamplerSettings

    ckpt, folder = exported
    masks = blob_masks(3, seed=4)
    plain, textured = (torch_tiles(ckpt, masks, SamplerSettings("ddim", 3, texture=t), 1, 3) for t in (0, 1))
    added = np.fft.rfft2(textured - plain)
    assert np.abs(added[..., 100:, 50:]).mean() > 3 * np.abs(added[..., :8, :8]).mean()  # high-pass, as S
    ort = ort_tiles(folder, masks, SamplerSettings("ddim", 3, texture=1), 1, 2)
    assert np.abs(ort - textured).max() <= 1e-3
    bare = tiny_checkpoint(tmp_path / "bare.pt", texture=False)
    with pytest.raises(UserError, match="no texture spectrum"):
        torch_tiles(bare, masks, SamplerSettings("ddim", 2, texture=1), 0, 3)
    proc = run_module("exporters.torch_onnx", "--checkpoint", bare, "--out", tmp_path / "bare")
    assert proc.returncode == 0 and not (tmp_path / "bare" / "texture_spectrum.npy").exists()
    with pytest.raises(InputError, match="texture_spectrum.npy"):
        Generator(tmp_path / "bare", device="cpu").generate(masks, SamplerSettings("ddim", 2, texture=1))
    bare_tiles = Generator(tmp_path / "bare", device="cpu").generate(masks, SamplerSettings("ddim", 2))
    assert bare_tiles.shape == (3, 256, 256)
