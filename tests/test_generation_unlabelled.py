"""generation_torch.train --unlabelled-store (images plentiful, labels scarce): null-condition rows draw
from unlabelled latents, latents.pt is reused only for the data it encodes, the pool workflow (VAE
trained elsewhere, copied in) and --stage all, bad input."""

import shutil

import numpy as np
import pytest

from .conftest import assert_one_line_error
from .test_generation_train import TINY, run_module

torch = pytest.importorskip("torch")


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """A small labelled store and a bigger pool (all images, with masks that must be ignored)."""
    from shared.phantom import PhantomConfig, write_phantom
    from shared.tiles import BuildConfig, build_store

    root = tmp_path_factory.mktemp("unl_data")
    paths = {}
    for name, slices, seed in (("labelled", 3, 0), ("pool", 5, 1)):
        images, masks = write_phantom(root / f"phantom_{name}", slices, seed=seed,
                                      config=PhantomConfig(height=256, width=512))
        build_store(images, masks, root / name, BuildConfig(val_fraction=0.4))
        paths[name] = root / name
    return paths


@pytest.fixture(scope="module")
def pool_vae(stores, tmp_path_factory):
    """Run folder A: the VAE trained on the pool alone (--stage vae)."""
    out = tmp_path_factory.mktemp("unl_runs") / "A"
    proc = run_module("generation_torch.train", "--store", stores["pool"], "--stage", "vae", "--out", out,
                      "--steps", "1", *TINY, "--visual-every", "0")
    assert proc.returncode == 0, proc.stderr
    return out


def _train_tiles(store) -> int:
    from shared.store import TileStore

    return len(TileStore(store).indices("train"))


def _task(cond_dropout: float, unlabelled: bool):
    from generation_torch.config import DiffusionConfig, UNetConfig, VAEConfig
    from generation_torch.data import LatentCache
    from generation_torch.tasks import DiffusionTask
    from generation_torch.unet import UNet
    from generation_torch.vae import VAE
    from shared import diffusion

    def cache(value: float, rows: int, cond: float) -> LatentCache:
        mean = torch.full((rows, 4, 4, 4), value)
        return LatentCache(mean, torch.zeros_like(mean), torch.full((rows, 2, 4, 4), cond))

    unet = UNet(UNetConfig(channels=(8, 16), time_dims=(16, 32, 32), heads=2))
    return DiffusionTask(unet, cache(0.0, 5, 1.0), cache(0.0, 2, 1.0), diffusion.Schedule.make("linear"),
                         DiffusionConfig(cond_dropout=cond_dropout), 1.0, VAE(VAEConfig(channels=(8, 8, 8))),
                         torch.device("cpu"), unlabelled=cache(1.0, 20, 0.0) if unlabelled else None)


@pytest.mark.parametrize("unlabelled", [True, False])
def test_null_condition_rows_draw_from_unlabelled_latents(unlabelled):
    g = torch.Generator().manual_seed(0)
    z0, cond = _task(1.0, unlabelled).batch(g, 64)  # every row dropped: labelled zeros or unlabelled ones
    assert (cond == 0).all()
    assert (z0 == 1).all(dim=(1, 2, 3)).any() == unlabelled
    assert ((z0 == 0) | (z0 == 1)).all()
    z0, cond = _task(0.0, unlabelled).batch(g, 64)  # nothing dropped: labelled latents and masks only
    assert (z0 == 0).all() and (cond == 1).all()
    task = _task(0.5, unlabelled)
    assert torch.isfinite(task.loss(task.model, g, 4)[0])


def test_latents_of_another_store_are_not_reused(stores, pool_vae, tmp_path):
    """The VAE (and latents.pt) came from the pool; a diffusion run on the labelled store must encode
    the labelled store, not train the conditional denoiser on the pool's masks."""
    run = tmp_path / "L"
    run.mkdir()
    for name in ("vae.pt", "latents.pt"):
        shutil.copy(pool_vae / name, run / name)
    assert len(_load(run / "latents.pt")["mean"]) == 8 * _train_tiles(stores["pool"])
    proc = run_module("generation_torch.train", "--store", stores["labelled"], "--stage", "diffusion",
                      "--out", run, "--steps", "1", *TINY, "--visual-every", "0")
    assert proc.returncode == 0, proc.stderr
    saved = _load(run / "latents.pt")
    assert len(saved["mean"]) == 8 * _train_tiles(stores["labelled"])
    assert saved["data"]["labelled"]["path"] == str(stores["labelled"].resolve())
    from generation_torch.stages import _load_cache, data_identity  # reused for exactly this data only
    from shared.store import TileStore

    labelled = TileStore(stores["labelled"])
    assert _load_cache(run / "latents.pt", run / "vae.pt", data_identity(labelled, None)) is not None
    pool = TileStore(stores["pool"])
    assert _load_cache(run / "latents.pt", run / "vae.pt", data_identity(labelled, pool)) is None


def _check_both_caches(run, stores, proc) -> None:
    assert proc.returncode == 0, proc.stderr
    assert "unlabelled" in proc.stdout and str(stores["pool"]) in proc.stdout
    saved = _load(run / "latents.pt")
    assert len(saved["mean"]) == 8 * _train_tiles(stores["labelled"])
    extra = saved["unlabelled"]
    assert len(extra["mean"]) == 8 * _train_tiles(stores["pool"]) and not extra["cond"].any()
    data = _load(run / "generator.pt")["data"]
    assert data["unlabelled"]["path"] == str(stores["pool"].resolve())
    assert data["unlabelled"]["tiles"] == _train_tiles(stores["pool"])


def test_pool_vae_then_labelled_diffusion_with_unlabelled_store(stores, pool_vae, tmp_path):
    run = tmp_path / "B"
    run.mkdir()
    shutil.copy(pool_vae / "vae.pt", run / "vae.pt")  # latents.pt missing: both caches encoded now
    proc = run_module("generation_torch.train", "--store", stores["labelled"], "--unlabelled-store",
                      stores["pool"], "--stage", "diffusion", "--out", run, "--steps", "1", *TINY,
                      "--visual-every", "0")
    _check_both_caches(run, stores, proc)


def test_stage_all_with_unlabelled_store(stores, tmp_path):
    run = tmp_path / "C"
    proc = run_module("generation_torch.train", "--store", stores["labelled"], "--unlabelled-store",
                      stores["pool"], "--out", run, "--steps", "1", *TINY, "--visual-every", "0")
    _check_both_caches(run, stores, proc)


def test_bad_unlabelled_store_is_one_line_exit_2(stores, tmp_path):
    from shared.store import TileStore

    args = ["--store", stores["labelled"], "--out", tmp_path / "r", "--steps", "1", *TINY]
    missing = tmp_path / "nowhere"
    proc = run_module("generation_torch.train", *args, "--unlabelled-store", missing)
    assert_one_line_error(proc, "--unlabelled-store", str(missing), "no such tile store")
    (tmp_path / "plain").mkdir()
    proc = run_module("generation_torch.train", *args, "--unlabelled-store", tmp_path / "plain")
    assert_one_line_error(proc, "--unlabelled-store", str(tmp_path / "plain"), "not a tile store")
    small = TileStore.create(tmp_path / "small", tile_size=128)
    small.append(np.zeros((1, 128, 128), np.uint8), np.zeros((1, 128, 128), np.uint8), [{"split": "train"}])
    proc = run_module("generation_torch.train", *args, "--unlabelled-store", small.path)
    assert_one_line_error(proc, "--unlabelled-store", "128px", "256px")
    assert not (tmp_path / "r" / "vae.pt").exists()
