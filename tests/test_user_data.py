"""A user's own data and platform (issue #15): label masks, pixel size, images-only stores, safe
checkpoints, logs of unattended runs, installation beyond Linux."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_installs_beyond_linux_and_not_bench():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    deps = project["project"]["dependencies"]
    assert "onnxruntime-gpu>=1.19; sys_platform != 'darwin'" in deps
    assert "onnxruntime>=1.19; sys_platform == 'darwin'" in deps
    assert any(d.startswith("filelock") for d in deps)
    assert "bench" not in project["tool"]["setuptools"]["packages"]
    assert "fcntl" not in (ROOT / "shared" / "store.py").read_text()  # Windows has no fcntl
