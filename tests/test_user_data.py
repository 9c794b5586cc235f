"""A user's own data and platform (issue #15): label masks, pixel size, images-only stores, safe
checkpoints, logs of unattended runs, installation beyond Linux."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib

import numpy as np
import pytest
import tifffile

from .conftest import ROOT, assert_one_line_error, run_module


def test_pyproject_installs_beyond_linux_and_not_bench():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    deps = project["project"]["dependencies"]
    assert "onnxruntime-gpu>=1.19; sys_platform != 'darwin'" in deps
    assert "onnxruntime>=1.19; sys_platform == 'darwin'" in deps
    assert any(d.startswith("filelock") for d in deps)
    assert "bench" not in project["tool"]["setuptools"]["packages"]
    assert "fcntl" not in (ROOT / "shared" / "store.py").read_text()  # Windows has no fcntl


# -- safe checkpoints ---------------------------------------------------------------------------------
EVIL = """
import os, sys, torch
class Evil:
    def __reduce__(self):
        return (os.system, ("touch " + sys.argv[2],))
torch.save({"format": "emsynth-generator", "vae_weights": Evil()}, sys.argv[1])
"""


def test_checkpoint_that_would_run_code_is_refused(tmp_path):
    pytest.importorskip("torch")
    evil, ran = tmp_path / "generator.pt", tmp_path / "code_ran"
    subprocess.run([sys.executable, "-c", EVIL, str(evil), str(ran)], check=True)
    proc = run_module("generation_torch.sample", "--checkpoint", evil, "--masks-from", tmp_path / "m.tif",
                      "--n", "1", "--out", tmp_path / "syn")
    assert_one_line_error(proc, "refused", "system")
    assert not ran.exists() and not (tmp_path / "syn").exists()


# -- instance-label masks -----------------------------------------------------------------------------
def labelled_squares(dtype=np.uint16, z: int = 3, size: int = 64) -> np.ndarray:
    """10 squares per slice numbered 1..10 (ids 1..5 lie below half the maximum)."""
    labels = np.zeros((z, size, size), dtype)
    for k in range(10):
        y, x = 4 + 12 * (k // 5), 4 + 12 * (k % 5)
        labels[:, y:y + 8, x:x + 8] = k + 1
    return labels


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.uint8])
def test_instance_label_masks_keep_every_object(tmp_path, dtype, capsys):
    from shared.tiff_io import read_mask_stack

    labels = labelled_squares(dtype)
    tifffile.imwrite(tmp_path / "labels.tif", labels, photometric="minisblack")
    mask = read_mask_stack(tmp_path / "labels.tif")
    assert np.array_equal(mask, (labels > 0).astype(np.uint8))
    assert mask.sum() == 3 * 10 * 64  # every square of every slice
    assert capsys.readouterr().err == ""  # ids 1..10: not ambiguous


def test_label_masks_keep_every_object_through_the_store(tmp_path):
    from shared.store import TileStore

    labels = labelled_squares(np.uint16, size=256)
    tifffile.imwrite(tmp_path / "labels.tif", labels, photometric="minisblack")
    tifffile.imwrite(tmp_path / "images.tif", np.full(labels.shape, 128, np.uint8), photometric="minisblack")
    proc = run_module("shared.tiles", "build", "--images", tmp_path / "images.tif", "--masks",
                      tmp_path / "labels.tif", "--out", tmp_path / "store", "--val-fraction", "0.34")
    assert proc.returncode == 0, proc.stderr
    store = TileStore(tmp_path / "store")
    assert int(store.masks(store.indices()).sum()) == 3 * 10 * 64


@pytest.mark.parametrize("encoding", ["0/255", "antialiased", "antialiased-float"])
def test_binary_and_antialiased_masks_are_unchanged(tmp_path, encoding, capsys):
    from shared.tiff_io import read_mask_stack

    truth = np.zeros((2, 32, 32), np.uint8)
    truth[:, 8:24, 8:24] = 1
    data = truth * 255
    if encoding != "0/255":
        data[:, 7, 8:24], data[:, 24, 8:24], data[:, 8:24, 7] = 60, 40, 100  # soft edges: background
        data[:, 8:24, 24] = 200  # and a bright edge: foreground, as half the maximum says
    if encoding == "antialiased-float":
        data = data.astype(np.float32) / 255
    tifffile.imwrite(tmp_path / "m.tif", data)
    expected = (data.astype(np.float32) > 0.5 * float(data.max())).astype(np.uint8)
    assert np.array_equal(read_mask_stack(tmp_path / "m.tif"), expected)
    assert capsys.readouterr().err == ""


def test_an_ambiguous_mask_says_what_was_assumed(tmp_path, capsys):
    from shared.tiff_io import read_mask_stack

    labels = labelled_squares(np.uint8)
    labels[labels == 10] = 255  # full scale, yet most foreground below it: labels or a thin soft mask?
    tifffile.imwrite(tmp_path / "m.tif", labels, photometric="minisblack")
    assert read_mask_stack(tmp_path / "m.tif").sum() == 3 * 10 * 64
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "m.tif" in err[0] and "instance labels" in err[0]


# -- images-only stores, and a redirected generator run -------------------------------------------------
GEN_TINY = ["--preset", "none", "--optimizer", "adamw", "--vae-channels", "8,8,8", "--unet-channels", "8,16",
            "--time-dims", "16,32,32", "--heads", "2", "--vae-batch-size", "2", "--diffusion-batch-size", "4",
            "--steps-per-epoch", "1", "--warmup-steps", "1", "--precision", "fp32", "--steps", "3"]


@pytest.fixture(scope="module")
def stacks_5nm(tmp_path_factory):
    """A 5 nm phantom stack (256 x 512, 5 slices) and its masks, as a microscope would write them."""
    from shared.phantom import PhantomConfig, phantom_stack
    from shared.pixel_size import PixelSize
    from shared.tiff_io import write_stack

    root = tmp_path_factory.mktemp("nm5")
    images, masks = phantom_stack(5, seed=0, config=PhantomConfig(height=256, width=512))
    write_stack(root / "images.tif", images, PixelSize(5.0, 5.0, 5.0))
    write_stack(root / "masks.tif", masks * 255, PixelSize(5.0, 5.0, 5.0))
    return root


def test_images_only_store_trains_as_unlabelled_and_a_redirected_log_is_clean(stacks_5nm, tmp_path):
    pytest.importorskip("torch")
    import torch

    from shared.store import MANIFEST

    root = stacks_5nm
    unlabelled = run_module("shared.tiles", "build", "--images", root / "images.tif", "--out", tmp_path / "u")
    assert unlabelled.returncode == 0 and "images only" in unlabelled.stdout, unlabelled.stderr
    real = run_module("shared.tiles", "build", "--images", root / "images.tif", "--masks", root / "masks.tif",
                      "--val-fraction", "0.4", "--out", tmp_path / "real")
    assert real.returncode == 0, real.stderr
    manifest = json.loads((tmp_path / "u" / MANIFEST).read_text())
    assert manifest["masks"] is False and not list((tmp_path / "u").glob("*masks.tif"))
    log = tmp_path / "train.log"
    with open(log, "w") as fh:  # as `nohup ... > train.log 2>&1`: no terminal anywhere
        done = subprocess.run([sys.executable, "-m", "generation_torch.train", "--store", tmp_path / "real",
                               "--unlabelled-store", tmp_path / "u", "--out", tmp_path / "run",
                               *GEN_TINY], cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, timeout=600,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    text = log.read_text()
    assert done.returncode == 0, text
    assert "\r" not in text
    for stage in ("vae", "diffusion"):
        assert [line.split(" val ")[0] for line in text.splitlines() if line.startswith(f"{stage}: epoch")] \
            == [f"{stage}: epoch {k} step {k}" for k in (1, 2, 3)]
    assert "+ unlabelled" in text
    saved = torch.load(tmp_path / "run" / "generator.pt", weights_only=True)
    assert saved["data"]["pixel_size"] == {"x": 5.0, "y": 5.0, "z": 5.0, "unit": "nm"}
    assert saved["data"]["unlabelled"]["tiles"] > 0
    for name in ("vae_last.pt", "diffusion_last.pt", "latents.pt", "vae.pt"):  # all project checkpoints
        torch.load(tmp_path / "run" / name, weights_only=True)


@pytest.mark.parametrize("module", ["generation_torch.train", "segmentation_tf.fit"])
def test_trainers_needing_masks_refuse_an_images_only_store(stacks_5nm, tmp_path, module):
    proc = run_module("shared.tiles", "build", "--images", stacks_5nm / "images.tif", "--out", tmp_path / "u")
    assert proc.returncode == 0, proc.stderr
    proc = run_module(module, "--store", tmp_path / "u", "--out", tmp_path / "run")
    assert_one_line_error(proc, "images only", "--unlabelled-store")
    assert not any((tmp_path / "run" / name).exists() for name in ("generator.pt", "segmenter.keras"))


# -- pixel size through the segmenter, and TensorFlow's start-up lines ---------------------------------
SEG_TINY = ["--preset", "quick", "--base-width", "4", "--depth", "2", "--batch-size", "4", "--overlap", "8",
            "--precision", "float32", "--epochs", "1", "--steps-per-epoch", "2"]
TF_NOISE = ("cuInit", "absl::InitializeLog", "oneDNN", "cuda drivers", "cpu_feature_guard")


def run_quiet_env(module: str, *args) -> subprocess.CompletedProcess:
    """run_module without the test suite's TF_CPP_MIN_LOG_LEVEL: as a user types it."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env=env)


