"""segmentation_tf.recalibrate: a saved segmenter's threshold recalibrated on validation slices,
without training; the sidecar rewritten with the earlier calibration kept; bad input."""

import json

import numpy as np
import pytest

from .conftest import assert_one_line_error, run_module

pytest.importorskip("tensorflow")

TILE = 64


@pytest.fixture()
def old_segmenter(tmp_path):
    import keras

    from segmentation_tf.artifacts import save_segmenter
    from segmentation_tf.model import UNetConfig, build_unet

    keras.utils.set_random_seed(0)
    config = UNetConfig(base_width=8, depth=3)
    (tmp_path / "run").mkdir()
    old = {"threshold": 0.98, "iou": 0.25}  # a version-1 record: no "version" key
    save_segmenter(build_unet(config), config, tmp_path / "run", threshold=0.98, tile_size=TILE,
                   provenance={"calibration": old}, overlap=16, tta=False)
    return tmp_path / "run"


def labelled_stacks(folder, model_dir):
    """Two 64 x 96 slices, masks = the upper third of the model's own probabilities (so the best
    threshold is inside the grid, far from 0.98)."""
    from segmentation_tf.artifacts import load_segmenter
    from segmentation_tf.inference import predict_stack
    from shared.tiff_io import write_stack

    images = np.random.default_rng(1).integers(0, 255, (2, TILE, 96), dtype=np.uint8)
    probs = predict_stack(load_segmenter(model_dir).model, images / 127.5 - 1.0, TILE, 16, False)
    masks = (probs >= np.quantile(probs, 2 / 3)).astype(np.uint8)
    write_stack(folder / "val.tif", images)
    write_stack(folder / "val_masks.tif", masks)
    return probs, masks


def test_recalibrate_rewrites_the_threshold_and_keeps_the_earlier_calibration(old_segmenter, tmp_path):
    from segmentation_tf.calibration import VERSION, calibrate_slices

    probs, masks = labelled_stacks(tmp_path, old_segmenter)
    proc = run_module("segmentation_tf.recalibrate", "--model", old_segmenter, "--images",
                      tmp_path / "val.tif", "--masks", tmp_path / "val_masks.tif")
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((old_segmenter / "segmenter.json").read_text())
    expected = calibrate_slices(probs, masks)
    assert meta["threshold"] == pytest.approx(expected["threshold"]) and meta["threshold"] != 0.98
    assert meta["provenance"]["calibration"]["version"] == VERSION
    assert meta["provenance"]["calibration"]["iou"] == pytest.approx(expected["iou"], abs=1e-6)
    assert meta["provenance"]["earlier_calibrations"] == [{"threshold": 0.98, "iou": 0.25}]
    assert "threshold 0.98 ->" in proc.stdout


def test_recalibrate_without_data_or_a_training_store_is_a_one_line_error(old_segmenter):
    proc = run_module("segmentation_tf.recalibrate", "--model", old_segmenter)
    assert_one_line_error(proc, "names no training store")
    assert json.loads((old_segmenter / "segmenter.json").read_text())["threshold"] == 0.98  # untouched


def test_precise_bn_recomputes_the_statistics_on_the_training_store(tmp_path):
    import keras

    from segmentation_tf.artifacts import save_segmenter
    from segmentation_tf.batchnorm import batchnorm_layers, recompute_on_store
    from segmentation_tf.model import UNetConfig, build_unet
    from shared.store import TileStore

    from .conftest import phantom_store

    store = phantom_store(tmp_path, 3, 128, 128, tile=TILE) / "store"
    config = UNetConfig(base_width=8, depth=3)
    keras.utils.set_random_seed(0)
    (tmp_path / "run").mkdir()
    save_segmenter(build_unet(config), config, tmp_path / "run", threshold=0.5, tile_size=TILE,
                   provenance={"calibration": {"threshold": 0.5, "iou": 0.1, "version": 2},
                               "real_store": str(store), "data": {"batch_size": 4}}, overlap=16)
    expected = keras.saving.load_model(tmp_path / "run" / "segmenter.keras", compile=False)
    record = recompute_on_store(expected, TileStore(store), 4)
    proc = run_module("segmentation_tf.recalibrate", "--model", tmp_path / "run", "--precise-bn")
    assert proc.returncode == 0, proc.stderr
    got = keras.saving.load_model(tmp_path / "run" / "segmenter.keras", compile=False)
    for a, b in zip(batchnorm_layers(got), batchnorm_layers(expected), strict=True):
        assert np.allclose(a.moving_mean, b.moving_mean, atol=1e-5)
        assert not np.allclose(a.moving_variance, 1.0)  # no longer the initial statistics
    meta = json.loads((tmp_path / "run" / "segmenter.json").read_text())
    assert meta["provenance"]["batchnorm_recomputed"] == record
    assert f"recomputed on {record['tiles']} training tiles" in proc.stdout


def test_precise_bn_without_a_training_store_is_a_one_line_error(old_segmenter, tmp_path):
    labelled_stacks(tmp_path, old_segmenter)
    before = (old_segmenter / "segmenter.keras").read_bytes()
    proc = run_module("segmentation_tf.recalibrate", "--model", old_segmenter, "--precise-bn", "--images",
                      tmp_path / "val.tif", "--masks", tmp_path / "val_masks.tif")
    assert_one_line_error(proc, "--precise-bn needs training tiles", "give --store")
    assert (old_segmenter / "segmenter.keras").read_bytes() == before
    assert json.loads((old_segmenter / "segmenter.json").read_text())["threshold"] == 0.98
