"""Every entry point: a missing input file and an unknown flag give one line and exit 2."""

from concurrent.futures import ThreadPoolExecutor

import pytest

from .conftest import assert_one_line_error, run_module

MISSING = "/nonexistent/input"
ENTRY_POINTS = {
    "shared.tiles": ["build", "--images", f"{MISSING}.tif", "--masks", f"{MISSING}.tif",
                     "--out", "/tmp/x"],
    "shared.phantom": ["--out", f"{MISSING}/phantom", "--slices", "1"],
    "generation_torch.train": ["--store", MISSING, "--out", "/tmp/emsynth-cli-test"],
    "generation_torch.sample": ["--checkpoint", f"{MISSING}.pt", "--masks-from", MISSING, "--n", "1",
                                "--out", "/tmp/emsynth-cli-test-s"],
    "generation_torch.evaluate": ["--checkpoint", f"{MISSING}.pt"],
    "generation_torch.copy_paste": ["--labelled", MISSING, "--backgrounds", MISSING, "--out", "/tmp/cp"],
    "segmentation_tf.fit": ["--store", MISSING, "--out", "/tmp/emsynth-cli-test"],
    "segmentation_tf.predict": ["--model", MISSING, "--images", f"{MISSING}.tif", "--out", "/tmp/p"],
    "segmentation_tf.evaluate": ["--model", MISSING, "--images", f"{MISSING}.tif",
                                 "--masks", f"{MISSING}.tif"],
    "segmentation_tf.recalibrate": ["--model", MISSING, "--images", f"{MISSING}.tif",
                                    "--masks", f"{MISSING}.tif"],
    "segmentation_tf.filter_synthetic": ["--judge", MISSING, "--store", MISSING, "--out", "/tmp/f"],
    "exporters.keras_onnx": ["--model", MISSING, "--out", "/tmp/emsynth-cli-test.onnx"],
    "exporters.torch_onnx": ["--checkpoint", f"{MISSING}.pt", "--out", "/tmp/emsynth-cli-test-onnx"],
    "exporters.bioimageio": ["--model", f"{MISSING}.onnx", "--out", "/tmp/emsynth-cli-test-bioimageio"],
    "exporters.infer": ["segment", "--model", f"{MISSING}.onnx", "--images", f"{MISSING}.tif",
                        "--out", "/tmp/o"],
}


@pytest.fixture(scope="module")
def results():
    """All entry points, twice each (missing file, unknown flag), two at a time."""
    jobs = {(m, "missing"): args for m, args in ENTRY_POINTS.items()}
    jobs |= {(m, "unknown"): [*args, "--no-such-flag"] for m, args in ENTRY_POINTS.items()}
    with ThreadPoolExecutor(2) as pool:
        futures = {k: pool.submit(run_module, k[0], *args, timeout=300) for k, args in jobs.items()}
        return {k: f.result() for k, f in futures.items()}


@pytest.mark.fault("CLI", "missing input file, every entry point", "one line naming it, exit 2")
@pytest.mark.parametrize("module", sorted(ENTRY_POINTS))
def test_missing_input(results, module):
    assert_one_line_error(results[(module, "missing")], "/nonexistent/")


@pytest.mark.fault("CLI", "unknown flag, every entry point", "one line, exit 2")
@pytest.mark.parametrize("module", sorted(ENTRY_POINTS))
def test_unknown_flag(results, module):
    assert_one_line_error(results[(module, "unknown")], "--no-such-flag")
