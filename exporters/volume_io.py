"""Volumes on disk for chunked prediction (the `volumes` extra: zarr, h5py).

Inputs, read lazily region by region: TIFF stacks (tifffile's zarr store), zarr / OME-Zarr, HDF5.
Output: an OME-Zarr image (NGFF 0.4, zarr format 2, '/' chunk keys) holding the probabilities, with the
mask as its label image `labels/mask`, and a completion marker per chunk in `emsynth_progress/`. The
multiscales metadata is written last, so an interrupted run never looks like a finished image.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.atomic import write_json_atomic
from shared.errors import UserError
from shared.outputs import foreground_mask

IMAGE_DTYPES = (np.uint8, np.uint16, np.float32)
PROBABILITY_DTYPES = ("float16", "uint8", "float32")
PROGRESS = "emsynth_progress"
MASK = "labels/mask"
NGFF = "0.4"
# NGFF units must come from the UDUNITS list; microscopy files spell them many ways
UNITS = {"nm": "nanometer", "nanometer": "nanometer", "um": "micrometer", "\u00b5m": "micrometer",
         "\u03bcm": "micrometer", "micron": "micrometer", "micrometer": "micrometer", "mm": "millimeter",
         "millimeter": "millimeter", "angstrom": "angstrom", "Å": "angstrom"}
_OPEN: dict[tuple, object] = {}
_OPEN_LOCK = threading.Lock()


@dataclass(frozen=True)
class PixelSize:
    """Voxel size along (z, y, x) in `unit` (an NGFF unit name, or None when the file does not say)."""
    zyx: tuple[float, float, float] = (1.0, 1.0, 1.0)
    unit: str | None = None


def ngff_unit(text: str | None) -> str | None:
    return UNITS.get(text.strip(), UNITS.get(text.strip().lower())) if text else None


# -- inputs -------------------------------------------------------------------------------------
def volume_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        return "tiff"
    if suffix in (".h5", ".hdf5", ".hdf"):
        return "hdf5"
    if path.is_dir():
        return "zarr"
    raise UserError(f"{path}: not a volume this reads (TIFF stack, zarr / OME-Zarr folder, HDF5 file)")


class Volume:
    """A (Z, Y, X) grayscale volume read lazily by regions, for dask.array.from_array. Pickles as its
    path: each process opens its own handle (h5py and TIFF handles do not cross processes)."""

    def __init__(self, path: str | os.PathLike, dataset: str | None = None):
        self.path, self.dataset = Path(path), dataset
        if not self.path.exists():
            raise UserError(f"{self.path}: no such file or folder")
        self.kind = volume_kind(self.path)
        array = self._array()
        if array.ndim < 2 or any(n != 1 for n in array.shape[:-3]):
            raise UserError(f"{self.label}: expected a (Z, Y, X) grayscale volume, got shape {array.shape}")
        self.lead = max(0, array.ndim - 3)  # leading singleton axes (OME-Zarr t, c) are skipped
        self.shape = (1, *array.shape) if array.ndim == 2 else tuple(array.shape[self.lead:])
        self.dtype = np.dtype(array.dtype)
        if self.dtype not in IMAGE_DTYPES:
            raise UserError(f"{self.label}: pixel type {self.dtype} is not supported "
                            "(uint8, uint16 or float32)")
        if min(self.shape) < 1:
            raise UserError(f"{self.label}: volume is empty (shape {self.shape})")
        self.pixel_size = read_pixel_size(self)
        self.ndim = 3

    @property
    def label(self) -> str:
        return f"{self.path}:{self.dataset}" if self.dataset else str(self.path)

    def __getitem__(self, key: tuple[slice, slice, slice]) -> np.ndarray:
        try:
            array = self._array()
            if array.ndim == 2:
                return np.asarray(array[key[1:]])[None][key[0]]
            return np.asarray(array[(0,) * self.lead + tuple(key)])
        except UserError:
            raise
        except Exception as exc:  # zarr, numcodecs, tifffile and h5py each raise their own types
            reason = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
            raise UserError(f"{self.label}: unreadable chunk at {_region(key)} ({reason})") from None

    def _array(self):
        """The opened array, once per process (thread-safe: dask's threads share it)."""
        key = (str(self.path), self.dataset, os.getpid())
        with _OPEN_LOCK:
            if key not in _OPEN:
                _OPEN[key] = _open_array(self.path, self.kind, self.dataset)
            return _OPEN[key]


def _region(key: tuple[slice, ...]) -> str:
    return ", ".join(f"{axis} {s.start}:{s.stop}" for axis, s in zip("zyx", key, strict=False)
                     if isinstance(s, slice))


def _open_array(path: Path, kind: str, dataset: str | None):
    try:
        if kind == "hdf5":
            return _open_hdf5(path, dataset)
        import zarr

        if kind == "tiff":
            import tifffile

            node = zarr.open(tifffile.imread(path, aszarr=True), mode="r")
        else:
            node = zarr.open(str(path), mode="r")
    except UserError:
        raise
    except Exception as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise UserError(f"{path}: not a readable {kind} volume ({reason})") from None
    return _zarr_dataset(node, path, dataset)


def _zarr_dataset(node, path: Path, dataset: str | None):
    """An array node as is; in a group, the dataset asked for, else the OME-Zarr full resolution level."""
    import zarr

    if isinstance(node, zarr.Array):
        if dataset:
            raise UserError(f"{path}: is a single array; --dataset {dataset} does not apply")
        return node
    if dataset is None:
        levels = multiscales(dict(node.attrs))
        if not levels:
            raise UserError(f"{path}: zarr group without OME-Zarr multiscales; name the array with --dataset "
                            f"(arrays: {', '.join(sorted(node.array_keys())) or 'none'})")
        dataset = levels[0]["datasets"][0]["path"]
    try:
        found = node[dataset.strip("/")]
    except KeyError:
        raise UserError(f"{path}: no dataset {dataset!r} (arrays: "
                        f"{', '.join(sorted(node.array_keys())) or 'none'})") from None
    if not isinstance(found, zarr.Array):
        return _zarr_dataset(found, path, None)  # an OME-Zarr image inside a bigger group
    return found


def _open_hdf5(path: Path, dataset: str | None):
    import h5py

    handle = h5py.File(path, "r")
    names: list[str] = []
    handle.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    if dataset is None and len(names) == 1:
        dataset = names[0]
    if dataset is None:
        raise UserError(f"{path}: HDF5 file holds {len(names)} datasets; name one with --dataset "
                        f"({', '.join(names[:8]) or 'none'})")
    if dataset.strip("/") not in names:
        raise UserError(f"{path}: no dataset {dataset!r} in this HDF5 file "
                        f"({', '.join(names[:8]) or 'none'})")
    return handle[dataset]


def multiscales(attrs: dict) -> list[dict]:
    """NGFF multiscales of a group's attributes (0.4 at the top level, 0.5 under 'ome')."""
    return attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales") or []


def read_pixel_size(volume: Volume) -> PixelSize:
    """What the file says about its voxel size; (1, 1, 1) without a unit when it says nothing."""
    try:
        if volume.kind == "tiff":
            return _tiff_pixel_size(volume.path)
        if volume.kind == "hdf5":
            size = volume._array().attrs.get("element_size_um")  # Fiji's and ilastik's convention
            if size is None:
                return PixelSize()
            return PixelSize(tuple(float(v) for v in size[-3:]), "micrometer")
        return _zarr_pixel_size(volume.path, volume.dataset)
    except (ValueError, TypeError, KeyError, IndexError):
        return PixelSize()  # malformed metadata: the data is still good


def _zarr_pixel_size(path: Path, dataset: str | None) -> PixelSize:
    import zarr

    node = zarr.open(str(path), mode="r")
    if isinstance(node, zarr.Array):
        return PixelSize()
    levels = multiscales(dict(node.attrs))
    if not levels:
        return PixelSize()
    level = levels[0]
    transforms = level["datasets"][0].get("coordinateTransformations", [])
    scale = [t["scale"] for t in transforms if t["type"] == "scale"]
    space = [a for a in level.get("axes", []) if isinstance(a, dict) and a.get("type") == "space"]
    unit = ngff_unit(space[-1].get("unit")) if space else None
    return PixelSize(tuple(float(v) for v in scale[0][-3:]), unit) if scale else PixelSize()


def _tiff_pixel_size(path: Path) -> PixelSize:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        ij = tif.imagej_metadata or {}
        tags = page.tags
        if "XResolution" not in tags or "YResolution" not in tags:
            return PixelSize()
        x = tags["XResolution"].value[1] / tags["XResolution"].value[0]
        y = tags["YResolution"].value[1] / tags["YResolution"].value[0]
        unit = ngff_unit(ij.get("unit"))
        if unit is None and tags.get("ResolutionUnit") is not None:
            per = {2: 25400.0, 3: 10000.0}.get(int(tags["ResolutionUnit"].value))  # inch, cm in um
            if per is None:
                return PixelSize()
            x, y, unit = x * per, y * per, "micrometer"
        if unit is None:
            return PixelSize()
        return PixelSize((float(ij.get("spacing", x)), float(y), float(x)), unit)




# -- output -------------------------------------------------------------------------------------
def encode_probability(probs: np.ndarray, dtype: str) -> np.ndarray:
    """float32 probabilities in the stored type: float16, uint8 scaled by 255, or float32."""
    if dtype == "uint8":
        return np.rint(np.clip(probs, 0.0, 1.0) * 255.0).astype(np.uint8)
    return probs.astype(dtype)


def decode_probability(stored: np.ndarray) -> np.ndarray:
    return stored.astype(np.float32) / 255.0 if stored.dtype == np.uint8 else stored.astype(np.float32)


class VolumeOutput:
    """The OME-Zarr folder a run writes into; every method works from any process (it holds paths only)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def create_or_resume(self, shape: tuple[int, ...], chunks: tuple[int, ...], probability_dtype: str,
                         record: dict) -> bool:
        """Make the arrays, or check that an earlier run made them with the same settings. True = resumed."""
        import zarr

        if self.path.exists():
            try:
                old = dict(zarr.open_group(str(self.path), mode="r").attrs).get("emsynth", {})
            except Exception:  # not zarr at all
                old = {}
            if not old:
                raise UserError(f"{self.path}: exists and is not an output of this command; "
                                "choose another --out")
            changed = [k for k in record if old.get(k) != record[k]]
            if changed:
                raise UserError(f"{self.path}: an earlier run wrote it with other settings "
                                f"({', '.join(changed)}); rerun with the same ones to resume, "
                                "or choose another --out")
            return True
        if not self.path.parent.is_dir():
            raise UserError(f"{self.path.parent}: output folder does not exist")
        root = zarr.open_group(str(self.path), mode="w-", zarr_format=2)
        _create_level(root, "0", shape, chunks, probability_dtype)
        _create_level(root.create_group(MASK), "0", shape, chunks, "uint8")
        (self.path / PROGRESS).mkdir()
        root.attrs.update({"emsynth": {**record, "complete": False}})
        return False

    def marker(self, index: tuple[int, ...]) -> Path:
        return self.path / PROGRESS / (".".join(map(str, index)) + ".json")

    def done(self, index: tuple[int, ...]) -> bool:
        return self.marker(index).is_file()

    def write(self, index: tuple[int, ...], region: tuple[slice, ...], probs: np.ndarray, threshold: float,
              info: dict) -> None:
        """Write one chunk's probabilities and mask, then its marker (each zarr chunk file is itself
        replaced atomically by zarr's local store; the marker says the whole chunk is there)."""
        import zarr

        prob = zarr.open_array(str(self.path / "0"), mode="r+")
        mask = zarr.open_array(str(self.path / MASK / "0"), mode="r+")
        prob[region] = encode_probability(probs, str(prob.dtype))
        mask[region] = foreground_mask(probs, threshold)  # 0/255, >=: as every segment command
        write_json_atomic(self.marker(index), info)

    def markers(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted((self.path / PROGRESS).glob("*.json"))]

    def finish(self, levels: int, pixel_size: PixelSize, record: dict) -> None:
        """Downsampled levels (y, x halved each; mean for probabilities, nearest for the mask), then the
        NGFF metadata, last: only now do OME-Zarr readers see an image."""
        import zarr

        root = zarr.open_group(str(self.path), mode="r+")
        for level in range(1, levels):
            _downsample(root, str(level - 1), str(level), "mean")
            _downsample(root[MASK], str(level - 1), str(level), "nearest")
        root[MASK].attrs.update({**_multiscales_attrs("mask", levels, pixel_size, "nearest"),
                                 "image-label": {"version": NGFF, "source": {"image": "../../"},
                                                 "colors": [{"label-value": 1, "rgba": [255, 0, 255, 255]}]}})
        root["labels"].attrs.update({"labels": ["mask"]})
        root.attrs.update({**_multiscales_attrs("probability", levels, pixel_size, "mean"),
                           "emsynth": {**record, "complete": True}})


def create_image(path: str | os.PathLike, shape: tuple[int, ...], dtype: str, chunks: tuple[int, ...],
                 pixel_size: PixelSize) -> object:
    """A new single-level OME-Zarr image (NGFF 0.4) with an empty array "0" for the caller to fill."""
    import zarr

    root = zarr.open_group(str(path), mode="w-", zarr_format=2)
    array = _create_level(root, "0", shape, chunks, dtype)
    root.attrs.update(_multiscales_attrs(Path(path).name, 1, pixel_size, "mean"))
    return array


def _create_level(group, name: str, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: str):
    return group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0,
                              chunk_key_encoding={"name": "v2", "separator": "/"})  # NGFF 0.4 wants '/'


