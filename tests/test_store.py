"""The tile store: round trips, splits, atomic appends, locking, corrupt stores."""

import json
import multiprocessing as mp

import numpy as np
import pytest
import tifffile

from shared.errors import UserError
from shared.normalization import normalize
from shared.store import MANIFEST, TileStore

T = 16


def tiles(n, start=0):
    images = np.stack([np.full((T, T), (start + k) % 256, np.uint8) for k in range(n)])
    masks = (images % 2).astype(np.uint8)
    records = [{"source": "real", "file": "x.tif", "slice": start + k, "y": 0, "x": 0,
                "split": "val" if (start + k) % 3 == 0 else "train"} for k in range(n)]
    return images, masks, records


def test_append_and_read_round_trip(tmp_path):
    store = TileStore.create(tmp_path / "s", tile_size=T)
    assert store.append(*tiles(5)) == [0, 1, 2, 3, 4]
    assert store.append(*tiles(4, start=5)) == [5, 6, 7, 8]
    reopened = TileStore(tmp_path / "s")
    assert len(reopened) == 9
    images, masks, _ = tiles(9)
    order = [8, 0, 5, 3]
    assert np.array_equal(reopened.raw_images(order), images[order])
    assert np.array_equal(reopened.masks(order), masks[order])
    np.testing.assert_array_equal(reopened.images(order), normalize(images[order]))
    assert reopened.indices("val").tolist() == [0, 3, 6]
    assert reopened.records[6]["slice"] == 6 and reopened.records[6]["chunk"] == 1


def test_store_files_open_as_plain_tiff_stacks(tmp_path):
    store = TileStore.create(tmp_path / "s", tile_size=T)
    store.append(*tiles(3))
    chunk = store.manifest.chunks[0]
    data = tifffile.imread(tmp_path / "s" / chunk.images)
    assert data.shape == (3, T, T)
    manifest = json.loads((tmp_path / "s" / MANIFEST).read_text())
    assert manifest["normalization"]["norm_mean"] == "0.5" and len(manifest["records"]) == 3


def test_bad_appends_are_refused_and_write_nothing(tmp_path):
    store = TileStore.create(tmp_path / "s", tile_size=T)
    images, masks, records = tiles(3)
    with pytest.raises(UserError, match="tiles must be"):
        store.append(np.zeros((3, T, T + 1), np.uint8), masks, records)
    with pytest.raises(UserError, match="2 records for 3 tiles"):
        store.append(images, masks, records[:2])
    assert len(TileStore(tmp_path / "s")) == 0
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [MANIFEST]


def _append_many(path, start, n_batches, barrier):
    barrier.wait()
    store = TileStore(path)
    for b in range(n_batches):
        store.append(*tiles(3, start=start + 3 * b))


@pytest.mark.fault("concurrency", "two processes append to one store", "both succeed, distinct records")
def test_two_writers_both_succeed_with_distinct_records(tmp_path):
    path = tmp_path / "s"
    TileStore.create(path, tile_size=T)
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_append_many, args=(path, start, 5, barrier)) for start in (0, 100)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    store = TileStore(path)
    assert len(store) == 30
    slices = sorted(r["slice"] for r in store.records)
    assert slices == list(range(15)) + list(range(100, 115))
    for i, r in enumerate(store.records):  # every record points at its own pixels
        assert store.raw_images([i])[0, 0, 0] == r["slice"] % 256


@pytest.mark.fault("concurrency", "reader while a writer appends", "never sees a half-appended tile")
def test_reader_never_sees_a_half_appended_tile(tmp_path):
    path = tmp_path / "s"
    TileStore.create(path, tile_size=T)
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(2)
    writer = ctx.Process(target=_append_many, args=(path, 0, 40, barrier))
    writer.start()
    barrier.wait()
    seen = 0
    while writer.is_alive() or seen < 120:
        store = TileStore(path)
        if len(store):
            values = store.raw_images(np.arange(len(store)))[:, 0, 0]
            assert values.tolist() == [r["slice"] % 256 for r in store.records]
        seen = len(store)
        if not writer.is_alive() and seen == 120:
            break
    writer.join(60)
    assert writer.exitcode == 0 and len(TileStore(path)) == 120


@pytest.mark.fault("concurrency",
                   "store locked by another writer too long",
                   "clear lock message, nothing written")
def test_lock_timeout_gives_a_clear_message(tmp_path):
    from filelock import FileLock

    store = TileStore.create(tmp_path / "s", tile_size=T)
    with FileLock(tmp_path / "s" / ".lock"):  # the cross-platform lock the store itself takes
        ctx = mp.get_context("fork")
        queue = ctx.Queue()

        def try_append():
            try:
                TileStore(tmp_path / "s").append(*tiles(1), lock_timeout=0.3)
                queue.put("ok")
            except UserError as exc:
                queue.put(str(exc))

        p = ctx.Process(target=try_append)
        p.start()
        p.join(30)
        assert "locked by another writer" in queue.get(timeout=5)
    assert len(TileStore(store.path)) == 0


@pytest.mark.fault("interruption",
                   "writer killed after the chunk, before the manifest",
                   "leftover ignored, next append fine")
def test_crash_leftover_chunk_is_ignored_and_skipped(tmp_path):
    store = TileStore.create(tmp_path / "s", tile_size=T)
    store.append(*tiles(2))
    # a crashed writer left a chunk file but never updated the manifest
    (tmp_path / "s" / "chunk-00001-images.tif").write_bytes(b"partial")
    assert len(TileStore(tmp_path / "s")) == 2
    store.append(*tiles(2, start=2))
    reopened = TileStore(tmp_path / "s")
    assert len(reopened) == 4 and reopened.raw_images([3])[0, 0, 0] == 3


@pytest.mark.parametrize("damage,needle", [
    (lambda p: (p / MANIFEST).write_text("{not json"), "corrupt manifest"),
    (lambda p: (p / MANIFEST).unlink(), "not a tile store"),
    (lambda p: (p / "chunk-00000-images.tif").unlink(), "is missing"),
    (lambda p: (p / MANIFEST).write_text(json.dumps({"format": "other"})), "not a tile-store manifest"),
])
@pytest.mark.fault("tile-store reader", "corrupt/missing manifest, missing chunk", "one-line error")
def test_damaged_stores_give_user_errors(tmp_path, damage, needle):
    store = TileStore.create(tmp_path / "s", tile_size=T)
    store.append(*tiles(2))
    damage(tmp_path / "s")
    with pytest.raises(UserError, match=needle):
        TileStore(tmp_path / "s").images([0, 1])


def test_missing_store_and_existing_store():
    with pytest.raises(UserError, match="no such tile store"):
        TileStore("/nonexistent/store")


def test_summary_counts(tmp_path):
    store = TileStore.create(tmp_path / "s", tile_size=T)
    store.append(*tiles(6))
    summary = store.summary()
    assert summary["splits"]["val"]["tiles"] == 2 and summary["splits"]["train"]["tiles"] == 4
    assert summary["splits"]["val"]["foreground_fraction"] == pytest.approx(0.5)  # slices 0 and 3
