"""A user's own data and platform (issue #15): label masks, pixel size, images-only stores, safe
checkpoints, logs of unattended runs, installation beyond Linux."""

from __future__ import annotations

import subprocess
import sys
import tomllib

import pytest

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
