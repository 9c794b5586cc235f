"""Ways to train on generated pairs: a loss weight per synthetic tile (--synthetic-weight) and a
synthetic-first schedule (--synthetic-schedule pretrain), against hand-computed values and real runs."""

import json
import math

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from segmentation_tf.config import DataConfig  # noqa: E402
from segmentation_tf.data import Pool, training_dataset, validation_arrays  # noqa: E402
from segmentation_tf.losses import BceJaccardLoss  # noqa: E402
from shared.store import TileStore  # noqa: E402

from .conftest import assert_one_line_error, run_module  # noqa: E402
from .test_segmentation_cli import TINY, synthetic_copy, tiny_store  # noqa: E402, F401

MASK = np.array([[1, 0], [0, 1]], np.float32)
PROB = np.array([[0.8, 0.2], [0.4, 0.6]], np.float32)


def with_tile(weight: float) -> np.ndarray:
    """One 2x2 tile as (1, 2, 2, 2): the mask and a constant tile-weight channel."""
    return np.stack([MASK, np.full_like(MASK, weight)], -1)[None]


def test_tile_weight_scales_both_terms_by_hand():
    # two tiles: the first (real, weight 1) as in the unweighted test, the second (synthetic, weight
    # 0.5) predicts everything at 0.5
    prob = np.stack([PROB, np.full_like(PROB, 0.5)])[..., None]
    target = np.concatenate([with_tile(1.0), with_tile(0.5)])
    bce_real = -(2 * math.log(0.8) + 2 * math.log(0.6))
    bce_syn = 4 * -math.log(0.5)
    bce = (bce_real + 0.5 * bce_syn) / 8
    inter = 1.4 + 0.5 * (0.5 + 0.5)
    union = (2 + 0.5 * 2) + (2.0 + 0.5 * 2.0) - inter
    expected = bce + 1 - (inter + 1) / (union + 1)
    got = float(BceJaccardLoss(tile_weights=True)(target, prob))
    assert got == pytest.approx(expected, rel=1e-5)


def test_weight_one_tiles_equal_the_unweighted_loss():
    plain = float(BceJaccardLoss()(MASK[None, ..., None], PROB[None, ..., None]))
    assert float(BceJaccardLoss(tile_weights=True)(with_tile(1.0), PROB[None, ..., None])) == \
        pytest.approx(plain, rel=1e-6)


def constant_pool(value: float, n: int = 4, tile: int = 32) -> Pool:
    data = np.zeros((n, tile, tile, 2), np.float32)
    data[..., 0] = value
    return Pool(data, np.full((n, 2), tile, np.int32), n)


def test_synthetic_rows_carry_their_weight_in_the_target():
    config = DataConfig(batch_size=8, synthetic_ratio=0.25, synthetic_weight=0.3)
    for x, y in training_dataset(constant_pool(-0.5), constant_pool(0.5), 32, config).take(3):
        assert y.shape == (8, 32, 32, 2)
        weights = np.asarray(y[..., 1]).reshape(8, -1)
        synthetic = np.asarray(x).reshape(8, -1).mean(axis=1) > 0
        assert np.allclose(weights[synthetic], 0.3) and np.allclose(weights[~synthetic], 1.0)
        assert synthetic.sum() == 2
    # no weight channel where none is needed (W = 1: the loss and targets are as before)
    _, y = next(iter(training_dataset(constant_pool(-0.5), constant_pool(0.5), 32,
                                      DataConfig(batch_size=8, synthetic_ratio=0.25))))
    assert y.shape[-1] == 1


def test_validation_targets_match_the_weighted_loss(tiny_store):  # noqa: F811
    store = TileStore(tiny_store / "store")
    _, y = validation_arrays(store, DataConfig(synthetic_ratio=0.3, synthetic_weight=2.0))
    assert y.shape[-1] == 2 and np.all(y[..., 1] == 1.0)


