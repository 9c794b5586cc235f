"""Segmenter input pipeline: exact real/synthetic counts per batch, aligned augmentation, pools."""

import numpy as np
import pytest

pytest.importorskip("tensorflow")

import tensorflow as tf  # noqa: E402

from segmentation_tf.augment import AugmentConfig, random_window  # noqa: E402
from segmentation_tf.data import (  # noqa: E402
    DataConfig,
    Pool,
    batch_composition,
    real_train_pool,
    rounding_note,
    steps_per_epoch,
    training_dataset,
)
from segmentation_tf.slices import slices_of  # noqa: E402
from shared.errors import UserError  # noqa: E402
from shared.store import TileStore  # noqa: E402

from .conftest import EPFL  # noqa: E402


def constant_pool(value: float, n: int = 5, tile: int = 32) -> Pool:
    data = np.zeros((n, tile, tile, 2), np.float32)
    data[..., 0] = value
    return Pool(data, np.full((n, 2), tile, np.int32), n)


@pytest.mark.parametrize("batch, ratio, expected", [(8, 0.0, (8, 0)), (10, 0.3, (7, 3)), (8, 0.25, (6, 2)),
                                                    (4, 0.01, (3, 1)), (4, 0.99, (1, 3))])
def test_batch_composition(batch, ratio, expected):
    assert batch_composition(batch, ratio) == expected


def test_rounding_note_names_the_ratio_a_batch_really_holds():
    assert rounding_note(10, 0.3) == rounding_note(8, 0.25) == rounding_note(8, 0.0) == ""
    assert rounding_note(8, 0.3) == (" (ratio 0.25: --synthetic-ratio 0.3 rounded to whole tiles of a "
                                     "batch of 8)")
    assert "ratio 0.25:" in rounding_note(8, 0.2)  # 1.6 tiles round to 2


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_batch_composition_rejects_ratios_outside_unit_interval(ratio):
    with pytest.raises(UserError, match="synthetic-ratio"):
        batch_composition(8, ratio)


def test_real_tiles_per_epoch_do_not_shrink_with_the_ratio():
    for ratio in (0.0, 0.3, 0.5):
        n_real, _ = batch_composition(8, ratio)
        assert steps_per_epoch(264, n_real) * n_real >= 264
    assert steps_per_epoch(264, 8) == 33 and steps_per_epoch(264, 6) == 44


@pytest.mark.parametrize("batch, ratio", [(10, 0.3), (8, 0.5), (5, 0.2)])
def test_every_batch_has_the_exact_synthetic_count(batch, ratio):
    config = DataConfig(batch_size=batch, synthetic_ratio=ratio, augment=AugmentConfig(gray=0.2))
    ds = training_dataset(constant_pool(-0.5), constant_pool(0.5), 32, config)
    n_real, n_syn = batch_composition(batch, ratio)
    for x, y in ds.take(6):
        assert x.shape == (batch, 32, 32, 1) and y.shape == (batch, 32, 32, 1)
        # gray-value variation moves intensities, but never across zero from +-0.5 at strength 0.2
        per_tile = np.asarray(tf.reduce_mean(x, axis=(1, 2, 3)))
        assert int((per_tile > 0).sum()) == n_syn and int((per_tile < 0).sum()) == n_real


def structured_pool(tile: int = 48, size: int = 96) -> Pool:
    """Image = 2 * mask - 1 with an asymmetric pattern: alignment is checkable pixel by pixel."""
    rng = np.random.default_rng(0)
    mask = np.zeros((2, size, size), np.float32)
    for k in range(2):
        for _ in range(12):
            y, x, r = rng.integers(0, size), rng.integers(0, size), rng.integers(3, 9)
            yy, xx = np.ogrid[:size, :size]
            mask[k][(yy - y) ** 2 + (xx - x) ** 2 < r * r] = 1
        mask[k, :20, :5] = 1  # breaks the symmetry
    data = np.stack([2 * mask - 1, mask], -1)
    return Pool(data, np.full((2, 2), size, np.int32), 2)


