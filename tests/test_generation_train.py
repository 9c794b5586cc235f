"""generation_torch end to end with tiny models: train (both stages), TensorBoard tags, exact resume,
NaN guard, torchrun DDP on gloo, sampling determinism and provenance, evaluate, bad input."""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from .conftest import ROOT, assert_one_line_error

torch = pytest.importorskip("torch")


def run_module(module: str, *args) -> SimpleNamespace:
    """Run a CLI's main in this process (a subprocess per call costs seconds of imports), returning
    what conftest.run_module would: returncode, stdout, stderr."""
    import contextlib
    import importlib
    import io

    from shared.errors import run_cli

    main = importlib.import_module(module).main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = run_cli(main, [str(a) for a in args])
        except SystemExit as exc:  # argparse errors exit directly
            code = exc.code
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())

TINY = ["--preset", "none", "--optimizer", "adamw", "--vae-channels", "8,8,8", "--unet-channels", "8,16",
        "--time-dims", "16,32,32", "--heads", "2", "--vae-batch-size", "2", "--diffusion-batch-size", "4",
        "--steps-per-epoch", "1", "--no-progress", "--warmup-steps", "1", "--precision", "fp32"]


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    from shared.phantom import PhantomConfig, write_phantom
    from shared.tiles import BuildConfig, build_store

    root = tmp_path_factory.mktemp("gen_data")
    images, masks = write_phantom(root / "phantom", 5, seed=0, config=PhantomConfig(height=256, width=512))
    build_store(images, masks, root / "store", BuildConfig(val_fraction=0.4))
    return root / "store"


