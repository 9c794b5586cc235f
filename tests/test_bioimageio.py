"""exporters.bioimageio: a bioimage.io model package that bioimageio.core tests and runs offline, whose
fields are the run's metadata and whose preprocessing is shared.normalization."""

import socket

import numpy as np
import pytest

from .conftest import assert_one_line_error, phantom_store, run_module

pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")
pytest.importorskip("bioimageio.core")

TILE, OVERLAP, THRESHOLD, PIXEL_NM = 64, 16, 0.42, 5.0


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A phantom tile store and a fixed random tiny segmenter whose provenance names that store."""
    import keras

    from segmentation_tf.artifacts import save_segmenter
    from segmentation_tf.model import UNetConfig, build_unet

    root = phantom_store(tmp_path_factory.mktemp("bioimageio"), 5, 128, 128, tile=TILE)
    keras.utils.set_random_seed(0)
    config = UNetConfig(base_width=4, depth=3)
    (root / "run").mkdir()
    save_segmenter(build_unet(config), config, root / "run", threshold=THRESHOLD, tile_size=TILE,
                   provenance={"real_store": str(root / "store"), "calibration": {"iou": 0.61, "dice": 0.75}},
                   overlap=OVERLAP, tta=False)
    return root


@pytest.fixture(scope="module")
def package(tiny_run):
    from exporters.bioimageio import main
    from shared.errors import run_cli

    out = tiny_run / "package"
    assert run_cli(main, ["--model", str(tiny_run / "run"), "--out", str(out), "--name", "tiny test model",
                          "--authors", "A. Author; B. Author", "--license", "MIT",
                          "--pixel-size-nm", str(PIXEL_NM)]) == 0
    return out


@pytest.fixture()
def offline(monkeypatch):
    """Any attempt to open a network connection fails the test that uses this fixture."""
    attempts = []

    def refuse(self, address):
        attempts.append(address)
        raise OSError(f"network is off in this test ({address})")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


def test_bioimageio_core_test_passes_offline(package, offline):
    from bioimageio.core import test_description

    summary = test_description(package / "rdf.yaml", devices=["CPUExecutionProvider"])
    assert summary.status == "passed", summary.format()
    names = [d.name for d in summary.details]
    assert any("Reproduce test outputs" in n for n in names), names  # the model really ran
    assert offline == []


def test_package_fields_equal_the_run_metadata(package):
    from bioimageio.spec import load_description
    from bioimageio.spec.model.v0_5 import ModelDescr

    from exporters.onnx_io import read_metadata
    from segmentation_tf.sidecar import read_sidecar

    descr = load_description(package / "rdf.yaml", perform_io_checks=False)
    assert isinstance(descr, ModelDescr), descr.validation_summary.format()
    run = read_sidecar(package.parent / "run")
    props = read_metadata(package / "segmenter.onnx")
    assert props["emsynth.model"] == "segmenter" and float(props["threshold"]) == run["threshold"]

    assert descr.name == "tiny test model" and descr.license == "MIT"
    assert [a.name for a in descr.authors] == ["A. Author", "B. Author"]
    assert descr.weights.onnx is not None and descr.weights.onnx.opset_version == 17
    (inp,), (out,) = descr.inputs, descr.outputs
    # axes as the ONNX graph has them: NHWC
    assert [(a.type, str(a.id)) for a in inp.axes] == [("batch", "batch"), ("space", "y"), ("space", "x"),
                                                        ("channel", "channel")]
    assert [a.type for a in out.axes] == ["batch", "space", "space", "channel"]
    y, x = inp.axes[1], inp.axes[2]
    assert (y.size.min, y.size.step) == (x.size.min, x.size.step) == (TILE, 2 ** run["depth"])
    assert y.scale == x.scale == PIXEL_NM and y.unit == "nanometer"
    assert out.axes[1].halo == out.axes[2].halo == OVERLAP // 2
    assert str(out.axes[1].size.tensor_id) == str(inp.id)
    assert descr.config.model_extra["emsynth"]["threshold"] == pytest.approx(THRESHOLD)
    # the rule every predictor applies (segmentation_tf.scores: probability >= threshold)
    assert f"probability >= {THRESHOLD:.6g}" in out.description
    doc = (package / "README.md").read_text()
    assert "0.6100" in doc and "5 nm" in doc and str(package.parent / "store") in doc

    test_in = np.load(package / "test_input.npy")
    test_out = np.load(package / "test_output.npy")
    assert test_in.shape == (1, TILE, TILE, 1) and test_in.dtype == np.uint8
    assert test_out.shape == (1, TILE, TILE, 1) and test_out.min() >= 0.0 and test_out.max() <= 1.0


def core_preprocessed(descr, pixels: np.ndarray) -> np.ndarray:
    """bioimageio.core's preprocessing, as the description states it, of (H, W) stored pixels."""
    from bioimageio.core import create_prediction_pipeline
    from bioimageio.core.digest_spec import create_sample_for_model

    sample = create_sample_for_model(descr, inputs={"raw": pixels[None, ..., None]})
    with create_prediction_pipeline(descr, devices=["CPUExecutionProvider"]) as pp:
        pp.apply_preprocessing(sample)
    return sample.members["raw"].data.to_numpy()[0, ..., 0]


@pytest.fixture(scope="module")
def descr(package):
    from bioimageio.spec import load_description

    return load_description(package / "rdf.yaml", perform_io_checks=False)


def test_preprocessing_equals_shared_normalization_on_every_uint8_value(descr):
    from shared.normalization import normalize

    pixels = (np.arange(TILE * TILE) % 256).astype(np.uint8).reshape(TILE, TILE)  # the input's min size
    got = core_preprocessed(descr, pixels)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, normalize(pixels), rtol=0, atol=1e-6)


def test_preprocessing_equals_shared_normalization_on_real_epfl_pixels(descr, epfl_dir):
    import tifffile

    from shared.normalization import normalize

    with tifffile.TiffFile(epfl_dir / "training.tif") as tif:
        pixels = tif.pages[len(tif.pages) // 2].asarray()
    got = core_preprocessed(descr, pixels)
    np.testing.assert_allclose(got, normalize(pixels), rtol=0, atol=1e-6)


def test_onnx_file_packages_as_zip_and_loads(package, tmp_path, offline):
    from bioimageio.spec import load_description
    from bioimageio.spec.model.v0_5 import ModelDescr

    out = tmp_path / "model.zip"
    proc = run_module("exporters.bioimageio", "--model", package / "segmenter.onnx", "--out", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert isinstance(load_description(out, perform_io_checks=False), ModelDescr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.zip"]  # no staging folder left


def test_bad_runs_exit_2_with_one_line(package, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    bare = tmp_path / "bare.onnx"  # a valid ONNX file without the project's metadata
    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["probability"])], "g",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("probability", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), str(bare))
    cases = [
        (["--model", tmp_path / "missing.onnx", "--out", tmp_path / "a"], "no such ONNX file"),
        (["--model", tmp_path / "no_run", "--out", tmp_path / "b"], "no saved segmenter"),
        (["--model", bare, "--out", tmp_path / "c"], "lacks the emsynth segmenter metadata"),
        (["--model", package / "segmenter.onnx", "--out", package], "already exists"),
        (["--model", package / "segmenter.onnx", "--out", tmp_path / "d", "--license", "not-a-licence"],
         "license"),
    ]
    for args, needle in cases:
        assert_one_line_error(run_module("exporters.bioimageio", *args), needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bare.onnx"]  # nothing half-written