def windows(pool: Pool, tile: int, aug: AugmentConfig, n: int = 8) -> list[np.ndarray]:
    data, extents = tf.constant(pool.data), tf.constant(pool.extents)
    return [random_window(data, extents, tile, aug, tf.constant([s, 7], tf.int64)).numpy() for s in range(n)]


def test_dihedral_crops_keep_image_and_mask_aligned():
    for w in windows(structured_pool(), 48, AugmentConfig(dihedral=True)):
        assert np.array_equal(w[..., 1], (w[..., 0] > 0).astype(np.float32))


def test_elastic_deformation_uses_one_field_for_image_and_mask():
    pool = structured_pool()
    plain = windows(pool, 48, AugmentConfig(dihedral=False))
    warped = windows(pool, 48, AugmentConfig(dihedral=False, elastic_sigma=4.0, elastic_grid=4))
    changed = 0
    for p, w in zip(plain, warped, strict=True):
        assert set(np.unique(w[..., 1])) <= {0.0, 1.0}
        # the mask is the interpolated mask re-binarized; the image is 2 * mask - 1 interpolated
        agree = np.mean(w[..., 1] == (w[..., 0] >= 0).astype(np.float32))
        assert agree > 0.999
        changed += not np.array_equal(p, w)
    assert changed >= 6


def test_gray_variation_changes_the_image_only():
    pool = structured_pool()
    plain = windows(pool, 48, AugmentConfig(dihedral=False))
    gray = windows(pool, 48, AugmentConfig(dihedral=False, gray=0.3))
    assert all(np.array_equal(p[..., 1], g[..., 1]) for p, g in zip(plain, gray, strict=True))
    assert any(not np.allclose(p[..., 0], g[..., 0]) for p, g in zip(plain, gray, strict=True))
    assert all(np.abs(g[..., 0]).max() <= 1.0 for g in gray)


def test_weight_map_channel_travels_with_the_window():
    pool = structured_pool()
    weight = np.where(pool.data[..., 1:2] > 0, 1.0, 5.0).astype(np.float32)
    pool = Pool(np.concatenate([pool.data, weight], -1), pool.extents, pool.tiles)
    for w in windows(pool, 48, AugmentConfig(dihedral=True)):
        assert np.array_equal(w[..., 2] == 1.0, w[..., 1] == 1.0)


def small_store(tmp_path, tile: int = 32, kind: str = "real", n_slices: int = 3, size: int = 64) -> TileStore:
    rng = np.random.default_rng(1)
    store = TileStore.create(tmp_path / f"{kind}_{tile}", tile_size=tile, kind=kind)
    images, masks, records = [], [], []
    for z in range(n_slices):
        img = rng.integers(0, 256, (size, size), dtype=np.uint8)
        for y in range(0, size, tile):
            for x in range(0, size, tile):
                images.append(img[y:y + tile, x:x + tile])
                masks.append((img[y:y + tile, x:x + tile] > 128).astype(np.uint8))
                records.append({"file": "s.tif", "slice": z, "y": y, "x": x, "height": size, "width": size,
                                "split": "val" if z == n_slices - 1 else "train"})
    store.append(np.stack(images), np.stack(masks), records)
    return store


def test_slices_are_reassembled_from_their_tiles(tmp_path):
    store = small_store(tmp_path)
    pool = real_train_pool(store, DataConfig(random_crops=True))
    assert pool.data.shape == (2, 64, 64, 2) and pool.tiles == 8
    (img, mask), _ = slices_of(store, store.indices("train"))
    assert np.array_equal(img[:32, 32:], store.images([1])[0])
    assert np.array_equal(mask, (pool.data[0, ..., 1]).astype(np.uint8))
    grid = real_train_pool(store, DataConfig(random_crops=False))
    assert grid.data.shape == (8, 32, 32, 2)


