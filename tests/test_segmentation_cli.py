"""segmentation_tf CLIs end to end on tiny stores: fit -> predict -> evaluate, TensorBoard tags,
resume after SIGKILL, MirroredStrategy over 2 logical CPUs, one-line errors for bad input."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from .conftest import ROOT, assert_one_line_error, phantom_store, run_module

pytest.importorskip("tensorflow")

TINY = ["--preset", "quick", "--base-width", "4", "--depth", "2", "--batch-size", "4", "--overlap", "8",
        "--precision", "float32", "--verbose", "2"]


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    return phantom_store(tmp_path_factory.mktemp("seg_cli"), 6, 96, 128, tile=32)


@pytest.fixture(scope="module")
def trained(tiny_store, tmp_path_factory):
    run = tmp_path_factory.mktemp("run") / "seg"
    # --keep-epochs only saves: test_the_same_seed_trains_the_same_model trains without it
    proc = run_module("segmentation_tf.fit", "--store", tiny_store / "store", "--out", run, "--epochs", "2",
                      "--accumulate", "2", "--steps-per-epoch", "3", "--keep-epochs", *TINY, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run, proc


def read_csv(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_fit_saves_model_threshold_and_logs(trained):
    run, proc = trained
    assert (run / "segmenter.keras").is_file() and (run / "best.keras").is_file()
    import json
    meta = json.loads((run / "segmenter.json").read_text())
    assert 0.0 < meta["threshold"] < 1.0 and meta["tile_size"] == 32
    assert meta["provenance"]["train"]["accumulate"] == 2
    assert meta["provenance"]["train"]["steps_per_epoch"] == 3 and "3 steps/epoch" in proc.stdout
    rows = read_csv(run / "log.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert {"loss", "iou", "dice", "val_loss", "val_iou", "val_dice"} <= set(rows[0])
    assert not (run / "backup").exists()  # removed after a finished run
    assert "calibrated threshold" in proc.stdout


def test_fit_ends_with_precise_batchnorm_statistics(trained, tiny_store):
    import json

    import keras

    from segmentation_tf.batchnorm import batchnorm_layers, recompute_on_store
    from segmentation_tf.fit import parser
    from segmentation_tf.presets import FLAGS, PRESETS
    from shared.presets import apply_flags
    from shared.store import TileStore

    run, _ = trained
    meta = json.loads((run / "segmenter.json").read_text())
    record, store = meta["provenance"]["batchnorm_recomputed"], TileStore(tiny_store / "store")
    assert record["tiles"] == meta["provenance"]["real_train_tiles"] == len(store.indices("train"))
    # the saved statistics are those of the saved weights: recomputing them again changes nothing
    saved = keras.saving.load_model(run / "segmenter.keras", compile=False)
    again = keras.saving.load_model(run / "segmenter.keras", compile=False)
    recompute_on_store(again, store, meta["provenance"]["data"]["batch_size"])
    for a, b in zip(batchnorm_layers(saved), batchnorm_layers(again), strict=True):
        assert np.allclose(a.moving_mean, b.moving_mean, atol=1e-5)
        assert np.allclose(a.moving_variance, b.moving_variance, rtol=1e-4, atol=1e-6)
    off = apply_flags(PRESETS["real"], FLAGS, vars(parser().parse_args(["--store", "s", "--no-precise-bn"])))
    assert PRESETS["real"].train.precise_bn and not off.train.precise_bn


def test_the_real_preset_ends_with_an_ema_and_flags_pick_the_other_endings():
    from segmentation_tf.fit import parser, resolved_ending
    from segmentation_tf.presets import FLAGS, PRESETS
    from shared.errors import UserError
    from shared.presets import apply_flags

    def ending(*flags: str) -> tuple[bool, float]:
        args = parser().parse_args(["--store", "s", *flags])
        train = resolved_ending(apply_flags(PRESETS[args.preset], FLAGS, vars(args)).train, args.ema,
                                args.restore_best)
        return train.restore_best, train.ema_momentum

    assert ending("--preset", "real") == (False, 0.99)
    assert ending("--preset", "real", "--ema", "0") == (False, 0.0)  # the last raw weights
    assert ending("--preset", "real", "--restore-best") == (True, 0.0)  # flag > preset: the best epoch
    assert ending("--preset", "real", "--ema", "0", "--restore-best") == (True, 0.0)
    assert ending("--preset", "quick") == (True, 0.0)
    assert ending("--preset", "quick", "--ema", "0.9", "--no-restore-best") == (False, 0.9)
    for flags in (("--preset", "quick", "--ema", "0.9"),
                  ("--preset", "real", "--ema", "0.9", "--restore-best")):
        with pytest.raises(UserError, match="--ema needs --no-restore-best"):
            ending(*flags)


def test_kept_epochs_hold_the_raw_weights_and_studies_read_them_as_keras_did(trained, tiny_store, tmp_path):
    import json

    import keras

    from bench.endings import Blocks, epoch_row, finish_ending, logged_val_iou, picked_epochs
    from segmentation_tf.callbacks import epoch_weights

    run = trained[0]
    logged = logged_val_iou(run)
    kept = sorted(p.name for p in (run / "epochs").iterdir())
    assert kept == ["epoch_001.weights.h5", "epoch_002.weights.h5"]
    # fit restored the best epoch (first of ties): its kept raw weights are the segmenter's trainable ones
    # (the moving statistics differ: fit recomputed them)
    best = picked_epochs({1: {"val_precise": 0.0}, 2: {"val_precise": 0.0}}, logged)["best_moving"]
    assert best == 1 + int(np.argmax(logged))
    saved = keras.saving.load_model(run / "segmenter.keras", compile=False)
    model = keras.saving.load_model(run / "segmenter.keras", compile=False)
    model.load_weights(epoch_weights(run / "epochs", best))
    for a, b in zip(saved.trainable_weights, model.trainable_weights, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    # the study measures a kept epoch's validation IoU as Keras logged it (pooled, at 0.5)
    store = tiny_store / "store"
    blocks = Blocks(store, store, tiny_store / "images.tif", tiny_store / "masks.tif", {})
    row = epoch_row(model, epoch_weights(run / "epochs", 2), blocks, batch_size=4, stat_batches=2)
    assert row["val_moving"] == pytest.approx(logged[1], abs=1e-4)
    assert row["test_moving"] == row["val_moving"]  # the same tiles here
    # an ending finished from a kept epoch: its weights, recomputed statistics, a calibrated threshold
    finish_ending(run, 1, tmp_path / "ending", blocks)
    meta = json.loads((tmp_path / "ending" / "segmenter.json").read_text())
    assert meta["provenance"]["epoch"] == 1 and 0.0 < meta["threshold"] < 1.0
    assert meta["provenance"]["batchnorm_recomputed"]["tiles"] > 0


@pytest.mark.slow
def test_a_run_killed_after_training_resumes_without_training_again(tiny_store, tmp_path, monkeypatch):
    # the window between the end of model.fit (Keras has deleted its backup) and the saved segmenter
    import dataclasses
    import json

    import keras
    import tensorflow as tf

    from segmentation_tf import training
    from segmentation_tf.presets import PRESETS
    from shared.store import TileStore

    quick = PRESETS["quick"]
    inputs = training.RunInputs(
        tmp_path / "run", TileStore(tiny_store / "store"), None,
        dataclasses.replace(quick.model, base_width=4, depth=2),
        dataclasses.replace(quick.data, batch_size=4),
        dataclasses.replace(quick.train, epochs=2, steps_per_epoch=2, overlap=8, verbose=0))
    strategy = tf.distribute.get_strategy()

    def killed(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "calibrate", killed)
    with pytest.raises(KeyboardInterrupt):
        training.fit(inputs, strategy, "float32")
    run = inputs.run_dir
    assert (run / training.TRAINED).is_file() and (run / training.TRAINED_RECORD).is_file()
    assert not (run / "segmenter.json").exists() and not (run / "backup").exists()
    trained = training.build_unet(inputs.model)
    trained.load_weights(run / training.TRAINED)

    monkeypatch.undo()
    monkeypatch.setattr(training, "run_phase", lambda *a, **k: pytest.fail("trained again"))
    # kept weights trained under other settings are neither used nor thrown away
    other = dataclasses.replace(inputs, train=dataclasses.replace(inputs.train, learning_rate=0.5))
    with pytest.raises(training.UserError, match=r"trained\.json: .*other settings \(train\.learning_rate\)"):
        training.fit(other, strategy, "float32")
    assert (run / training.TRAINED).is_file() and (run / training.TRAINED_RECORD).is_file()
    # what is applied after training may change (here the calibration's window overlap)
    inputs = dataclasses.replace(inputs, train=dataclasses.replace(inputs.train, overlap=16))
    provenance = training.fit(inputs, strategy, "float32")
    assert provenance["epochs_this_process"] == 2
    assert set(provenance["last_epoch_logs"]) >= {"loss", "val_iou"}
    saved = keras.saving.load_model(run / "segmenter.keras", compile=False)
    for a, b in zip(saved.trainable_weights, trained.trainable_weights, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert json.loads((run / "segmenter.json").read_text())["provenance"]["batchnorm_recomputed"]["tiles"] > 0
    assert not (run / training.TRAINED).exists() and not (run / training.TRAINED_RECORD).exists()


@pytest.mark.slow
def test_the_same_seed_trains_the_same_model(trained, tiny_store, tmp_path):
    import keras

    args = ["--store", tiny_store / "store", "--epochs", "2", "--accumulate", "2", "--steps-per-epoch", "3",
            *TINY]
    for name, seed in (("same", "0"), ("other", "1")):
        proc = run_module("segmentation_tf.fit", *args, "--out", tmp_path / name, "--seed", seed, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]

    def weights(run):
        return keras.saving.load_model(run / "segmenter.keras", compile=False).get_weights()

    first, same, other = weights(trained[0]), weights(tmp_path / "same"), weights(tmp_path / "other")
    assert all(np.array_equal(a, b) for a, b in zip(first, same, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def event_tags(folder):
    import tensorflow as tf

    tags = set()
    for path in folder.rglob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            tags |= {(path.parent.name, v.tag) for v in event.summary.value}
    return tags


def test_tensorboard_has_scalars_and_image_panels(trained):
    tags = event_tags(trained[0] / "tensorboard")
    for tag in ("epoch_loss", "epoch_iou", "epoch_dice"):
        assert ("train", tag) in tags and ("validation", tag) in tags, sorted(tags)
    for tag in ("panels/input", "panels/truth", "panels/prediction"):
        assert ("images", tag) in tags, sorted(tags)


def test_predict_and_evaluate_use_the_calibrated_threshold(trained, tiny_store, tmp_path):
    import json

    import tifffile

    run = trained[0]
    threshold = json.loads((run / "segmenter.json").read_text())["threshold"]
    proc = run_module("segmentation_tf.predict", "--model", run, "--images", tiny_store / "images.tif",
                      "--out", tmp_path / "pred", "--overlap", "8", "--tta")
    assert proc.returncode == 0, proc.stderr[-2000:]
    prob = tifffile.imread(tmp_path / "pred" / "probability.tif")
    mask = tifffile.imread(tmp_path / "pred" / "mask.tif")
    assert prob.shape == mask.shape == (6, 96, 128) and prob.dtype == np.float32
    assert np.array_equal(mask > 0, prob >= threshold)
    out = tmp_path / "scores.json"
    proc = run_module("segmentation_tf.evaluate", "--model", run, "--images", tiny_store / "images.tif",
                      "--masks", tiny_store / "masks.tif", "--overlap", "8", "--json", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    scores = json.loads(out.read_text())
    assert scores["threshold"] == threshold and len(scores["slices"]) == 6
    assert 0.0 <= scores["iou"] <= scores["dice"] <= 1.0
    proc = run_module("segmentation_tf.evaluate", "--model", run, "--store", tiny_store / "store",
                      "--split", "val", "--overlap", "8")
    assert proc.returncode == 0 and "overall  IoU" in proc.stdout, proc.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.fault("segmenter", "fit killed with SIGKILL mid-training", "rerun resumes at the next epoch")
def test_resume_after_sigkill_continues_at_the_right_epoch(tiny_store, tmp_path):
    run = tmp_path / "seg"
    args = [sys.executable, "-m", "segmentation_tf.fit", "--store", str(tiny_store / "store"),
            "--out", str(run), "--epochs", "12", "--schedule", "plateau", "--patience", "100", *TINY]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if (run / "log.csv").exists() and len(read_csv(run / "log.csv")) >= 3:
                break
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "segmenter.json").exists(), "finished before it could be killed"
    logged = len(read_csv(run / "log.csv"))
    assert (run / "backup").is_dir()
    # other flags would mix the killed training's weights and optimizer with a new intent: refused
    other = subprocess.run([*args, "--lr", "0.01"], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=300)
    assert_one_line_error(other, str(run / "backup"), "(train.learning_rate)")
    # another wall-time box is what a time-boxed user resumes with
    done = subprocess.run([*args, "--time-limit", "100"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    first = int(re.search(r"Epoch (\d+)/12", done.stdout).group(1)) - 1  # 0-based first epoch run again
    assert first in (logged, logged + 1), (first, logged)  # the backup is taken just before the CSV row
    epochs = [int(r["epoch"]) for r in read_csv(run / "log.csv")]
    assert epochs == sorted(set(epochs)) and epochs[0] == 0 and epochs[-1] == 11
    provenance = json.loads((run / "segmenter.json").read_text())["provenance"]
    assert provenance["train_seconds_all_processes"] > provenance["train_seconds_this_process"] > 0
    # the resumed run is the uninterrupted one: same weights and optimizer state, and its data stream
    # continues (it once started over, and a resumed k = 1 evidence cell scored 0.74 instead of 0.80)
    whole = [*args[:args.index("--out") + 1], str(tmp_path / "whole"), *args[args.index("--out") + 2:]]
    assert subprocess.run(whole, cwd=ROOT, env=env, capture_output=True, timeout=300).returncode == 0
    last = [float(read_csv(r / "log.csv")[-1]["loss"]) for r in (run, tmp_path / "whole")]
    assert last[0] == pytest.approx(last[1], rel=1e-3), last


def synthetic_copy(store_path, out):
    """A synthetic store (kind 'synthetic', split 'train', provenance) from a real store's tiles."""
    from shared.store import TileStore

    real = TileStore(store_path)
    idx = real.indices("train")[:10]
    syn = TileStore.create(out, tile_size=real.tile_size, kind="synthetic")
    syn.append(real.raw_images(idx), real.masks(idx), [{"split": "train", "provenance": {"seed": int(i)}}
                                                       for i in idx])
    return out


