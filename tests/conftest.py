import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EPFL = ROOT.parent / "shared" / "data" / "epfl_ca1_subset"


@pytest.fixture(scope="session")
def epfl_dir() -> Path:
    if not (EPFL / "training.tif").is_file() or not (EPFL / "training_groundtruth.tif").is_file():
        pytest.skip(f"real EPFL subset not found at {EPFL}")
    return EPFL


def run_module(module: str, *args: str, timeout: float = 600, env: dict | None = None
               ) -> subprocess.CompletedProcess:
    """Run `python -m module args` from the repo root, capturing text output."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=full_env)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit 2, no traceback, the error on one line containing every needle."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if "error" in line.lower()]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