def test_epfl_windows_are_aligned(epfl_dir, tmp_path):
    from shared.tiles import build_store

    store = build_store(EPFL / "training.tif", EPFL / "training_groundtruth.tif", tmp_path / "epfl")
    pool = real_train_pool(store, DataConfig())
    assert pool.data.shape[1:3] == (768, 1024) and pool.tiles == len(store.indices("train"))
    aug = AugmentConfig(elastic_sigma=6.0, gray=0.15)
    for w in windows(pool, 256, aug, n=4):
        assert set(np.unique(w[..., 1])) <= {0.0, 1.0} and w.shape == (256, 256, 2)


def test_a_resumed_stream_continues_where_the_killed_run_stopped():
    """skip_batches = epochs done * steps gives the batches an uninterrupted run would have drawn next
    (not the first ones again), real and synthetic alike."""
    config = DataConfig(batch_size=5, synthetic_ratio=0.4, augment=AugmentConfig(gray=0.2, elastic_sigma=3.0))
    pools = (structured_pool(), structured_pool(size=80))
    whole = [x.numpy() for x, _ in training_dataset(*pools, 32, config).take(7)]
    resumed = [x.numpy() for x, _ in training_dataset(*pools, 32, config, skip_batches=4).take(3)]
    for got, want in zip(resumed, whole[4:], strict=True):
        np.testing.assert_array_equal(got, want)
    assert not np.array_equal(resumed[0], whole[0])


def test_resumed_epochs_reads_the_backup_keras_wrote(tmp_path):
    import keras

    from segmentation_tf.training import resumed_epochs

    assert resumed_epochs(tmp_path) == 0
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"), delete_checkpoint=False)
    model.fit(np.zeros((4, 2)), np.zeros((4, 1)), epochs=3, verbose=0, callbacks=[backup])
    assert resumed_epochs(tmp_path) == 3
    (tmp_path / "backup" / "training_metadata.json").write_text("{broken")
    assert resumed_epochs(tmp_path) == 0


def test_a_killed_fit_resumes_only_under_its_own_settings(tmp_path):
    from segmentation_tf.training import BACKUP_SETTINGS, guard_resumed_settings

    trained_under = {"model": {"base_width": 16},
                     "train": {"learning_rate": 1e-3, "time_limit_minutes": 50.0}}
    assert guard_resumed_settings(tmp_path, 0, trained_under) == 0.0  # a fresh fit records its settings
    assert (tmp_path / "backup" / BACKUP_SETTINGS).is_file()
    # the wall-time box is per process: resuming with another one is what a time-boxed user does
    guard_resumed_settings(tmp_path, 3, {**trained_under, "train": {"learning_rate": 1e-3,
                                                                    "time_limit_minutes": 0.0}})
    other = {"model": {"base_width": 8}, "train": {"learning_rate": 1e-2, "time_limit_minutes": 50.0}}
    with pytest.raises(UserError, match=r"backup: a training killed after 3 epoch\(s\) under other settings "
                                        r"\(model.base_width, train.learning_rate\)"):
        guard_resumed_settings(tmp_path, 3, other)
    guard_resumed_settings(tmp_path, 0, other)  # nothing trained yet: starts over under the new flags
    guard_resumed_settings(tmp_path, 3, other)
    (tmp_path / "backup" / BACKUP_SETTINGS).write_text("{broken")  # a backup from before: resumes
    guard_resumed_settings(tmp_path, 3, trained_under)


def test_the_train_clock_carries_the_seconds_of_killed_processes(tmp_path):
    import json

    import keras

    from segmentation_tf.training import BACKUP_SETTINGS, TrainClock, guard_resumed_settings

    path = tmp_path / "backup" / BACKUP_SETTINGS
    settings = {"train": {"epochs": 3}}
    guard_resumed_settings(tmp_path, 0, settings)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    model.fit(np.zeros((4, 2)), np.zeros((4, 1)), epochs=2, verbose=0,
              callbacks=[TrainClock(path, settings, before=100.0)])
    record = json.loads(path.read_text())
    assert record["settings"] == settings and 100.0 < record["train_seconds"] < 160.0
    assert guard_resumed_settings(tmp_path, 2, settings) == record["train_seconds"]  # what a resume adds
