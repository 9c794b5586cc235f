"""Partial annotations: a store built with --annotated AREA.tif keeps where its masks were drawn; the
segmenter's loss leaves the other pixels out; readers that take every mask pixel as known refuse it."""

import json
import math

import numpy as np
import pytest

from shared.errors import UserError
from shared.splits import labels_by_slice, z_block_split
from shared.store import TileStore
from shared.tiff_io import write_stack
from shared.tiles import BuildConfig, build_store

from .conftest import assert_one_line_error, run_module

SLICES, HEIGHT, WIDTH, TILE = 6, 96, 128, 32


@pytest.fixture(scope="module")
def partial(tmp_path_factory):
    """Phantom stacks, an annotated area (the left 64 columns of every training slice, validation
    slices whole) and the store built from them: (root, store path, area stack)."""
    from shared.phantom import PhantomConfig, phantom_stack

    root = tmp_path_factory.mktemp("partial")
    images, masks = phantom_stack(SLICES, seed=3, config=PhantomConfig(height=HEIGHT, width=WIDTH))
    split = labels_by_slice(z_block_split(SLICES, 0.2, 0.0, 0))
    area = np.zeros_like(masks)
    area[:, :, :64] = 1
    for z, name in split.items():
        area[z] = 1 if name != "train" else area[z]
    write_stack(root / "images.tif", images)
    write_stack(root / "masks.tif", masks * 255)
    write_stack(root / "area.tif", area * 255)
    build_store(root / "images.tif", root / "masks.tif", root / "store", BuildConfig(tile=TILE),
                root / "area.tif")
    return root, root / "store", area, masks


def test_a_store_keeps_the_annotated_area_and_zeroes_masks_outside_it(partial):
    root, path, area, masks = partial
    store = TileStore(path)
    assert store.partially_annotated
    idx = store.indices()
    for i, known, mask in zip(idx, store.annotated(idx), store.masks(idx), strict=True):
        r = store.records[int(i)]
        window = (slice(r["y"], r["y"] + TILE), slice(r["x"], r["x"] + TILE))
        np.testing.assert_array_equal(known, area[r["slice"]][window])
        np.testing.assert_array_equal(mask, masks[r["slice"]][window] * area[r["slice"]][window])
    # foreground of the annotated pixels, by hand; the annotated share of each split
    train = store.indices("train")
    fg = store.masks(train).sum() / store.annotated(train).sum()
    summary = store.summary()["splits"]
    assert summary["train"]["foreground_fraction"] == pytest.approx(fg)
    assert summary["train"]["annotated_fraction"] == pytest.approx(0.5)  # 64 of 128 columns
    assert summary["val"]["annotated_fraction"] == 1.0
    # a fully annotated chunk appended later reads as annotated everywhere; a fully annotated store's
    # manifest is as it always was (no "annotated" key)
    plain = TileStore.create(root / "plain", TILE)
    plain.append(np.zeros((2, TILE, TILE), np.uint8), np.ones((2, TILE, TILE), np.uint8), [{}, {}])
    assert not plain.partially_annotated and plain.annotated([0, 1]).all()
    chunks = json.loads((root / "plain" / "manifest.json").read_text())["chunks"]
    assert all("annotated" not in c for c in chunks)
    with pytest.raises(UserError, match="annotated areas .* need masks and must match tiles"):
        plain.append(np.zeros((1, TILE, TILE), np.uint8), np.ones((1, TILE, TILE), np.uint8), [{}],
                     annotated=np.ones((1, TILE, 8), np.uint8))