@pytest.mark.slow
def test_pixel_size_round_trips_through_the_segmenter_and_a_mismatch_warns(tmp_path):
    pytest.importorskip("tensorflow")
    pytest.importorskip("tf2onnx")
    from exporters.onnx_io import read_metadata
    from shared.phantom import PhantomConfig, phantom_stack
    from shared.pixel_size import PixelSize, from_metadata
    from shared.tiff_io import read_pixel_size, write_stack

    nm5, nm10 = PixelSize(5.0, 5.0, 5.0), PixelSize(10.0, 10.0, 10.0)
    images, masks = phantom_stack(6, seed=3, config=PhantomConfig(height=96, width=128))
    write_stack(tmp_path / "images.tif", images, nm5)
    write_stack(tmp_path / "masks.tif", masks * 255, nm5)
    write_stack(tmp_path / "images10.tif", images, nm10)
    proc = run_module("shared.tiles", "build", "--images", tmp_path / "images.tif", "--masks",
                      tmp_path / "masks.tif", "--out", tmp_path / "store", "--tile", "32")
    assert proc.returncode == 0 and "pixel size 5 nm" in proc.stdout, proc.stderr
    proc = run_quiet_env("segmentation_tf.fit", "--store", tmp_path / "store", "--out", tmp_path / "seg",
                         *SEG_TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not [n for n in TF_NOISE if n in proc.stderr], proc.stderr  # TensorFlow's start-up lines
    assert json.loads((tmp_path / "seg" / "segmenter.json").read_text())["pixel_size"] == nm5.to_json()
    proc = run_module("exporters.keras_onnx", "--model", tmp_path / "seg", "--out", tmp_path / "seg.onnx")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert from_metadata(read_metadata(tmp_path / "seg.onnx")) == nm5

    proc = run_quiet_env("segmentation_tf.predict", "--model", tmp_path / "seg", "--images",
                         tmp_path / "images.tif", "--out", tmp_path / "p5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr == ""  # same pixel size: no warning, and no TensorFlow start-up lines
    for suffix in ("probability", "mask"):
        assert read_pixel_size(tmp_path / "p5" / f"{suffix}.tif") == nm5
    proc = run_module("segmentation_tf.predict", "--model", tmp_path / "seg", "--images",
                      tmp_path / "images10.tif", "--out", tmp_path / "p10")
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = [line for line in proc.stderr.splitlines() if "pixel size" in line]
    assert len(warnings) == 1 and "images10.tif" in warnings[0] and "10 x 10 x 10 nm" in warnings[0]
    assert read_pixel_size(tmp_path / "p10" / "mask.tif") == nm10
    proc = run_module("segmentation_tf.evaluate", "--model", tmp_path / "seg", "--images",
                      tmp_path / "images10.tif", "--masks", tmp_path / "masks.tif")
    assert proc.returncode == 0 and sum("pixel size" in line for line in proc.stderr.splitlines()) == 1


def test_pixel_size_mismatch_rule():
    from shared.pixel_size import PixelSize, mismatch

    model = PixelSize(5.0, 5.0)
    assert mismatch(model, PixelSize(6.0, 6.0)) is None  # within ~25%
    assert "smaller" in mismatch(model, PixelSize(10.0, 10.0))
    assert "larger" in mismatch(model, PixelSize(2.5, 2.5))
    assert mismatch(None, PixelSize(10.0, 10.0)) is None and mismatch(model, None) is None


@pytest.mark.parametrize("how", ["imagej-micron", "ome-um", "ome-nm", "tags-cm", "tags-72dpi", "none"])
def test_pixel_size_is_read_from_the_metadata_microscopes_write(tmp_path, how):
    from shared.pixel_size import PixelSize
    from shared.tiff_io import read_pixel_size

    data, path = np.zeros((3, 8, 8), np.uint8), tmp_path / "s.tif"
    expected = PixelSize(5.0, 5.0, None)
    if how == "imagej-micron":  # Fiji: pixels per micron, slice spacing in microns
        tifffile.imwrite(path, data, imagej=True, resolution=(200, 200), metadata={"unit": "micron",
                                                                                     "spacing": 0.01})
        expected = PixelSize(5.0, 5.0, 10.0)
    elif how.startswith("ome"):
        unit = {"ome-um": {}, "ome-nm": {"PhysicalSizeXUnit": "nm", "PhysicalSizeYUnit": "nm"}}[how]
        size = 0.005 if how == "ome-um" else 5.0
        tifffile.imwrite(path, data, ome=True, metadata={"axes": "ZYX", "PhysicalSizeX": size,
                                                         "PhysicalSizeY": size, **unit})
    elif how == "tags-cm":
        tifffile.imwrite(path, data, photometric="minisblack", resolution=(2e6, 2e6),
                         resolutionunit="CENTIMETER")
    elif how == "tags-72dpi":  # an image editor's screen resolution is no calibration
        tifffile.imwrite(path, data, photometric="minisblack", resolution=(72, 72), resolutionunit="INCH")
        expected = None
    else:
        tifffile.imwrite(path, data, photometric="minisblack")
        expected = None
    assert read_pixel_size(path) == expected