@pytest.mark.slow
def test_mirrored_strategy_with_synthetic_tiles_and_weight_maps(tiny_store, tmp_path):
    """Two logical CPUs under MirroredStrategy; a 50% synthetic batch share; border weight maps."""
    syn = synthetic_copy(tiny_store / "store", tmp_path / "syn")
    proc = run_module("segmentation_tf.fit", "--store", tiny_store / "store", "--out", tmp_path / "seg",
                      "--epochs", "1", "--cpu-devices", "2", "--synthetic-store", syn,
                      "--synthetic-ratio", "0.5", "--weight-w0", "5", "--elastic", "2", *TINY, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 replica(s)" in proc.stdout and "2 real + 2 synthetic" in proc.stdout
    assert (tmp_path / "seg" / "segmenter.keras").is_file()


@pytest.mark.fault("segmenter", "--synthetic-ratio outside [0, 1) or not a number", "one-line error, exit 2")
@pytest.mark.parametrize("ratio", ["-0.1", "1", "1.5", "abc", "nan"])
def test_bad_synthetic_ratio(tiny_store, tmp_path, ratio):
    proc = run_module("segmentation_tf.fit", "--store", tiny_store / "store", "--out", tmp_path / "r",
                      "--synthetic-ratio", ratio)
    assert_one_line_error(proc, "--synthetic-ratio")


@pytest.mark.fault("segmenter", "synthetic store with another tile size", "one-line error, exit 2")
def test_synthetic_store_of_another_tile_size(tiny_store, tmp_path):
    from shared.store import TileStore

    syn = TileStore.create(tmp_path / "syn", tile_size=16, kind="synthetic")
    syn.append(np.zeros((2, 16, 16), np.uint8), np.zeros((2, 16, 16), np.uint8),
               [{"split": "train", "provenance": {}}] * 2)
    proc = run_module("segmentation_tf.fit", "--store", tiny_store / "store", "--out", tmp_path / "r",
                      "--synthetic-store", tmp_path / "syn", "--synthetic-ratio", "0.3", *TINY)
    assert_one_line_error(proc, "16x16", "32x32")


@pytest.mark.fault("segmenter", "no validation slices after the split", "one-line error, exit 2")
def test_no_validation_slices(tiny_store, tmp_path):
    from shared.tiles import BuildConfig, build_store

    build_store(tiny_store / "images.tif", tiny_store / "masks.tif", tmp_path / "noval",
                BuildConfig(tile=32, val_fraction=0.0))
    proc = run_module("segmentation_tf.fit", "--store", tmp_path / "noval", "--out", tmp_path / "r", *TINY)
    assert_one_line_error(proc, "val")
    proc = run_module("segmentation_tf.fit", "--images", tiny_store / "images.tif", "--masks",
                      tiny_store / "masks.tif", "--val-fraction", "0.99", "--out", tmp_path / "r2", *TINY)
    assert_one_line_error(proc)


@pytest.mark.fault("segmenter", "ratio > 0 without a synthetic store; missing model",
                   "one-line error, exit 2")
def test_other_bad_input(tiny_store, tmp_path):
    proc = run_module("segmentation_tf.fit", "--store", tiny_store / "store", "--out", tmp_path / "r",
                      "--synthetic-ratio", "0.3", *TINY)
    assert_one_line_error(proc, "--synthetic-store")
    proc = run_module("segmentation_tf.predict", "--model", tmp_path / "nothing", "--images",
                      tiny_store / "images.tif", "--out", tmp_path / "p")
    assert_one_line_error(proc, "segmenter")


def test_chosen_tiles_and_per_tile_iou_by_hand():
    from segmentation_tf.filter_synthetic import chosen_tiles
    from segmentation_tf.scores import per_tile_iou

    probs = np.zeros((3, 2, 2), np.float32)
    probs[0, 0, :] = 0.9            # predicts the top row
    probs[1] = 0.9                  # predicts everything
    masks = np.zeros((3, 2, 2), np.uint8)
    masks[0, 0, 0] = 1              # tile 0: |P ∩ T| 1, |P ∪ T| 2 -> 0.5
    masks[1, 1, :] = 1              # tile 1: 2 / 4 -> 0.5
    # tile 2: both empty -> 1.0
    np.testing.assert_allclose(per_tile_iou(probs, masks, 0.5), [0.5, 0.5, 1.0])
    scores = np.array([0.2, 0.7, 0.5, 0.7, 0.9])
    np.testing.assert_array_equal(chosen_tiles(scores, 0.5, None), [4, 1, 3, 2])
    np.testing.assert_array_equal(chosen_tiles(scores, 0.5, 2), [4, 1])  # ties keep store order
    assert len(chosen_tiles(scores, 0.95, None)) == 0


def test_filtered_pairs_keep_their_annotated_areas(tmp_path):
    """Pairs pasted onto partly annotated tiles keep what nobody annotated unknown when filtered: tiles 2
    and 0 kept (in store order), each with its own annotated area, the masks as they were."""
    from segmentation_tf.filter_synthetic import write_filtered
    from shared.store import TileStore

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 32, 32), dtype=np.uint8)
    masks = np.zeros((3, 32, 32), np.uint8)
    masks[:, 4:10, 4:10] = 1
    annotated = np.ones((3, 32, 32), np.uint8)
    annotated[0, 20:, :] = 0     # tile 0: its bottom rows unknown
    annotated[2, :, 24:] = 0     # tile 2: its right columns unknown
    store = TileStore.create(tmp_path / "pasted", 32, kind="synthetic")
    store.append(images, masks, [{"source": "copy_paste", "split": "train"} for _ in range(3)],
                 annotated=annotated)
    write_filtered(store, np.array([2, 0]), np.array([0.4, 0.1, 0.9]), tmp_path / "kept", {})
    kept = TileStore(tmp_path / "kept")
    assert kept.partially_annotated and len(kept) == 2
    np.testing.assert_array_equal(kept.annotated(kept.indices()), annotated[[0, 2]])
    np.testing.assert_array_equal(kept.masks(kept.indices()), masks[[0, 2]])
    assert [r["judge_iou"] for r in kept.records] == [0.4, 0.9]