def test_the_build_command_shows_the_annotated_share_and_refuses_bad_areas(partial, tmp_path):
    root, path, _, _ = partial
    info = run_module("shared.tiles", "info", path)
    assert info.returncode == 0 and "annotated" in info.stdout and "0.5000" in info.stdout
    write_stack(tmp_path / "small.tif", np.ones((SLICES, HEIGHT, WIDTH // 2), np.uint8))
    write_stack(tmp_path / "empty.tif", np.zeros((SLICES, HEIGHT, WIDTH), np.uint8))
    common = ["build", "--images", root / "images.tif", "--tile", TILE]
    for area, needle in (("small.tif", "small.tif: masks are 64x96"), ("empty.tif", "no pixel is marked")):
        proc = run_module("shared.tiles", *common, "--masks", root / "masks.tif", "--annotated",
                          tmp_path / area, "--out", tmp_path / f"out_{area}")
        assert_one_line_error(proc, needle)
        assert not (tmp_path / f"out_{area}").exists()
    proc = run_module("shared.tiles", *common, "--annotated", root / "area.tif", "--out", tmp_path / "o")
    assert_one_line_error(proc, "area.tif: annotated areas need --masks")


def test_unannotated_pixels_leave_the_loss_by_hand():
    """Two pixels annotated (y = 1, p = 0.8; y = 0, p = 0.4), two not: the loss is BCE over the two and
    1 - soft Jaccard over the two, whatever is predicted on the others."""
    pytest.importorskip("tensorflow")
    from segmentation_tf.losses import BceJaccardLoss

    mask = np.array([[1, 0], [1, 0]], np.float32)
    known = np.array([[1, 1], [0, 0]], np.float32)
    target = np.stack([mask, known], -1)[None]
    bce = -(math.log(0.8) + math.log(0.6)) / 2
    jaccard = (0.8 + 1) / (1 + 1.2 - 0.8 + 1)
    expected = bce + 1 - jaccard
    loss = BceJaccardLoss(tile_weights=True)
    for others in (0.0, 0.5, 0.99):
        prob = np.array([[0.8, 0.4], [others, others]], np.float32)[None, ..., None]
        assert float(loss(target, prob)) == pytest.approx(expected, rel=1e-5)


def test_the_pipeline_carries_the_area_and_validation_must_be_whole(partial, tmp_path):
    pytest.importorskip("tensorflow")
    from segmentation_tf.config import DataConfig
    from segmentation_tf.data import real_train_pool, synthetic_pool, training_dataset, validation_arrays

    _, path, _, _ = partial
    store = TileStore(path)
    for crops in (True, False):  # whole slices (random crops) and grid tiles
        config = DataConfig(batch_size=4, random_crops=crops, synthetic_ratio=0.25)
        pool = real_train_pool(store, config)
        assert pool.annotated and pool.data.shape[-1] == 3
        plain = TileStore.create(tmp_path / f"syn{crops}", TILE, kind="synthetic")
        plain.append(np.zeros((2, TILE, TILE), np.uint8), np.zeros((2, TILE, TILE), np.uint8), [{}, {}])
        x, y = next(iter(training_dataset(pool, synthetic_pool(plain, config), TILE, config)))
        assert y.shape == (4, TILE, TILE, 2)
        weights = np.asarray(y[..., 1])
        assert 0 < weights[:3].mean() < 1 and np.all(weights[3] == 1.0)  # real: the area; synthetic: 1
    _, y = validation_arrays(store, DataConfig(), weighted=True)
    assert y.shape[-1] == 2 and np.all(y[..., 1] == 1.0)
    with pytest.raises(UserError, match=r"its 'train' slices must be annotated whole \(slice \d+ has"):
        validation_arrays(store, DataConfig(), split="train")


@pytest.mark.slow
def test_unannotated_pixels_leave_the_training_metrics_by_hand():
    """Annotated: (y = 1, p = 0.8) and (y = 0, p = 0.6) at threshold 0.5: I = 1, P = 2, T = 1, so IoU 1/2
    and Dice 2/3 whatever is predicted on the two unannotated pixels (one of them a mask 1 outside the
    area, as the store never holds; counted as background it would move both)."""
    pytest.importorskip("tensorflow")
    from segmentation_tf.metrics import ForegroundDice, ForegroundIoU

    mask = np.array([[1, 0], [1, 0]], np.float32)
    known = np.array([[1, 1], [0, 0]], np.float32)
    target = np.stack([mask, known], -1)[None]
    for others in (0.0, 0.99):
        prob = np.array([[0.8, 0.6], [others, others]], np.float32)[None, ..., None]
        iou, dice = ForegroundIoU(0.5, annotated_last=True), ForegroundDice(0.5, annotated_last=True)
        for m in (iou, dice):
            m.update_state(target, prob)
        assert float(iou.result()) == pytest.approx(1 / 2) and float(dice.result()) == pytest.approx(2 / 3)
    blind = ForegroundIoU(0.5)  # every pixel counted: I = 1, P = 2, T = 2
    blind.update_state(target, np.array([[0.8, 0.6], [0.0, 0.0]], np.float32)[None, ..., None])
    assert float(blind.result()) == pytest.approx(1 / 3)
    restored = ForegroundIoU.from_config(ForegroundIoU(0.5, annotated_last=True).get_config())
    assert restored.annotated_last


def test_fit_trains_on_a_partially_annotated_store(partial, tmp_path):
    from .test_segmentation_cli import TINY

    _, path, _, _ = partial
    proc = run_module("segmentation_tf.fit", "--store", path, "--out", tmp_path / "seg", "--epochs", "1",
                      "--steps-per-epoch", "2", *TINY, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "seg" / "segmenter.json").exists()


def _partial_256(path):
    """A 256 px store of two phantom tiles annotated on their left half."""
    from shared.phantom import PhantomConfig, phantom_stack

    images, masks = phantom_stack(2, seed=3, config=PhantomConfig(height=256, width=256))
    area = np.zeros_like(masks)
    area[:, :, :128] = 1
    TileStore.create(path, 256).append(images, masks, [{"split": "train"}] * 2, annotated=area)
    return path


def test_pairs_pasted_onto_partly_annotated_tiles_are_annotated_there_and_on_the_pasted_objects(tmp_path):
    """copy_paste onto a partially annotated store: each pair's area is its background's (turned as
    the background was) plus the pasted objects with their 2 px rings; masks stay within it."""
    from scipy import ndimage

    from shared.tiling import dihedral

    path = _partial_256(tmp_path / "store")
    out = tmp_path / "pasted"
    proc = run_module("generation_torch.copy_paste", "--labelled", path, "--n", "4", "--out", out,
                      "--no-progress")
    assert proc.returncode == 0, proc.stderr
    pasted, source = TileStore(out), TileStore(path)
    assert pasted.partially_annotated
    for i, record in enumerate(pasted.records):
        area = dihedral(source.annotated([record["background"]])[0], record["background_dihedral"])
        below = dihedral(source.masks([record["background"]])[0], record["background_dihedral"])
        objects = (pasted.masks([i])[0] > 0) & (below == 0)
        ring = ndimage.binary_dilation(objects, iterations=2)
        np.testing.assert_array_equal(pasted.annotated([i])[0], (area > 0) | ring)
        assert objects.any() or not record["objects"]


def test_readers_that_take_every_mask_pixel_as_known_refuse_it(tmp_path):
    path = _partial_256(tmp_path / "store")
    torch = pytest.importorskip("torch")
    assert torch
    from generation_torch.data import load_split
    from generation_torch.masks import load_pair_source

    with pytest.raises(UserError, match="partially annotated .*; the generator .* needs masks annotated"):
        load_split(TileStore(path), "train")
    with pytest.raises(UserError, match="partially annotated .*; starting from a tile"):
        load_pair_source(path)


def test_the_trainers_data_flags_take_the_annotated_area_with_the_stacks(partial, tmp_path):
    import argparse

    from shared.sources import add_data_flags, resolve_real_store, source_from_args

    root, _, _, _ = partial
    parser = argparse.ArgumentParser()
    add_data_flags(parser)
    args = parser.parse_args(["--images", str(root / "images.tif"), "--masks", str(root / "masks.tif"),
                              "--annotated", str(root / "area.tif")])
    store = resolve_real_store(source_from_args(args), tmp_path / "run")
    assert store.partially_annotated and store.path == tmp_path / "run" / "real_store"
    with pytest.raises(UserError, match="--annotated goes with --images/--masks"):
        source_from_args(parser.parse_args(["--store", "s", "--annotated", "a.tif"]))
