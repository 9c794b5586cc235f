"""Segmenter -> ONNX (tf2onnx) and the onnxruntime-only runtime: parity, metadata, bad input."""

import logging
import subprocess
import sys

import numpy as np
import pytest

from .conftest import ROOT, assert_one_line_error, run_module

pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")


@pytest.fixture(scope="module")
def tiny_segmenter(tmp_path_factory):
    import keras

    from segmentation_tf.artifacts import save_segmenter
    from segmentation_tf.model import UNetConfig, build_unet

    keras.utils.set_random_seed(0)  # a fixed random model: the agreement checks below are exact
    run_dir = tmp_path_factory.mktemp("seg_run")
    config = UNetConfig(base_width=8, depth=3)
    model = build_unet(config)
    save_segmenter(model, config, run_dir, threshold=0.37, tile_size=64, provenance={"test": True},
                   overlap=16, tta=False)
    return run_dir


@pytest.fixture(scope="module")
def exported(tiny_segmenter, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "segmenter.onnx"
    proc = run_module("exporters.keras_onnx", "--model", tiny_segmenter, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "max |Keras - onnxruntime|" in proc.stdout
    return out


def test_onnx_matches_keras_on_other_sizes_and_batches(tiny_segmenter, exported):
    import onnxruntime as ort

    from segmentation_tf.artifacts import load_segmenter

    model = load_segmenter(tiny_segmenter).model
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    for shape in [(1, 64, 64, 1), (3, 96, 136, 1)]:
        x = np.random.default_rng(1).uniform(-1, 1, shape).astype(np.float32)
        got = session.run(None, {"image": x})[0]
        assert got.shape == shape
        assert np.abs(np.asarray(model(x, training=False)) - got).max() <= 1e-4


def test_metadata_holds_what_a_client_needs(exported):
    from exporters.onnx_io import read_metadata

    props = read_metadata(exported)
    assert props["emsynth.model"] == "segmenter"
    assert float(props["threshold"]) == pytest.approx(0.37)
    assert props["input_layout"] == "NHWC" and props["input_dtype"] == "float32"
    assert props["tile_size"] == "64" and props["size_divisor"] == "8"
    assert props["norm_mean"] == "0.5" and props["norm_std"] == "0.5" and props["pixel_scale_uint8"] == "255"
    assert props["recommended_overlap"] == "16" and props["recommended_tta"] == "false"
    assert "sigmoid" in props["output_meaning"]
    assert '"test": true' in props["provenance"]


def test_runtime_whole_slice_matches_keras_inference(tiny_segmenter, exported):
    from exporters.runtime import Segmenter
    from segmentation_tf.artifacts import load_segmenter
    from shared.normalization import normalize
    from shared.tiling import predict_tiled

    image = np.random.default_rng(2).integers(0, 256, (150, 170), dtype=np.uint8)
    keras_model = load_segmenter(tiny_segmenter).model

    def keras_tiles(t):
        return np.asarray(keras_model(t[..., None], training=False))[..., 0]

    want = predict_tiled(keras_tiles, normalize(image), 64, 16, 8)
    seg = Segmenter(exported, device="cpu")
    got = seg.predict(image, overlap=16)
    assert got.shape == image.shape and np.abs(got - want).max() <= 1e-4
    assert np.array_equal(seg.segment(image, overlap=16), np.where(got >= 0.37, 255, 0).astype(np.uint8))
    tta = seg.predict(image, tta=True, overlap=16)
    assert tta.shape == image.shape and not np.allclose(tta, got)


@pytest.mark.parametrize("bad,needle", [
    (np.zeros((32, 32), np.int32), "dtype int32"),
    (np.zeros((2, 32, 32), np.uint8), "must be 2-D"),
    (np.full((32, 32), np.nan, np.float32), "NaN"),
    (np.zeros((0, 32), np.uint8), "empty"),
    (np.full((32, 32), 7.0, np.float32), "not in [0, 1]"),
    ([[1, 2]], "numpy array"),
])
@pytest.mark.fault("onnxruntime layer",
                   "wrong dtype, wrong rank, NaN, empty, out-of-range array",
                   "the project's InputError")
def test_runtime_rejects_bad_arrays_with_its_own_error(exported, bad, needle):
    from exporters.runtime import InputError, Segmenter

    with pytest.raises(InputError) as info:
        Segmenter(exported, device="cpu").predict(bad)
    assert needle in str(info.value)


@pytest.mark.fault("onnxruntime layer",
                   "file not ONNX, missing, ONNX without metadata",
                   "the project's ModelFileError")
def test_runtime_rejects_bad_files(tmp_path, exported):
    import onnx

    from exporters.runtime import ModelFileError, Segmenter

    (tmp_path / "text.onnx").write_text("not a model")
    with pytest.raises(ModelFileError, match="not a loadable ONNX model"):
        Segmenter(tmp_path / "text.onnx")
    with pytest.raises(ModelFileError, match="no such ONNX file"):
        Segmenter(tmp_path / "missing.onnx")
    bare = onnx.load(str(exported))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    with pytest.raises(ModelFileError, match="no emsynth metadata"):
        Segmenter(tmp_path / "bare.onnx")


def test_provider_choice_is_one_clear_line(exported, caplog):
    from exporters.runtime import CPU, Segmenter, choose_providers, cuda_usable

    with caplog.at_level(logging.INFO, logger="emsynth.runtime"):
        seg = Segmenter(exported)
    lines = [r.getMessage() for r in caplog.records if r.name == "emsynth.runtime"]
    assert len(lines) == 1 and ("CPU" in lines[0] or "GPU" in lines[0])
    if not cuda_usable():
        assert seg.provider == CPU and choose_providers("auto") == [CPU]
        with pytest.raises(RuntimeError, match="CUDA execution provider requested"):
            choose_providers("cuda")
    assert choose_providers("cpu") == [CPU]


def test_runtime_cli_segments_a_stack_and_errors_cleanly(tmp_path, exported):
    import tifffile

    stack = np.random.default_rng(3).integers(0, 256, (2, 70, 90), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "in.tif", stack, photometric="minisblack")
    proc = run_module("exporters.infer", "segment", "--model", exported, "--images", tmp_path / "in.tif",
                      "--out", tmp_path / "out", "--overlap", "16")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("execution provider") == 1  # one line names the provider; no ORT spam
    prob = tifffile.imread(tmp_path / "out" / "probability.tif")
    mask = tifffile.imread(tmp_path / "out" / "mask.tif")
    assert prob.shape == (2, 70, 90) and prob.dtype == np.float32
    assert np.array_equal(mask, np.where(prob >= 0.37, 255, 0).astype(np.uint8))  # shared.outputs
    bad = run_module("exporters.infer", "segment", "--model", tmp_path / "in.tif", "--images",
                     tmp_path / "in.tif", "--out", tmp_path / "o2")
    assert_one_line_error(bad, "not a loadable ONNX model")


def test_runtime_layer_imports_neither_torch_nor_tensorflow():
    code = ("import sys, exporters.runtime, exporters.infer\n"
            "bad = [m for m in ('torch', 'tensorflow', 'keras') if m in sys.modules]\n"
            "assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_readme_client_recipe_runs_without_project_code(exported, tmp_path):
    """The documented numpy + onnxruntime client (docs/exporters.md), run as written, agrees."""
    import re

    from exporters.runtime import Segmenter

    readme = (ROOT / "docs" / "exporters.md").read_text()  # the client recipe lives there
    code = re.search(r"<!-- client-recipe -->\s*```python\n(.*?)```", readme, re.S).group(1)
    image = (np.random.default_rng(5).random((96, 120)) * 255).astype(np.uint8)
    np.save(tmp_path / "slice.npy", image)
    script = ("import sys\n"
              "for name in ('shared', 'exporters', 'segmentation_tf', 'generation_torch', 'tensorflow', "
              "'torch', 'keras'):\n    sys.modules[name] = None  # the client has none of these\n"
              + code.replace('"segmenter.onnx"', repr(str(exported)))
              + f"\nimport numpy as np\nnp.save({str(tmp_path / 'mask.npy')!r}, "
              f"segment(np.load({str(tmp_path / 'slice.npy')!r})))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    client = np.load(tmp_path / "mask.npy")
    runtime = Segmenter(exported, device="cpu").segment(image)  # overlap and TTA from the metadata
    assert client.shape == image.shape and client.dtype == bool
    assert np.array_equal(client, runtime.astype(bool))  # the same algorithm, step for step


def test_int8_export_runs_and_stays_close(exported, tmp_path):
    from exporters.keras_onnx import quantize_int8
    from exporters.onnx_io import read_metadata
    from exporters.runtime import Segmenter

    rng = np.random.default_rng(7)
    tiles = rng.uniform(-1, 1, (8, 64, 64)).astype(np.float32)
    path = quantize_int8(exported, tmp_path / "s.int8.onnx", tiles)
    props = read_metadata(path)
    assert props["precision"].startswith("int8")
    assert props["threshold"] == read_metadata(exported)["threshold"]
    image = (rng.random((80, 90)) * 255).astype(np.uint8)
    fp32 = Segmenter(exported, device="cpu").predict(image)
    int8 = Segmenter(path, device="cpu").predict(image)
    assert np.abs(fp32 - int8).mean() < 0.05


def test_both_segment_commands_write_the_same_outputs(tmp_path, tiny_segmenter, exported):
    """segmentation_tf.predict (Keras) and exporters.infer segment (onnxruntime): one layout, one
    encoding, one comparison, the same probabilities."""
    import tifffile

    stack = np.random.default_rng(5).integers(0, 256, (2, 70, 90), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "in.tif", stack, photometric="minisblack")
    for module, model, out in (("segmentation_tf.predict", tiny_segmenter, "keras"),
                               ("exporters.infer", exported, "ort")):
        sub = ["segment"] if module == "exporters.infer" else []
        proc = run_module(module, *sub, "--model", model, "--images", tmp_path / "in.tif", "--out",
                          tmp_path / out, "--overlap", "16", "--no-tta", "--instances", "3d")
        assert proc.returncode == 0, proc.stderr[-2000:]
    prob = {o: tifffile.imread(tmp_path / o / "probability.tif") for o in ("keras", "ort")}
    mask = {o: tifffile.imread(tmp_path / o / "mask.tif") for o in ("keras", "ort")}
    assert np.abs(prob["keras"] - prob["ort"]).max() <= 1e-4
    assert mask["keras"].dtype == mask["ort"].dtype == np.uint8 and set(np.unique(mask["ort"])) <= {0, 255}
    decided = np.abs(prob["ort"] - 0.37) > 1e-4  # pixels the 1e-4 tolerance cannot flip
    assert np.array_equal(mask["keras"][decided], mask["ort"][decided])
    from shared.outputs import instance_labels

    for o in ("keras", "ort"):  # instances.tif: the mask's 3-D objects, beside it
        assert np.array_equal(tifffile.imread(tmp_path / o / "instances.tif"), instance_labels(mask[o], "3d"))
