"""The residual U-Net builder, mixed precision, and the saved segmenter (model + sidecar)."""

import json

import numpy as np
import pytest

pytest.importorskip("tensorflow")

import keras  # noqa: E402

from segmentation_tf.artifacts import load_segmenter, save_segmenter  # noqa: E402
from segmentation_tf.inference import predict_slice  # noqa: E402
from segmentation_tf.model import UNetConfig, build_unet  # noqa: E402
from segmentation_tf.precision import resolve_policy  # noqa: E402
from shared.errors import UserError  # noqa: E402


@pytest.mark.parametrize("shape", [(2, 32, 32, 1), (1, 48, 80, 1)])
def test_fully_convolutional_sigmoid_output(shape):
    model = build_unet(UNetConfig(base_width=4, depth=3))
    out = np.asarray(model(np.zeros(shape, np.float32)))
    assert out.shape == shape and out.dtype == np.float32
    assert np.all((out > 0) & (out < 1))


def test_width_depth_and_he_normal_init():
    model = build_unet(UNetConfig(base_width=8, depth=2))
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert all(type(c.kernel_initializer).__name__ == "HeNormal" for c in convs)
    assert model.get_layer("bottleneck_conv2").filters == 32
    assert sum(isinstance(layer, keras.layers.MaxPooling2D) for layer in model.layers) == 2
    assert any(isinstance(layer, keras.layers.Add) for layer in model.layers)


def test_mixed_precision_keeps_the_output_float32():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_unet(UNetConfig(base_width=4, depth=2))
        assert model.get_layer("enc0_conv1").compute_dtype == "bfloat16"
        assert np.asarray(model(np.zeros((1, 16, 16, 1), np.float32))).dtype == np.float32
    finally:
        keras.mixed_precision.set_global_policy(previous)


def test_policy_names():
    assert resolve_policy("float32") == "float32"
    assert resolve_policy("auto") in ("float32", "mixed_bfloat16", "mixed_float16")
    with pytest.raises(ValueError):
        resolve_policy("int8")


def test_saved_segmenter_round_trip(tmp_path):
    keras.utils.set_random_seed(0)  # bf16 rounding of an untrained net depends on its weights
    config = UNetConfig(base_width=4, depth=2)
    model = build_unet(config)
    save_segmenter(model, config, tmp_path, threshold=0.42, tile_size=32, provenance={"note": "test"})
    meta = json.loads((tmp_path / "segmenter.json").read_text())
    assert meta["threshold"] == 0.42 and meta["tile_size"] == 32 and meta["depth"] == 2
    assert meta["normalization"]["norm_mean"] == "0.5"
    seg = load_segmenter(tmp_path / "segmenter.keras")
    assert seg.threshold == 0.42 and seg.tile_size == 32
    x = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 1)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(seg.model(x)), np.asarray(model(x)), atol=1e-6)
    # plain keras loading needs no custom objects (the saved model is uncompiled)
    assert keras.saving.load_model(tmp_path / "segmenter.keras").output_shape == (None, None, None, 1)
    bf16 = load_segmenter(tmp_path, policy="mixed_bfloat16")
    error = np.abs(np.asarray(bf16.model(x)) - np.asarray(model(x)))
    assert error.mean() < 0.01 and error.max() < 0.15  # bf16 keeps 8 bits of mantissa


def test_missing_sidecar_is_a_user_error(tmp_path):
    config = UNetConfig(base_width=4, depth=2)
    save_segmenter(build_unet(config), config, tmp_path, 0.5, 32, {})
    (tmp_path / "segmenter.json").unlink()
    with pytest.raises(UserError, match="segmenter.json"):
        load_segmenter(tmp_path)


@pytest.mark.parametrize("tta", [False, True])
def test_whole_slice_prediction_any_size(tta):
    model = build_unet(UNetConfig(base_width=4, depth=2))
    image = np.random.default_rng(0).uniform(-1, 1, (50, 90)).astype(np.float32)
    prob = predict_slice(model, image, tile=32, overlap=8, tta=tta)
    assert prob.shape == (50, 90) and np.all((prob >= 0) & (prob <= 1))


def test_xla_trains_the_same_arithmetic_and_none_keeps_keras_default():
    from dataclasses import replace

    from segmentation_tf.config import TrainConfig
    from segmentation_tf.fit import parser
    from segmentation_tf.presets import FLAGS, PRESETS
    from segmentation_tf.training import compiled_model
    from shared.presets import apply_flags

    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 32, 32, 1)).astype(np.float32)
    y = (rng.random((4, 32, 32, 1)) > 0.7).astype(np.float32)
    config = TrainConfig(epochs=1, ema_momentum=0.9, restore_best=False)
    assert compiled_model(UNetConfig(base_width=4, depth=2), config, 4).jit_compile is False  # Keras's auto
    trained = {}
    for xla in (False, True):  # auto is off on a machine without a GPU
        keras.utils.set_random_seed(0)
        model = compiled_model(UNetConfig(base_width=4, depth=2), replace(config, xla=xla), 4)
        model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
        trained[xla] = model
    assert trained[True].jit_compile is True
    for a, b in zip(trained[True].get_weights(), trained[False].get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)  # the same steps, other rounding
    for flags, want in ((["--xla"], True), (["--no-xla"], False), ([], None)):
        args = parser().parse_args(["--store", "s", *flags])
        assert apply_flags(PRESETS["real"], FLAGS, vars(args)).train.xla is want