def _downsample(group, source: str, target: str, method: str) -> None:
    """Halve y and x of `source` into a new array `target`, one target chunk at a time (bounded memory)."""
    src = group[source]
    shape = (src.shape[0], src.shape[1] // 2, src.shape[2] // 2)
    dst = _create_level(group, target, shape, src.chunks, str(src.dtype))
    for index in np.ndindex(*dst.cdata_shape):
        region = tuple(slice(i * c, min((i + 1) * c, n))
                       for i, c, n in zip(index, dst.chunks, shape, strict=True))
        z, y, x = region
        block = src[z, 2 * y.start:2 * y.stop, 2 * x.start:2 * x.stop]
        if method == "mean":
            pairs = decode_probability(block).reshape(len(block), y.stop - y.start, 2, x.stop - x.start, 2)
            dst[region] = encode_probability(pairs.mean(axis=(2, 4)), str(src.dtype))
        else:
            dst[region] = block[:, ::2, ::2]


def _multiscales_attrs(name: str, levels: int, pixel_size: PixelSize, method: str) -> dict:
    z, y, x = pixel_size.zyx
    unit = {"unit": pixel_size.unit} if pixel_size.unit else {}
    axes = [{"name": a, "type": "space", **unit} for a in "zyx"]
    datasets = [{"path": str(k), "coordinateTransformations": [{"type": "scale",
                                                               "scale": [z, y * 2**k, x * 2**k]}]}
                for k in range(levels)]
    return {"multiscales": [{"version": NGFF, "name": name, "axes": axes, "datasets": datasets,
                             "type": method}]}
