"""Interruptions and numerical faults of the trainers, through their real command lines:
kill -9 mid-run then resume; a NaN loss in Keras; two samplers appending to one store; NaN tiles."""

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from shared.errors import UserError
from shared.store import TileStore

from .conftest import ROOT, run_module

torch = pytest.importorskip("torch")

GEN_TINY = ["--preset", "none", "--optimizer", "adamw", "--vae-channels", "8,8,8", "--unet-channels", "8,16",
            "--time-dims", "16,32,32", "--heads", "2", "--vae-batch-size", "2", "--diffusion-batch-size", "4",
            "--steps-per-epoch", "1", "--no-progress", "--warmup-steps", "1", "--precision", "fp32",
            "--patience", "1000"]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from shared.phantom import PhantomConfig, write_phantom
    from shared.tiles import BuildConfig, build_store

    root = tmp_path_factory.mktemp("interrupt")
    images, masks = write_phantom(root / "phantom", 5, seed=0, config=PhantomConfig(height=256, width=512))
    build_store(images, masks, root / "store", BuildConfig(val_fraction=0.4))
    return root / "store"


def step_of(path):
    return torch.load(path, map_location="cpu", weights_only=False)["loop"]["step"]


@pytest.mark.fault("interruption", "generator training killed with SIGKILL mid-run",
                   "--resume continues from the last checkpoint to the same final step")
def test_generator_kill_9_then_resume(store, tmp_path):
    out = tmp_path / "gen"
    args = [sys.executable, "-m", "generation_torch.train", "--store", str(store), "--out", str(out),
            "--stage", "vae", "--vae-steps", "60", *GEN_TINY]
    proc = subprocess.Popen(args, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = out / "vae_last.pt"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if last.exists() and step_of(last) >= 3:
                    break
            except Exception:  # noqa: BLE001 - only complete files are ever renamed into place
                pytest.fail("a half-written checkpoint was visible")
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = step_of(last)
    assert 3 <= killed_at < 60, killed_at
    done = subprocess.run([*args, "--resume"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert step_of(last) == 60


@pytest.mark.fault("numerical", "segmenter loss becomes NaN (exploding learning rate)",
                   "TerminateOnNaN stops training with a clear message; no NaN model saved")
def test_keras_nan_loss_stops_cleanly(tmp_path):
    pytest.importorskip("tensorflow")
    from shared.phantom import PhantomConfig, phantom_stack
    from shared.tiff_io import write_stack
    from shared.tiles import BuildConfig, build_store

    images, masks = phantom_stack(5, seed=3, config=PhantomConfig(height=96, width=128))
    write_stack(tmp_path / "images.tif", images)
    write_stack(tmp_path / "masks.tif", masks)
    build_store(tmp_path / "images.tif", tmp_path / "masks.tif", tmp_path / "store",
                BuildConfig(tile=32, val_fraction=0.2))
    proc = run_module("segmentation_tf.fit", "--store", tmp_path / "store", "--out", tmp_path / "seg",
                      "--preset", "quick", "--base-width", "4", "--depth", "2", "--batch-size", "4",
                      "--precision", "float32", "--epochs", "3", "--lr", "1e30", "--verbose", "0", env=ENV)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "nan" in proc.stderr.lower()
    assert not (tmp_path / "seg" / "segmenter.json").exists()


@pytest.mark.fault("concurrency", "two generation_torch.sample runs append to one store at once",
                   "both succeed with distinct records")
def test_two_samplers_append_to_one_store(store, tmp_path):
    from .test_exporters_generator import tiny_checkpoint

    ckpt = tiny_checkpoint(tmp_path / "generator.pt")
    target = tmp_path / "synthetic"

    def sample(seed):
        return run_module("generation_torch.sample", "--checkpoint", ckpt, "--masks-from", store, "--n", "3",
                          "--out", target, "--seed", seed, "--steps", "2", "--batch-size", "3",
                          "--no-progress", env=ENV)

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(sample, ["1", "2"]))
    for r in results:
        assert r.returncode == 0, r.stderr[-2000:]
    syn = TileStore(target)
    assert len(syn) == 6 and syn.manifest.kind == "synthetic"
    assert sorted(r["seed"] for r in syn.records) == [1, 1, 1, 2, 2, 2]
    assert len({r["tile_seed"] for r in syn.records}) == 6  # distinct records
    assert sorted((r["chunk"], r["index"]) for r in syn.records) == [(c, i) for c in (0, 1) for i in range(3)]


@pytest.mark.fault("ingest", "NaN/Inf pixels in tiles appended to a store", "refused, store unchanged")
def test_store_refuses_non_finite_tiles(tmp_path):
    s = TileStore.create(tmp_path / "s", tile_size=8)
    bad = np.full((1, 8, 8), 0.5, np.float32)
    bad[0, 2, 2] = np.nan
    with pytest.raises(UserError, match="tile 0 contains NaN or Inf"):
        s.append(bad, np.zeros((1, 8, 8), np.uint8), [{"split": "train"}])
    assert len(TileStore(tmp_path / "s")) == 0
