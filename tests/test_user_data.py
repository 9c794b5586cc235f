"""A user's own data and platform (issue #15): label masks, pixel size, images-only stores, safe
checkpoints, logs of unattended runs, installation beyond Linux."""

from __future__ import annotations

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