def test_filter_synthetic_keeps_the_tiles_the_judge_scores_best(trained, tiny_store, tmp_path):
    from segmentation_tf.artifacts import load_segmenter
    from segmentation_tf.inference import model_fn
    from segmentation_tf.scores import per_tile_iou
    from shared.store import TileStore

    real = TileStore(tiny_store / "store")
    idx = real.indices("train")
    masks = real.masks(idx)
    masks[::2] = 1 - masks[::2]  # every other pair shows the wrong mask
    syn = TileStore.create(tmp_path / "syn", real.tile_size, kind="synthetic")
    syn.append(real.raw_images(idx), masks, [{"source": "synthetic", "seed": int(i), "split": "train"}
                                             for i in range(len(idx))])
    judge = load_segmenter(trained[0])
    want = per_tile_iou(model_fn(judge.model)(syn.images(syn.indices())), masks, judge.threshold)
    proc = run_module("segmentation_tf.filter_synthetic", "--judge", trained[0], "--store", syn.path,
                      "--out", tmp_path / "kept", "--min-iou", "0", "--keep", "3")
    assert proc.returncode == 0, proc.stderr[-2000:]
    kept = TileStore(tmp_path / "kept")
    best = sorted(np.argsort(-want, kind="stable")[:3])
    assert [r["seed"] for r in kept.records] == best
    np.testing.assert_allclose([r["judge_iou"] for r in kept.records], want[best], atol=1e-6)
    np.testing.assert_array_equal(kept.masks(kept.indices()), masks[best])
    np.testing.assert_array_equal(kept.raw_images(kept.indices()), real.raw_images(idx[best]))
    assert kept.manifest.kind == "synthetic" and f"kept 3 of {len(idx)} tiles" in proc.stdout
    assert not list(tmp_path.glob(".kept.tmp-*"))
    # bad input: an existing --out, an IoU outside [0, 1], a bar no tile reaches
    proc = run_module("segmentation_tf.filter_synthetic", "--judge", trained[0], "--store", syn.path,
                      "--out", tmp_path / "kept")
    assert_one_line_error(proc, "kept", "already exists")
    proc = run_module("segmentation_tf.filter_synthetic", "--judge", trained[0], "--store", syn.path,
                      "--out", tmp_path / "k2", "--min-iou", "1.5")
    assert_one_line_error(proc, "--min-iou", "[0, 1]")
    if want.max() < 1.0:
        proc = run_module("segmentation_tf.filter_synthetic", "--judge", trained[0], "--store", syn.path,
                          "--out", tmp_path / "k3", "--min-iou", "1")
        assert_one_line_error(proc, "no tile reaches IoU 1.0")
        assert not (tmp_path / "k3").exists()