@pytest.mark.slow
def test_pretrain_runs_both_phases_and_resumes(tiny_store, tmp_path):  # noqa: F811
    syn = synthetic_copy(tiny_store / "store", tmp_path / "syn")
    run = tmp_path / "seg"
    args = ["--store", tiny_store / "store", "--out", run, "--epochs", "2", "--synthetic-store", syn,
            "--synthetic-schedule", "pretrain", "--pretrain-epochs", "1", *TINY]
    proc = run_module("segmentation_tf.fit", *args, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "4 synthetic tiles (pre-training)" in proc.stdout and "4 real + 0 synthetic tiles" in proc.stdout
    assert (run / "pretrain" / "pretrained.weights.h5").is_file()
    for phase in (run / "pretrain", run):  # TensorBoard for both phases
        assert list((phase / "tensorboard" / "train").glob("events.out.tfevents.*"))
    meta = json.loads((run / "segmenter.json").read_text())
    assert meta["provenance"]["train"]["synthetic_schedule"] == "pretrain"
    assert meta["provenance"]["synthetic_store"] == str(syn)
    # a rerun after the synthetic phase finished does not train it again
    (run / "segmenter.json").unlink()
    again = run_module("segmentation_tf.fit", *args, timeout=300)
    assert again.returncode == 0 and "(pre-training)" not in again.stdout


@pytest.mark.slow
def test_weight_reaches_the_fit(tiny_store, tmp_path):  # noqa: F811
    syn = synthetic_copy(tiny_store / "store", tmp_path / "syn")
    proc = run_module("segmentation_tf.fit", "--store", tiny_store / "store", "--out", tmp_path / "w",
                      "--epochs", "1", "--synthetic-store", syn, "--synthetic-ratio", "0.5",
                      "--synthetic-weight", "0.25", *TINY, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((tmp_path / "w" / "segmenter.json").read_text())
    assert meta["provenance"]["data"]["synthetic_weight"] == 0.25


@pytest.mark.fault("segmenter", "nonsense synthetic schedule/weight combinations", "one-line error, exit 2")
@pytest.mark.parametrize("flags, needle", [
    (["--synthetic-schedule", "pretrain"], "--synthetic-store"),
    (["--synthetic-schedule", "pretrain", "--synthetic-store", "SYN", "--synthetic-ratio", "0.3"],
     "drop --synthetic-ratio"),
    (["--synthetic-weight", "0.5"], "--synthetic-weight"),
    (["--synthetic-schedule", "pretrain", "--synthetic-store", "SYN", "--synthetic-weight", "2"],
     "--synthetic-weight"),
    (["--pretrain-epochs", "2"], "--pretrain-epochs"),
    (["--synthetic-store", "SYN"], "without --synthetic-ratio"),
])
def test_nonsense_combinations_are_refused(tiny_store, tmp_path, flags, needle):  # noqa: F811
    syn = str(synthetic_copy(tiny_store / "store", tmp_path / "syn"))
    flags = [syn if f == "SYN" else f for f in flags]
    proc = run_module("segmentation_tf.fit", "--store", tiny_store / "store", "--out", tmp_path / "r",
                      *flags, *TINY)
    assert_one_line_error(proc, needle)
    assert not (tmp_path / "r" / "segmenter.json").exists()


@pytest.mark.slow
def test_fit_reads_the_default_synthetic_store(tiny_store, tmp_path):  # noqa: F811
    import os
    import subprocess
    import sys

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    cmd = [sys.executable, "-m", "segmentation_tf.fit", "--store", str(tiny_store / "store"), "--out", "seg",
           "--epochs", "1", "--synthetic-ratio", "0.5", *map(str, TINY)]
    missing = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert missing.returncode == 2 and "python -m generation_torch.sample" in missing.stderr
    (tmp_path / "runs").mkdir()
    synthetic_copy(tiny_store / "store", tmp_path / "runs" / "synthetic_store")  # where sample writes
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    meta = json.loads((tmp_path / "seg" / "segmenter.json").read_text())
    assert meta["provenance"]["synthetic_store"] == "runs/synthetic_store"


@pytest.mark.slow
def test_ema_ends_training_with_averaged_weights(tiny_store, tmp_path):  # noqa: F811
    import keras

    weights = {}
    for name, flags in (("plain", ["--no-restore-best"]), ("ema", ["--ema", "0.9", "--no-restore-best"])):
        proc = run_module("segmentation_tf.fit", "--store", tiny_store / "store", "--out", tmp_path / name,
                          "--epochs", "1", "--seed", "3", *flags, *TINY, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        weights[name] = keras.saving.load_model(tmp_path / name / "segmenter.keras").get_weights()
    meta = json.loads((tmp_path / "ema" / "segmenter.json").read_text())
    assert meta["provenance"]["train"]["ema_momentum"] == 0.9
    # same seed, same batches: only the averaging differs, and it changes the saved weights
    assert any(not np.allclose(a, b) for a, b in zip(weights["plain"], weights["ema"], strict=True))
    refused = run_module("segmentation_tf.fit", "--store", tiny_store / "store", "--out", tmp_path / "r",
                         "--ema", "0.9", *TINY)
    assert_one_line_error(refused, "--no-restore-best")
