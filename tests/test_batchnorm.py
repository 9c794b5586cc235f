"""Precise BatchNorm statistics (segmentation_tf.batchnorm) against hand-computed batch statistics."""

import numpy as np
import pytest

pytest.importorskip("tensorflow")

import keras  # noqa: E402

from segmentation_tf.batchnorm import (  # noqa: E402
    batches_of,
    batchnorm_layers,
    dihedral,
    recompute_batchnorm,
    tiles_for_statistics,
)
from segmentation_tf.config import UNetConfig  # noqa: E402
from segmentation_tf.model import build_unet  # noqa: E402


def small_unet() -> keras.Model:
    keras.utils.set_random_seed(0)
    model = build_unet(UNetConfig(base_width=4, depth=2))
    for layer in batchnorm_layers(model):  # statistics far from any batch's
        layer.moving_mean.assign(np.full(layer.moving_mean.shape, 3.0, np.float32))
        layer.moving_variance.assign(np.full(layer.moving_variance.shape, 50.0, np.float32))
    return model


def tiles(n: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(0.2, 0.5, (n, 16, 16, 1)) + np.linspace(-0.3, 0.3, 16)[None, :, None, None]).astype(
        np.float32)


def test_one_batch_makes_inference_equal_training_mode_on_it():
    # with the moving statistics exactly that batch's, inference mode normalizes like training mode
    model, x = small_unet(), tiles(6)
    assert recompute_batchnorm(model, x, batch_size=6, max_batches=1) == 1
    assert np.allclose(model(x, training=False), model(x, training=True), atol=1e-5)
    assert not np.allclose(small_unet()(x, training=False), model(x, training=False), atol=1e-3)


def test_moving_statistics_are_the_mean_of_the_batch_statistics():
    model, x = small_unet(), tiles(9)
    batches = batches_of(x, 4, 5, seed=0)
    first = batchnorm_layers(model)[0]  # its input does not depend on any other BatchNorm layer
    probe = keras.Model(model.input, first.input)
    means = [np.mean(probe(b), axis=(0, 1, 2)) for b in batches]
    variances = [np.var(probe(b), axis=(0, 1, 2)) for b in batches]
    momentum = first.momentum
    assert recompute_batchnorm(model, x, batch_size=4, max_batches=5, seed=0) == 5
    assert np.allclose(first.moving_mean, np.mean(means, axis=0), atol=1e-5)
    assert np.allclose(first.moving_variance, np.mean(variances, axis=0), rtol=1e-4, atol=1e-6)
    assert first.momentum == momentum  # training resumes with the layer's own momentum


def test_batches_cover_every_dihedral_view_and_stop_at_the_cap():
    x = np.arange(3 * 4 * 4, dtype=np.float32).reshape(3, 4, 4, 1)
    batches = batches_of(x, 2, 100, seed=0)
    assert len(batches) == 12 and all(b.shape == (2, 4, 4, 1) for b in batches)  # 24 views of 2
    seen = {b.tobytes() for batch in batches for b in batch}
    assert seen == {dihedral(x[i:i + 1], k)[0].tobytes() for i in range(3) for k in range(8)}
    assert len(batches_of(x, 2, 5, seed=0)) == 5
    assert len(batches_of(x, 10, 100, seed=0)) == 8  # batches no larger than the tiles


def test_dihedral_views_are_the_eight_distinct_symmetries():
    x = np.arange(9, dtype=np.float32).reshape(1, 3, 3, 1)
    views = [dihedral(x, k)[0, ..., 0] for k in range(8)]
    assert len({v.tobytes() for v in views}) == 8
    assert np.array_equal(views[1], np.rot90(x[0, ..., 0]))
    assert np.array_equal(views[4], x[0, ..., 0][:, ::-1])


def test_no_tiles_is_an_error():
    with pytest.raises(ValueError, match="no tiles"):
        recompute_batchnorm(small_unet(), np.zeros((0, 16, 16, 1), np.float32), 4)


def test_statistics_come_from_training_tiles_only_and_a_large_store_is_subsampled(tmp_path):
    from shared.errors import UserError
    from shared.store import TileStore

    from .conftest import phantom_store

    store = TileStore(phantom_store(tmp_path, 6, 96, 128, tile=32) / "store")
    train, val = store.images(store.indices("train")), store.images(store.indices("val"))
    assert len(train) > 10
    everything = tiles_for_statistics(store, batch_size=len(train), max_batches=1)
    assert everything.shape == (len(train), 32, 32, 1) and np.array_equal(everything[..., 0], train)
    some = tiles_for_statistics(store, batch_size=2, max_batches=5, seed=1)
    assert some.shape == (10, 32, 32, 1)
    assert np.array_equal(some, tiles_for_statistics(store, batch_size=2, max_batches=5, seed=1))
    rows = {t.tobytes() for t in train}
    assert all(t[..., 0].tobytes() in rows for t in some)
    assert not {t[..., 0].tobytes() for t in some} & {t.tobytes() for t in val}
    for record in store.records:
        record["split"] = "val"
    with pytest.raises(UserError, match="no 'train' tiles"):
        tiles_for_statistics(store, 4)
