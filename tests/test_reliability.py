"""Output problems (read-only, missing, full disk) leave inputs untouched and say what is wrong."""

import hashlib
import os
import resource
import signal
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from .conftest import ROOT, assert_one_line_error, run_module


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def stacks(tmp_path):
    images = (np.random.default_rng(0).random((3, 256, 300)) * 255).astype(np.uint8)
    masks = (images > 128).astype(np.uint8) * 255
    tifffile.imwrite(tmp_path / "images.tif", images, photometric="minisblack")
    tifffile.imwrite(tmp_path / "masks.tif", masks, photometric="minisblack")
    return tmp_path / "images.tif", tmp_path / "masks.tif"


def run_limited(args, file_size_limit):
    """Run `python -m ...` with a file-size limit: writes past it fail (EFBIG), as on a full disk."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG from write() instead of a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-m", *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, preexec_fn=limit, env=env)


@pytest.mark.fault("output", "disk full while building a store (file-size limit)",
                   "one-line error, exit 2, no store, inputs untouched")
def test_full_disk_during_build(stacks, tmp_path):
    images, masks = stacks
    before = digest(images), digest(masks)
    proc = run_limited(["shared.tiles", "build", "--images", images, "--masks", masks, "--out",
                        tmp_path / "store"], file_size_limit=200_000)
    assert_one_line_error(proc, "write failed", "disk full")
    assert not (tmp_path / "store").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".store")]  # temp folder removed
    assert (digest(images), digest(masks)) == before


@pytest.mark.fault("output", "disk full while appending to an existing store",
                   "one-line error, previous tiles intact")
def test_full_disk_during_append_keeps_the_store(stacks, tmp_path):
    from shared.store import TileStore

    images, masks = stacks
    assert run_module("shared.tiles", "build", "--images", images, "--masks", masks, "--out",
                      tmp_path / "store").returncode == 0
    before = TileStore(tmp_path / "store").raw_images(np.arange(6)).copy()
    code = ("import numpy as np; from shared.store import TileStore; from shared.errors import run_cli\n"
            f"s = TileStore({str(tmp_path / 'store')!r})\n"
            "def main(argv):\n"
            "    s.append(np.zeros((40, 256, 256), np.uint8), np.zeros((40, 256, 256), np.uint8),"
            " [{'split': 'train'}] * 40)\n"
            "raise SystemExit(run_cli(main))\n")

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))

    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          preexec_fn=limit, timeout=120)
    assert_one_line_error(proc, "write failed", "disk full")
    store = TileStore(tmp_path / "store")
    assert len(store) == 6 and np.array_equal(store.raw_images(np.arange(6)), before)


@pytest.fixture()
def read_only_dir(tmp_path):
    """A folder nobody may write to: a read-only bind mount when running as root (root ignores
    permission bits), else permission bits."""
    folder = tmp_path / "locked"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    mount = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True)
    remount = subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], capture_output=True)
    if mount.returncode or remount.returncode:
        if mount.returncode == 0:
            subprocess.run(["umount", str(folder)])
        pytest.skip("cannot make a read-only folder here (root without mount rights)")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.fault("output", "read-only output folder", "one-line error, exit 2, inputs untouched")
def test_read_only_output_folder(stacks, read_only_dir):
    images, masks = stacks
    before = digest(images)
    proc = run_module("shared.tiles", "build", "--images", images, "--masks", masks, "--out",
                      read_only_dir / "store")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "Read-only file system" in proc.stderr or "Permission denied" in proc.stderr
    assert str(read_only_dir) in proc.stderr
    assert list(read_only_dir.iterdir()) == [] and digest(images) == before


@pytest.mark.fault("output", "missing output folder", "one-line error naming it, exit 2")
def test_missing_output_folder(stacks, tmp_path):
    images, masks = stacks
    proc = run_module("shared.tiles", "build", "--images", images, "--masks", masks, "--out",
                      tmp_path / "nope" / "store")
    assert_one_line_error(proc, str(tmp_path / "nope"), "does not exist")
    proc = run_module("shared.phantom", "--out", tmp_path / "nope" / "ph", "--slices", "1")
    assert_one_line_error(proc, "does not exist")


def test_full_disk_while_a_bench_writes_its_results_keeps_the_old_file(tmp_path):
    """Benches rewrite committed JSON (docs/*.json) whole; a failed write must not truncate it."""
    results = tmp_path / "results.json"
    results.write_text('{"old": 1}\n')
    script = ("import sys; from pathlib import Path; from bench.common import write_json; "
              "write_json(Path(sys.argv[1]), {'rows': ['x' * 100] * 2000})")

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))  # the payload is ~200 kB

    done = subprocess.run([sys.executable, "-c", script, str(results)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, preexec_fn=limit)
    assert done.returncode != 0
    assert results.read_text() == '{"old": 1}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temp file left behind