@pytest.fixture(scope="module")
def trained(tiny_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen_run") / "run"
    proc = run_module("generation_torch.train", "--store", tiny_store, "--out", out, "--steps", "3", *TINY)
    assert proc.returncode == 0, proc.stderr
    return out


def test_train_writes_products_and_tensorboard(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from generation_torch.pipeline import load_generator

    for name in ("vae.pt", "latents.pt", "generator.pt", "vae_best.pt", "diffusion_last.pt"):
        assert (trained / name).is_file(), name
    gen = load_generator(trained / "generator.pt")
    assert gen.latent_scale > 0 and gen.schedule.timesteps == 1000
    # the decoder's residual spectrum, measured on the training tiles: positive, and its mean is the
    # reconstruction error's variance (a barely trained VAE: far from 0)
    assert gen.texture_spectrum.shape == (256, 129) and gen.texture_spectrum.min() >= 0
    assert 0.01 < gen.texture_spectrum.mean() < 2.0
    acc = EventAccumulator(str(trained / "tb"), size_guidance={"images": 0}).Reload()
    scalars, images = set(acc.Tags()["scalars"]), set(acc.Tags()["images"])
    for tag in ("vae/train_loss", "vae/val_loss", "vae/lr", "vae/train_mse", "vae/samples_per_s",
                "diffusion/train_loss", "diffusion/val_loss", "diffusion/lr"):
        assert tag in scalars, (tag, scalars)
    assert {"vae/reconstructions", "diffusion/samples_beside_masks"} <= images
    assert len(acc.Scalars("vae/val_loss")) == 3
    # the denoiser's validation loss per noise band beside its mean (which lies among them), also kept
    # in the best checkpoint
    bands = {tag for tag in scalars if tag.startswith("diffusion/val_loss_t")}
    assert bands and bands <= {f"diffusion/val_loss_t{b}" for b in ("0-299", "300-699", "700-999")}, bands
    last = [acc.Scalars(tag)[-1].value for tag in bands]
    assert min(last) - 1e-6 <= acc.Scalars("diffusion/val_loss")[-1].value <= max(last) + 1e-6
    best = _state(trained / "diffusion_best.pt")
    assert {f"diffusion/{k}" for k in best["val_logs"]} <= bands and best["val_logs"]


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.mark.parametrize("stage", ["vae", "diffusion"])
def test_resume_is_exact(trained, tiny_store, tmp_path, stage):
    """4 steps straight == 2 steps, interrupt, resume 2 steps: identical weights, EMA, optimizer, RNG."""
    runs = [tmp_path / "straight", tmp_path / "resumed"]
    for out in runs:
        out.mkdir()
        for name in ("vae.pt", "latents.pt"):  # the diffusion stage starts from the trained VAE
            shutil.copy(trained / name, out / name)
    common = ["--store", tiny_store, "--stage", stage, "--steps", "4", *TINY, "--visual-every", "0"]
    p1 = run_module("generation_torch.train", "--out", runs[0], *common)
    p2 = run_module("generation_torch.train", "--out", runs[1], *common, "--stop-after", "2")
    assert p1.returncode == 0 and p2.returncode == 0, p1.stderr + p2.stderr
    assert _state(runs[1] / f"{stage}_last.pt")["loop"]["step"] == 2
    other = ["--beta", "0.5"] if stage == "vae" else ["--cond-dropout", "0.5"]
    refused = run_module("generation_torch.train", "--out", runs[1], *common, *other, "--resume")
    assert_one_line_error(refused, f"{stage}_last.pt", "trained under other settings",
                          "(beta)" if stage == "vae" else "(diffusion.cond_dropout)")
    p3 = run_module("generation_torch.train", "--out", runs[1], *common, "--resume")
    assert p3.returncode == 0, p3.stderr
    a, b = _state(runs[0] / f"{stage}_last.pt"), _state(runs[1] / f"{stage}_last.pt")
    clock = "minutes"  # the training clock is wall time: the one field a resume cannot repeat
    assert {k: v for k, v in a["loop"].items() if k != clock} == \
        {k: v for k, v in b["loop"].items() if k != clock} and a["loop"]["step"] == 4
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    if stage == "diffusion":
        for key in a["ema"]["model"]:
            assert torch.equal(a["ema"]["model"][key], b["ema"]["model"][key]), key
    assert a["scheduler"] == b["scheduler"] and torch.equal(a["rng"], b["rng"])


def test_nan_loss_stops_with_the_last_good_checkpoint(tiny_store, tmp_path, monkeypatch):
    from generation_torch import tasks

    real_loss = tasks.vae_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss, mse = real_loss(*args, **kwargs)
        return (loss * float("nan"), mse) if calls["n"] > 2 else (loss, mse)

    monkeypatch.setattr(tasks, "vae_loss", poisoned)
    out = tmp_path / "run"
    proc = run_module("generation_torch.train", "--store", tiny_store, "--out", out, "--stage", "vae",
                      "--steps", "5", *TINY, "--visual-every", "0")
    assert_one_line_error(proc, "loss became nan at step 3", "last good checkpoint")
    saved = _state(out / "vae_last.pt")
    assert saved["loop"]["step"] == 2 and all(torch.isfinite(v).all() for v in saved["model"].values())


def free_port() -> int:
    """A port nobody listens on now, so parallel test runs on one machine do not collide."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_torchrun_two_processes_on_gloo(tiny_store, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(free_port()), "-m", "generation_torch.train", "--store", str(tiny_store),
           "--out", str(out), "--steps", "2", "--accumulate", "2", "--device", "cpu", *TINY]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout and (out / "generator.pt").is_file()
    saved = _state(out / "diffusion_last.pt")
    assert saved["loop"]["step"] == 2


def test_ranks_agree_on_a_flag_and_average_a_cpu_loss(tmp_path):
    """Two gloo processes: a flag true on one rank only is true on both (a time box that one rank's
    clock crossed first ends the loop on every rank at the same step), and a loss on the CPU averages."""
    script = tmp_path / "agree.py"
    script.write_text(
        "import torch\n"
        "from generation_torch.distributed import any_across, mean_across, setup, teardown\n"
        "d = setup('cpu')\n"
        "flag = any_across(d, d.rank == 0)\n"
        "mean = float(mean_across(d, torch.tensor(float(d.rank + 1))))\n"
        "print(f'rank {d.rank} flag {flag} mean {mean}', flush=True)\n"
        "teardown(d)\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(free_port()), str(script)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        assert f"rank {rank} flag True mean 1.5" in proc.stdout, proc.stdout


def test_sample_is_deterministic_with_provenance(trained, tiny_store, tmp_path):
    from shared.store import TileStore

    args = ["--checkpoint", trained / "generator.pt", "--masks-from", tiny_store, "--n", "3", "--steps", "4",
            "--seed", "5", "--no-progress", "--precision", "fp32"]
    for name, batch in (("a", "2"), ("b", "2"), ("c", "3")):
        proc = run_module("generation_torch.sample", *args, "--out", tmp_path / name, "--batch-size", batch)
        assert proc.returncode == 0, proc.stderr
    a, b, c = (TileStore(tmp_path / n) for n in "abc")
    np.testing.assert_array_equal(a.raw_images(a.indices()), b.raw_images(b.indices()))
    # per-tile seeds: another batch size gives the same tiles up to convolution round-off
    diff = a.raw_images(a.indices()).astype(int) - c.raw_images(c.indices()).astype(int)
    assert np.abs(diff).max() <= 3 and np.mean(diff != 0) < 0.01
    np.testing.assert_array_equal(a.masks(a.indices()), b.masks(b.indices()))
    rec = a.records[0]
    assert rec["source"] == "synthetic" and rec["sampler"] == "ddim" and rec["steps"] == 4
    assert rec["seed"] == 5 and rec["guidance"] == 2.0 and len(rec["checkpoint_sha256"]) == 16
    assert rec["guidance_rescale"] == 0.0
    assert a.manifest.kind == "synthetic"
    proc = run_module("generation_torch.sample", *args, "--seed", "6", "--out", tmp_path / "d")
    d = TileStore(tmp_path / "d")
    assert proc.returncode == 0 and not np.array_equal(a.raw_images(a.indices()), d.raw_images(d.indices()))


def test_sample_from_labelled_tiles_records_its_strength(trained, tiny_store, tmp_path):
    """--strength below 1: tiles start from the masks' own tiles (same varied masks as a walk from
    noise with the same seed), the records say so; composed layouts, mask stacks and evaluate refuse."""
    import tifffile

    from shared.store import TileStore

    args = ["--checkpoint", trained / "generator.pt", "--masks-from", tiny_store, "--n", "3", "--steps", "4",
            "--seed", "2", "--no-progress", "--precision", "fp32"]
    for name, extra in (("sd", ["--strength", "0.3"]), ("noise", [])):
        proc = run_module("generation_torch.sample", *args, *extra, "--out", tmp_path / name)
        assert proc.returncode == 0, proc.stderr
    sd, noise = TileStore(tmp_path / "sd"), TileStore(tmp_path / "noise")
    np.testing.assert_array_equal(sd.masks(sd.indices()), noise.masks(noise.indices()))
    assert not np.array_equal(sd.raw_images(sd.indices()), noise.raw_images(noise.indices()))
    assert sd.records[0]["strength"] == 0.3 and "strength" not in noise.records[0]
    assert sd.records[0]["mask_layout"] == "labelled"
    proc = run_module("generation_torch.sample", *args, "--strength", "0.3", "--mask-source", "composed",
                      "--out", tmp_path / "c")
    assert_one_line_error(proc, "--mask-source labelled")
    tifffile.imwrite(tmp_path / "m.tif", np.zeros((2, 256, 256), np.uint8))
    proc = run_module("generation_torch.sample", *args[:2], "--masks-from", tmp_path / "m.tif", "--n", "1",
                      "--strength", "0.3", "--out", tmp_path / "t")
    assert_one_line_error(proc, "m.tif", "needs a tile store")
    proc = run_module("generation_torch.evaluate", "--checkpoint", trained / "generator.pt", "--store",
                      tiny_store, "--strength", "0.5")
    assert_one_line_error(proc, "--strength below 1")
    assert not (tmp_path / "c").exists() and not (tmp_path / "t").exists()


def test_sample_composed_layouts_record_how_each_mask_was_made(trained, tiny_store, tmp_path):
    from scipy import ndimage

    from shared.store import TileStore

    proc = run_module("generation_torch.sample", "--checkpoint", trained / "generator.pt", "--masks-from",
                      tiny_store, "--n", "4", "--steps", "2", "--no-progress", "--mask-source", "composed",
                      "--out", tmp_path / "c")
    assert proc.returncode == 0, proc.stderr
    assert f"in {tiny_store.name} /" in proc.stdout and "composed" in proc.stdout  # statistics side by side
    store = TileStore(tmp_path / "c")
    for rec, mask in zip(store.records, store.masks(store.indices()), strict=True):
        assert rec["mask_layout"] == "composed"
        assert ndimage.label(mask, structure=np.ones((3, 3)))[1] >= len(rec["objects"])
    labelled = run_module("generation_torch.sample", "--checkpoint", trained / "generator.pt", "--masks-from",
                          tiny_store, "--n", "2", "--steps", "2", "--no-progress", "--out", tmp_path / "l")
    assert labelled.returncode == 0 and TileStore(tmp_path / "l").records[0]["mask_layout"] == "labelled"


def test_sample_defaults_follow_train_and_real_stores_are_refused(trained, tiny_store, tmp_path):
    from shared.store import TileStore

    proc = run_module("generation_torch.sample", "--checkpoint", trained / "generator.pt", "--n", "2",
                      "--steps", "2", "--no-progress", "--out", tmp_path / "d")
    assert proc.returncode == 0, proc.stderr
    # no --masks-from: the masks come from the labelled store the generator learned from
    assert TileStore(tmp_path / "d").records[0]["mask_source"] == str(Path(tiny_store).resolve())
    before = len(TileStore(tiny_store))
    proc = run_module("generation_torch.sample", "--checkpoint", trained / "generator.pt", "--n", "2",
                      "--steps", "2", "--no-progress", "--out", tiny_store)
    assert_one_line_error(proc, "real tile store", "another --out")
    assert len(TileStore(tiny_store)) == before


def test_evaluate_prints_figures_beside_the_floor(trained, tiny_store, tmp_path):
    proc = run_module("generation_torch.evaluate", "--checkpoint", trained / "generator.pt",
                      "--store", tiny_store, "--steps", "3", "--sampler", "dpmpp2m",
                      "--json", tmp_path / "e.json", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "MSE" in proc.stdout and "PSNR" in proc.stdout and "real floor" in proc.stdout
    import json
    figures = json.loads((tmp_path / "e.json").read_text())
    assert figures["recon_mse"] > 0 and figures["floor_hist_w1"] >= 0 and figures["generated"] == 4
    assert figures["vae_spectrum_dist"] > 0 and "VAE recon" in proc.stdout
    assert 0.0 <= figures["c2st_accuracy"] <= 1.0 and "two-sample accuracy" in proc.stdout
    vae_only = run_module("generation_torch.evaluate", "--checkpoint", trained / "vae.pt",
                          "--store", tiny_store, "--vae-only")
    assert vae_only.returncode == 0 and f"MSE {figures['recon_mse']:.5f}" in vae_only.stdout


def test_bad_input_is_one_line_exit_2(trained, tiny_store, tmp_path):
    import tifffile

    from shared.store import TileStore

    proc = run_module("generation_torch.train", "--out", tmp_path / "r", "--steps", "0")
    assert_one_line_error(proc, "--steps")
    proc = run_module("generation_torch.sample", "--checkpoint", trained / "generator.pt", "--masks-from",
                      tiny_store, "--n", "1", "--out", tmp_path / "s", "--steps", "0")
    assert_one_line_error(proc, "--steps")
    proc = run_module("generation_torch.sample", "--checkpoint", trained / "generator.pt", "--masks-from",
                      tiny_store, "--n", "1", "--out", tmp_path / "s", "--guidance-rescale", "1.5")
    assert_one_line_error(proc, "--guidance-rescale", "[0, 1]")
    empty = TileStore.create(tmp_path / "empty")
    proc = run_module("generation_torch.train", "--store", empty.path, "--out", tmp_path / "r2", *TINY)
    assert_one_line_error(proc, "no 'train' tiles")
    proc = run_module("generation_torch.sample", "--checkpoint", trained / "generator.pt", "--masks-from",
                      empty.path, "--n", "1", "--out", tmp_path / "s2")
    assert_one_line_error(proc, "empty")
    tifffile.imwrite(tmp_path / "m.tif", np.zeros((2, 128, 96), np.uint8))
    proc = run_module("generation_torch.sample", "--checkpoint", trained / "generator.pt", "--masks-from",
                      tmp_path / "m.tif", "--n", "1", "--out", tmp_path / "s3")
    assert_one_line_error(proc, "96x128", "256x256")
    shutil.copytree(trained, tmp_path / "copy", ignore=shutil.ignore_patterns("tb"))
    proc = run_module("generation_torch.train", "--store", tiny_store, "--out", tmp_path / "copy", "--resume",
                      "--stage", "vae", *TINY, "--vae-channels", "8,16,16", "--steps", "5")
    assert_one_line_error(proc, "vae_last.pt", "trained under other settings (vae_config.channels)")
    proc = run_module("generation_torch.sample", "--checkpoint", trained / "vae.pt", "--masks-from",
                      tiny_store, "--n", "1", "--out", tmp_path / "s4")
    assert_one_line_error(proc, "emsynth-generator")


def test_init_denoiser_starts_from_another_run_with_the_same_vae(trained, tiny_store, tmp_path):
    """--init-denoiser: the new run's denoiser starts from the given generator's (here: unchanged at a
    vanishing learning rate, an unconditional --cond-dropout 1 run); another VAE or another denoiser
    shape is a one-line error."""
    from generation_torch.pipeline import load_generator

    run = tmp_path / "init"
    run.mkdir()
    shutil.copyfile(trained / "vae.pt", run / "vae.pt")
    proc = run_module("generation_torch.train", "--store", tiny_store, "--out", run, "--stage", "diffusion",
                      "--init-denoiser", trained / "generator.pt", "--steps", "1", "--cond-dropout", "1",
                      *TINY, "--diffusion-lr", "1e-12")
    assert proc.returncode == 0, proc.stderr
    assert "starts from the denoiser of" in proc.stdout
    before, after = load_generator(trained / "generator.pt").unet, load_generator(run / "generator.pt").unet
    for (name, a), b in zip(before.state_dict().items(), after.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=0, msg=name)
    other = tmp_path / "other_vae"
    assert run_module("generation_torch.train", "--store", tiny_store, "--out", other, "--stage", "vae",
                      "--steps", "1", "--seed", "5", *TINY).returncode == 0
    proc = run_module("generation_torch.train", "--store", tiny_store, "--out", other, "--stage", "diffusion",
                      "--init-denoiser", trained / "generator.pt", "--steps", "1", *TINY)
    assert_one_line_error(proc, "another VAE")
    shape = tmp_path / "shape"
    shape.mkdir()
    shutil.copyfile(trained / "vae.pt", shape / "vae.pt")
    proc = run_module("generation_torch.train", "--store", tiny_store, "--out", shape, "--stage", "diffusion",
                      "--init-denoiser", shape / "missing.pt", *TINY)
    assert_one_line_error(proc, "no such generator checkpoint")
    proc = run_module("generation_torch.train", "--store", tiny_store, "--out", shape, "--stage", "diffusion",
                      "--init-denoiser", trained / "generator.pt", "--steps", "1", *TINY,
                      "--unet-channels", "8,8")
    assert_one_line_error(proc, "shaped")


class _Line:
    """The smallest Task: a linear model fitting y = 2x (the loop's clock is what is under test)."""
    name, n_train, use_ema = "vae", 8, False
    fields_added: dict = {}

    def __init__(self):
        self.model = torch.nn.Linear(1, 1)

    def loss(self, model, g, batch_size):
        x = torch.randn(batch_size, 1, generator=g)
        return (model(x) - 2 * x).square().mean(), {}

    def validate(self, model):
        return float((model(torch.ones(1, 1)) - 2).square()), {}

    def visuals(self, model, writer, step):
        pass

    def describe(self):
        return {"task": "line"}


def test_a_time_box_counts_the_minutes_of_killed_runs(tmp_path):
    """A stage killed after 5 of its 5 boxed minutes (saved unfinished) ends after its next step when
    resumed under the same box, instead of training another full box; a stage the box ended trains on
    under a larger box or none, and stays finished under the same one."""
    from dataclasses import replace

    from generation_torch.config import StageConfig
    from generation_torch.train_loop import LoopContext, fit

    cfg = StageConfig(steps=40, batch_size=4, steps_per_epoch=2, patience=100)
    ctx = LoopContext(tmp_path, progress=False)
    assert fit(_Line(), cfg, LoopContext(tmp_path, progress=False, stop_after=2)).step == 2
    last = tmp_path / "vae_last.pt"
    saved = _state(last)
    saved["loop"]["minutes"] = 5.0  # as if the killed invocation had trained 5 minutes
    torch.save(saved, last)
    boxed = fit(_Line(), cfg, replace(ctx, resume=True, max_minutes=5.0))
    assert boxed.finished and boxed.step == 3 and boxed.minutes > 5.0  # one more step, not 38
    again = fit(_Line(), cfg, replace(ctx, resume=True, max_minutes=5.0))
    assert again.finished and again.step == 3 and again.trained == 0
    on = fit(_Line(), cfg, replace(ctx, resume=True, max_minutes=60.0))
    assert on.finished and on.step == 40  # the larger box trains on to the stage's steps
    assert _state(last)["loop"]["minutes"] >= on.minutes > 5.0
