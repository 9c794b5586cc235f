"""Fuzzing with hypothesis: the TIFF reader, tiler, stitcher and tile-store reader on random shapes,
dtypes, truncated bytes and wrong tags give valid output or the project's own UserError, never another
exception or a hang (each example has a deadline)."""

import io
import json
import os
import shutil

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.errors import UserError
from shared.store import MANIFEST, TileStore
from shared.tiff_io import read_image_stack, read_mask_stack
from shared.tiling import predict_tiled, stitch_tiles, tile_slice

# CI runs a fixed sequence of examples (a landing must not hinge on a lucky draw); local runs explore.
FUZZ = settings(max_examples=120, deadline=3000, derandomize=bool(os.environ.get("CI")),
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def valid_tiff(shape=(2, 24, 20), dtype=np.uint8) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.arange(np.prod(shape)).reshape(shape).astype(dtype), photometric="minisblack")
    return buf.getvalue()


def read_or_user_error(path, reader=read_image_stack):
    try:
        out = reader(path)
    except UserError as exc:
        assert str(exc).startswith(str(path)) and "\n" not in str(exc)
        return None
    assert out.ndim == 3 and out.size > 0
    return out


@pytest.mark.fault("TIFF reader", "truncated file (any length)", "valid prefix or one-line error")
@FUZZ
@given(cut=st.integers(0, 2000), dtype=st.sampled_from([np.uint8, np.uint16, np.float32]))
def test_truncated_tiffs(tmp_path, cut, dtype):
    data = valid_tiff(dtype=dtype)
    path = tmp_path / "t.tif"
    path.write_bytes(data[: min(cut, len(data) - 1)])
    read_or_user_error(path)


@pytest.mark.fault("TIFF reader", "random bytes overwritten (header, tags, pixels)",
                   "valid output or one-line error")
@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), min_size=1, max_size=8),
       masks=st.booleans())
def test_corrupted_tiffs(tmp_path, edits, masks):
    data = bytearray(valid_tiff())
    for pos, value in edits:
        data[pos % len(data)] = value
    path = tmp_path / "c.tif"
    path.write_bytes(bytes(data))
    read_or_user_error(path, read_mask_stack if masks else read_image_stack)


@pytest.mark.fault("TIFF reader", "wrong tags (dimensions, bits per sample, sample format, offsets)",
                   "valid output or one-line error")
@FUZZ
@given(tag=st.sampled_from([256, 257, 258, 273, 277, 279, 339]), value=st.integers(0, 2**32 - 1))
def test_wrong_tag_values(tmp_path, tag, value):
    data = bytearray(valid_tiff(shape=(1, 24, 20)))
    # rewrite the value of `tag` in the first IFD (classic little-endian TIFF)
    ifd = int.from_bytes(data[4:8], "little")
    count = int.from_bytes(data[ifd:ifd + 2], "little")
    for k in range(count):
        entry = ifd + 2 + 12 * k
        if int.from_bytes(data[entry:entry + 2], "little") == tag:
            kind = int.from_bytes(data[entry + 2:entry + 4], "little")
            size = 2 if kind == 3 else 4
            data[entry + 8:entry + 8 + size] = (value % (1 << (8 * size))).to_bytes(size, "little")
    path = tmp_path / "w.tif"
    path.write_bytes(bytes(data))
    read_or_user_error(path)


@pytest.mark.fault("TIFF reader", "random bytes named .tif", "one-line error")
@FUZZ
@given(blob=st.binary(min_size=0, max_size=300))
def test_random_bytes(tmp_path, blob):
    path = tmp_path / "r.tif"
    path.write_bytes(blob)
    read_or_user_error(path)


@pytest.mark.fault("tiler/stitcher", "random shapes and dtypes", "exact round trip")
@settings(max_examples=80, deadline=3000)
@given(h=st.integers(1, 300), w=st.integers(1, 300), tile=st.integers(1, 96), overlap_frac=st.floats(0, 0.9),
       dtype=st.sampled_from([np.uint8, np.uint16, np.float32, np.int64, bool]))
def test_tiler_and_stitcher_fuzz(h, w, tile, overlap_frac, dtype):
    image = (np.arange(h * w).reshape(h, w) % 7).astype(dtype)
    tiles, origins = tile_slice(image, tile)
    assert np.array_equal(stitch_tiles(tiles, origins, image.shape), image)
    overlap = min(int(tile * overlap_frac), tile - 1)
    out = predict_tiled(lambda b: b.astype(np.float32), image.astype(np.float32), tile, overlap, 4)
    np.testing.assert_allclose(out, image.astype(np.float32), atol=1e-5)


def _store(tmp_path):
    path = tmp_path / "store"
    if path.exists():
        shutil.rmtree(path)
    store = TileStore.create(path, tile_size=8)
    records = [{"source": "real", "file": "f", "slice": k, "y": 0, "x": 0, "split": "train"}
               for k in range(3)]
    store.append(np.full((3, 8, 8), 9, np.uint8), np.ones((3, 8, 8), np.uint8), records)
    return path


def _mutate(obj, rng):
    """Replace one random leaf of a JSON object by a random value of another type."""
    if isinstance(obj, dict) and obj:
        key = list(obj)[rng.integers(len(obj))]
        if rng.random() < 0.3:
            del obj[key]
        else:
            obj[key] = _mutate(obj[key], rng)
        return obj
    if isinstance(obj, list) and obj:
        i = int(rng.integers(len(obj)))
        obj[i] = _mutate(obj[i], rng)
        return obj
    return [None, -1, 10**9, "x", 3.5, [], {}][int(rng.integers(7))]


@pytest.mark.fault("tile-store reader", "manifest fields deleted or of the wrong type",
                   "valid store or one-line error")
@FUZZ
@given(seed=st.integers(0, 2**32 - 1), edits=st.integers(1, 4))
def test_store_manifest_fuzz(tmp_path, seed, edits):
    path = _store(tmp_path)
    rng = np.random.default_rng(seed)
    manifest = json.loads((path / MANIFEST).read_text())
    for _ in range(edits):
        manifest = _mutate(manifest, rng)
    (path / MANIFEST).write_text(json.dumps(manifest))
    try:
        store = TileStore(path)
        idx = np.arange(len(store))
        store.images(idx), store.masks(idx), store.summary()
    except UserError as exc:
        assert "\n" not in str(exc)


@pytest.mark.fault("tile-store reader", "chunk file truncated or overwritten", "one-line error")
@FUZZ
@given(cut=st.integers(0, 2000), which=st.sampled_from(["images", "masks"]))
def test_store_chunk_fuzz(tmp_path, cut, which):
    path = _store(tmp_path)
    chunk = path / f"chunk-00000-{which}.tif"
    data = chunk.read_bytes()
    chunk.write_bytes(data[: min(cut, len(data) - 1)])
    try:
        store = TileStore(path)
        store.images([0, 1, 2]), store.masks([0, 1, 2])
    except UserError as exc:
        assert "\n" not in str(exc)
