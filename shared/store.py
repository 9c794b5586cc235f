"""The tile store: a folder both trainers read, that Fiji or napari can open.

    STORE/manifest.json                one record per tile (source, slice, y, x, split, provenance),
                                       and the pixel size of the source stack (nm, or null: unknown)
    STORE/chunk-00000-images.tif       uncompressed (Z, 256, 256) stacks, memory-mapped on read
    STORE/chunk-00000-masks.tif        uint8 {0, 1}, same Z (absent in an images-only store:
                                       manifest "masks": false, chunk "masks": "")
    STORE/chunk-00000-annotated.tif    uint8 {0, 1}, same Z, only in a partially annotated store: 1
                                       where the masks were drawn, 0 where nobody looked (masks hold 0
                                       there; trainers leave those pixels out of the loss); chunk
                                       "annotated": "" where every pixel was annotated

Appends write a new chunk pair (temp + rename) and then the manifest (temp + rename) under an
exclusive lock, so a reader only ever sees tiles whose chunk is complete.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from filelock import FileLock, Timeout

from shared import normalization as norm
from shared.atomic import write_json_atomic
from shared.errors import UserError
from shared.pixel_size import PixelSize
from shared.tiff_io import write_stack

MANIFEST = "manifest.json"
FORMAT = "emsynth-tile-store"
VERSION = 1
SPLITS = ("train", "val", "test")


@dataclass
class Chunk:
    images: str
    masks: str
    count: int
    dtype: str
    annotated: str = ""  # the chunk's annotated-area stack ("": every pixel annotated)

    def to_json(self) -> dict[str, Any]:
        """Its fields; "annotated" only where set (fully annotated stores read as they always did)."""
        return {k: v for k, v in vars(self).items() if k != "annotated" or v}


@dataclass
class Manifest:
    tile_size: int
    chunks: list[Chunk] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    kind: str = "real"  # "real" or "synthetic"
    has_masks: bool = True  # False: images only (unlabelled), usable where masks are ignored
    pixel_size: PixelSize | None = None

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "kind": self.kind, "masks": self.has_masks,
                "tile_size": self.tile_size,
                "pixel_size": self.pixel_size.to_json() if self.pixel_size else None,
                "normalization": norm.metadata(), "chunks": [c.to_json() for c in self.chunks],
                "records": self.records}


class TileStore:
    """Read (and append to) a tile store folder."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.manifest = _load_manifest(self.path)
        self._maps: dict[int, tuple[np.ndarray, np.ndarray | None, np.ndarray | None]] = {}
        self._chunk_of = np.array([r["chunk"] for r in self.records], np.int64)
        self._index_in_chunk = np.array([r["index"] for r in self.records], np.int64)

    # -- creation -------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike, tile_size: int = 256, kind: str = "real",
               has_masks: bool = True, pixel_size: PixelSize | None = None) -> TileStore:
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise UserError(f"{path}: exists and is not a directory")
        if (path / MANIFEST).exists():
            raise UserError(f"{path}: a tile store already exists here")
        if not path.parent.exists():
            raise UserError(f"{path.parent}: output folder does not exist")
        path.mkdir(exist_ok=True)
        manifest = Manifest(tile_size=tile_size, kind=kind, has_masks=has_masks, pixel_size=pixel_size)
        write_json_atomic(path / MANIFEST, manifest.to_json())
        return cls(path)

    @classmethod
    def open_or_create(cls, path: str | os.PathLike, tile_size: int = 256, kind: str = "real",
                       pixel_size: PixelSize | None = None) -> TileStore:
        if (Path(path) / MANIFEST).exists():
            store = cls(path)
            if store.tile_size != tile_size:
                raise UserError(f"{path}: store holds {store.tile_size}px tiles, not {tile_size}px")
            return store
        return cls.create(path, tile_size, kind, pixel_size=pixel_size)

    # -- reading --------------------------------------------------------------------------
    @property
    def records(self) -> list[dict[str, Any]]:
        return self.manifest.records

    @property
    def tile_size(self) -> int:
        return self.manifest.tile_size

    @property
    def has_masks(self) -> bool:
        return self.manifest.has_masks

    @property
    def pixel_size(self) -> PixelSize | None:
        return self.manifest.pixel_size

    @property
    def partially_annotated(self) -> bool:
        """Whether some tiles' masks cover only part of the tile (see `annotated`)."""
        return any(c.annotated for c in self.manifest.chunks)

    def __len__(self) -> int:
        return len(self.records)

    def indices(self, split: str | None = None) -> np.ndarray:
        """Record indices of one split (all records when split is None)."""
        if split is None:
            return np.arange(len(self.records))
        return np.array([i for i, r in enumerate(self.records) if r.get("split") == split], np.int64)

    def raw_images(self, idx: Sequence[int] | np.ndarray) -> np.ndarray:
        return self._gather(idx, 0)

    def images(self, idx: Sequence[int] | np.ndarray) -> np.ndarray:
        """Normalized float32 tiles in [-1, 1], shape (N, T, T)."""
        return self._gather(idx, 0, normalized=True)

    def masks(self, idx: Sequence[int] | np.ndarray) -> np.ndarray:
        """uint8 {0, 1} masks, shape (N, T, T)."""
        if not self.has_masks:
            raise UserError(f"{self.path}: an images-only store (built without --masks) has no masks")
        return self._gather(idx, 1)

    def annotated(self, idx: Sequence[int] | np.ndarray) -> np.ndarray:
        """uint8 {0, 1}, shape (N, T, T): 1 where the tile's mask was annotated, 0 where nobody looked
        (all ones for tiles of fully annotated chunks)."""
        idx = self._checked(idx)
        out = np.ones((len(idx), self.tile_size, self.tile_size), np.uint8)
        chunks = self._chunk_of[idx]
        for c in np.unique(chunks):
            area = self._chunk(int(c))[2]
            if area is not None:
                sel = np.flatnonzero(chunks == c)
                out[sel] = area[self._index_in_chunk[idx[sel]]]
        return out

    def _checked(self, idx: Sequence[int] | np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, np.int64)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"tile index out of range for a store of {len(self)} tiles")
        return idx

    def _gather(self, idx: Sequence[int] | np.ndarray, which: int, normalized: bool = False) -> np.ndarray:
        idx = self._checked(idx)
        chunks = self._chunk_of[idx]
        dtype = np.float32 if normalized else self._dtype(which, chunks)
        out = np.empty((len(idx), self.tile_size, self.tile_size), dtype)
        for c in np.unique(chunks):
            sel = np.flatnonzero(chunks == c)
            part = self._chunk(int(c))[which][self._index_in_chunk[idx[sel]]]
            if normalized and len(sel) == len(idx):
                norm.normalize(part, out=out)  # one chunk: normalize straight into the output
            else:
                out[sel] = norm.normalize(part) if normalized else part
        return out

    def _dtype(self, which: int, chunks: np.ndarray) -> np.dtype:
        if which == 1:
            return np.dtype(np.uint8)
        kinds = {self.manifest.chunks[int(c)].dtype for c in np.unique(chunks)}
        return np.dtype(kinds.pop()) if len(kinds) == 1 else np.dtype(np.float32)

    def _chunk(self, c: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """The chunk's images, masks and annotated areas (None where it has none), memory-mapped once."""
        if c not in self._maps:
            chunk = self.manifest.chunks[c]
            optional = [self._open_stack(name, chunk.count) if name else None
                        for name in (chunk.masks, chunk.annotated)]
            self._maps[c] = (self._open_stack(chunk.images, chunk.count), *optional)
        return self._maps[c]

    def _open_stack(self, name: str, count: int) -> np.ndarray:
        file = self.path / name
        if not file.is_file():
            raise UserError(f"{file}: chunk listed in {self.path / MANIFEST} is missing")
        try:
            data = tifffile.memmap(file, mode="r")
        except Exception:  # compressed or odd layout: fall back to a full read
            try:
                data = tifffile.imread(file)
            except Exception as exc:
                raise UserError(f"{file}: unreadable chunk ({str(exc)[:120]})") from None
        if data.ndim < 2 or data.size == 0:
            raise UserError(f"{file}: chunk holds no tiles (truncated?)")
        data = data.reshape((-1, *data.shape[-2:]))
        expected = (count, self.tile_size, self.tile_size)
        if data.shape != expected:
            raise UserError(f"{file}: chunk has shape {data.shape}, manifest says {expected}")
        return data

    # -- appending ------------------------------------------------------------------------
    def append(self, images: np.ndarray, masks: np.ndarray | None, records: list[dict[str, Any]],
               lock_timeout: float = 60.0, annotated: np.ndarray | None = None) -> list[int]:
        """Add tiles (stored pixels, e.g. uint8) + {0,1} masks (None in an images-only store) + one record
        each, and where the masks cover only part of the tiles their annotated areas ({0, 1}; masks are
        zeroed outside); returns their indices."""
        _check_append(self, images, masks, records, annotated)
        if annotated is not None:
            annotated = (np.asarray(annotated) > 0).astype(np.uint8)
            masks = np.where(annotated > 0, masks, 0).astype(np.uint8)  # nothing known outside
        with self._locked(lock_timeout):
            self.manifest = _load_manifest(self.path)  # another writer may have appended meanwhile
            n = len(self.manifest.chunks)
            while (self.path / _chunk_name(n, "images")).exists():  # leftovers of a crashed append
                n += 1
            chunk = Chunk(_chunk_name(n, "images"), _chunk_name(n, "masks") if masks is not None else "",
                          len(images), str(images.dtype),
                          _chunk_name(n, "annotated") if annotated is not None else "")
            write_stack(self.path / chunk.images, images, self.pixel_size)
            if masks is not None:
                write_stack(self.path / chunk.masks, masks.astype(np.uint8), self.pixel_size)
            if annotated is not None:
                write_stack(self.path / chunk.annotated, annotated, self.pixel_size)
            start = len(self.manifest.records)
            c = len(self.manifest.chunks)
            new = [{**rec, "chunk": c, "index": k} for k, rec in enumerate(records)]
            updated = Manifest(self.tile_size, [*self.manifest.chunks, chunk],
                               [*self.manifest.records, *new], self.manifest.kind, self.has_masks,
                               self.pixel_size)
            write_json_atomic(self.path / MANIFEST, updated.to_json())
        self.__init__(self.path)
        return list(range(start, start + len(records)))

    @contextmanager
    def _locked(self, timeout: float) -> Iterator[None]:
        """Exclusive writer lock on STORE/.lock (filelock: flock on POSIX, msvcrt on Windows)."""
        lock = FileLock(self.path / ".lock", timeout=timeout, poll_interval=0.05)
        try:
            lock.acquire()
        except Timeout:
            raise UserError(f"{self.path}: store is locked by another writer "
                            f"(waited {timeout:.0f} s); try again when it finishes") from None
        try:
            yield
        finally:
            lock.release()

    # -- summaries ------------------------------------------------------------------------
    def _foreground_fraction(self, idx: Sequence[int] | np.ndarray, known: np.ndarray | None) -> float:
        """Foreground share of the annotated pixels `known` (every pixel where None)."""
        masks = self.masks(idx)
        return float(masks.mean()) if known is None else float(masks.sum() / max(int(known.sum()), 1))

    def summary(self) -> dict[str, Any]:
        """Counts per split, foreground fraction (of the annotated pixels) and intensity statistics
        (normalized space); in a partially annotated store the annotated share of each split."""
        out: dict[str, Any] = {"path": str(self.path), "kind": self.manifest.kind, "tiles": len(self),
                               "tile_size": self.tile_size, "masks": self.has_masks,
                               "pixel_size": self.pixel_size.to_json() if self.pixel_size else None,
                               "splits": {}}
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(self.records):
            groups.setdefault(str(r.get("split", "(none)")), []).append(i)
        for split, idx in sorted(groups.items()):
            imgs = self.images(idx)
            slices = {(str(r.get("file")), str(r.get("slice"))) for r in (self.records[i] for i in idx)}
            known = self.annotated(idx) if self.partially_annotated else None
            out["splits"][split] = {
                "tiles": len(idx), "slices": len(slices),
                "foreground_fraction": self._foreground_fraction(idx, known) if self.has_masks else None,
                **({"annotated_fraction": float(known.mean())} if known is not None else {}),
                "mean": float(imgs.mean()), "std": float(imgs.std()),
                "min": float(imgs.min()), "max": float(imgs.max()),
            }
        return out


def refuse_partial_annotations(store: TileStore, who: str) -> None:
    """For readers that take every pixel of a mask as known (a generator's conditions, pasted
    objects' backgrounds): a partially annotated store would teach its unannotated objects as
    background."""
    if store.has_masks and store.partially_annotated:
        raise UserError(f"{store.path}: partially annotated (built with --annotated); {who} needs masks "
                        "annotated over the whole tile")


def refuse_real_store(out: Path, what: str = "generated tiles") -> None:
    """Generated (or pasted) tiles never go into a store of real tiles (a trainer would take them for
    real)."""
    if (out / MANIFEST).exists() and (kind := TileStore(out).manifest.kind) != "synthetic":
        raise UserError(f"{out}: a {kind} tile store; {what} go to a synthetic store (another --out)")


def _chunk_name(n: int, what: str) -> str:
    return f"chunk-{n:05d}-{what}.tif"


def _check_append(store: TileStore, images: np.ndarray, masks: np.ndarray | None, records: list[dict],
                  annotated: np.ndarray | None = None) -> None:
    t = store.tile_size
    if images.ndim != 3 or images.shape[1:] != (t, t):
        raise UserError(f"{store.path}: tiles must be (N, {t}, {t}), got {images.shape}")
    if (masks is None) == store.has_masks:
        raise UserError(f"{store.path}: " + ("tiles need masks in this store" if store.has_masks
                                             else "an images-only store takes no masks"))
    if masks is not None and masks.shape != images.shape:
        raise UserError(f"{store.path}: masks {masks.shape} do not match tiles {images.shape}")
    if annotated is not None and (masks is None or np.shape(annotated) != images.shape):
        raise UserError(f"{store.path}: annotated areas {np.shape(annotated)} need masks and must match "
                        f"tiles {images.shape}")
    if len(records) != len(images):
        raise UserError(f"{store.path}: {len(records)} records for {len(images)} tiles")
    if len(images) == 0:
        raise UserError(f"{store.path}: nothing to append")
    norm.pixel_scale(images.dtype)  # raises for unsupported dtypes
    if images.dtype.kind == "f":
        bad = ~np.isfinite(images).reshape(len(images), -1).all(axis=1)
        if bad.any():
            raise UserError(f"{store.path}: tile {int(np.flatnonzero(bad)[0])} contains NaN or Inf pixels")


def _load_manifest(path: Path) -> Manifest:
    file = path / MANIFEST
    if not path.exists():
        raise UserError(f"{path}: no such tile store")
    if not path.is_dir():
        raise UserError(f"{path}: not a directory (a tile store is a folder)")
    if not file.is_file():
        raise UserError(f"{path}: not a tile store (no {MANIFEST})")
    try:
        data = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{file}: corrupt manifest ({str(exc)[:120]})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UserError(f"{file}: not a tile-store manifest")
    try:
        manifest = _parse_manifest(data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UserError(f"{file}: malformed manifest ({str(exc)[:120]})") from None
    return manifest


def _parse_manifest(data: dict) -> Manifest:
    """Type-checked manifest: every field a reader relies on, so a damaged file fails here, clearly."""
    tile = data["tile_size"]
    if not isinstance(tile, int) or not 1 <= tile <= 16384:
        raise ValueError(f"tile_size {tile!r}")
    chunks = []
    for c in data["chunks"]:
        chunk = Chunk(**c)
        if not (isinstance(chunk.images, str) and isinstance(chunk.masks, str)
                and isinstance(chunk.count, int) and chunk.count >= 0 and isinstance(chunk.dtype, str)
                and isinstance(chunk.annotated, str) and (chunk.masks or not chunk.annotated)):
            raise ValueError(f"chunk entry {c!r}")
        norm.pixel_scale(np.dtype(chunk.dtype))
        chunks.append(chunk)
    records = data["records"]
    if not isinstance(records, list):
        raise ValueError("records is not a list")
    for r in records:
        ok = (isinstance(r, dict) and isinstance(r.get("chunk"), int) and isinstance(r.get("index"), int)
              and isinstance(r.get("split", ""), str))
        if not ok or not 0 <= r["chunk"] < len(chunks) or not 0 <= r["index"] < chunks[r["chunk"]].count:
            raise ValueError(f"record points outside its chunk: {str(r)[:80]}")
    kind = data.get("kind", "real")
    has_masks = data.get("masks", True)  # stores written before images-only ones have masks
    if not isinstance(has_masks, bool) or (has_masks and not all(c.masks for c in chunks)):
        raise ValueError(f"masks {has_masks!r} disagrees with the chunks")
    return Manifest(tile, chunks, records, kind if isinstance(kind, str) else "real", has_masks,
                    PixelSize.from_json(data.get("pixel_size")))
