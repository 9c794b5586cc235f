"""Reading and writing TIFF stacks, with validation that names the file and the problem."""

from __future__ import annotations

import errno
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import tifffile

from shared.atomic import write_atomic
from shared.errors import UserError
from shared.pixel_size import PixelSize, from_tiff

IMAGE_DTYPES = (np.uint8, np.uint16, np.float32)


def read_image_stack(path: str | os.PathLike) -> np.ndarray:
    """Read a grayscale image stack as (Z, H, W) of uint8, uint16 or float32 in [0, 1].

    Single pages become Z = 1; RGB is converted to gray (with a warning); NaN/Inf is rejected.
    """
    path = Path(path)
    stack = _to_zyx(_read_raw(path), path)
    if stack.dtype == np.float64:
        stack = stack.astype(np.float32)
    if stack.dtype not in IMAGE_DTYPES:
        raise UserError(f"{path}: pixel type {stack.dtype} is not supported (uint8, uint16 or float32)")
    if stack.dtype == np.float32:
        _check_finite(stack, path)
        if stack.min() < 0.0 or stack.max() > 1.0:
            raise UserError(f"{path}: float32 images must lie in [0, 1], found "
                            f"[{stack.min():.4g}, {stack.max():.4g}]")
    return stack


def read_mask_stack(path: str | os.PathLike) -> np.ndarray:
    """Read a mask stack as (Z, H, W) uint8 in {0, 1}, whatever the encoding: 0/1, 0/255, anti-aliased
    edges, or instance labels (napari Labels, MitoEM ids, ilastik objects: foreground = label > 0)."""
    path = Path(path)
    stack = _to_zyx(_read_raw(path), path)
    if stack.dtype.kind == "f":
        _check_finite(stack, path)
    return binarize(stack, path)


def binarize(mask: np.ndarray, source: str | os.PathLike | None = None) -> np.ndarray:
    """Foreground of a whole stack as uint8 {0, 1}: above half the maximum for anti-aliased binary masks,
    label > 0 otherwise (so every instance id survives). When the encoding is a guess, one line on stderr
    names `source` and what was assumed."""
    mask = np.asarray(mask)
    encoding, note = mask_encoding(mask)
    if note:
        print(f"note: {source or 'mask'}: {note}", file=sys.stderr)
    if encoding == "antialiased":
        return (mask.astype(np.float32) > 0.5 * float(mask.max())).astype(np.uint8)
    return (mask > 0).astype(np.uint8)


def mask_encoding(mask: np.ndarray) -> tuple[str, str]:
    """("binary" | "antialiased" | "labels", a note when that is a guess, else "").

    Anti-aliased binary masks reach full scale (255, 65535, 1.0) and most of their foreground sits
    there, edges in between; label images number their objects 1..N, each id a share of the foreground.
    """
    if mask.dtype == bool or mask.size == 0:
        return "binary", ""
    if mask.dtype.kind == "f" and not np.array_equal(mask, np.floor(mask)):
        return "antialiased", ""  # fractional values: a soft mask, never ids
    values, counts = _foreground_histogram(mask)
    if len(values) <= 1:
        return "binary", ""
    top_share = counts[-1] / counts.sum()
    full_scale = float(values[-1]) == (float(np.iinfo(mask.dtype).max) if mask.dtype.kind in "ui" else 1.0)
    if full_scale and top_share >= 0.5:
        return "antialiased", ""
    if full_scale or top_share >= 0.5:
        return "labels", (f"{len(values)} foreground values, read as instance labels (foreground = "
                          f"label > 0); an anti-aliased binary mask would have most pixels at full scale")
    return "labels", ""


def _foreground_histogram(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values > 0 (ascending) and their pixel counts; bincount for 8/16-bit (fast on big
    stacks), unique otherwise."""
    if mask.dtype in (np.uint8, np.uint16):
        counts = np.bincount(mask.ravel(), minlength=2)[1:]
        values = np.flatnonzero(counts) + 1
        return values, counts[values - 1]
    values, counts = np.unique(mask[mask > 0], return_counts=True)
    return values, counts


def read_pair(images: str | os.PathLike, masks: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read an image stack and its mask stack, checking they match page for page."""
    image_stack = read_image_stack(images)
    return image_stack, read_matching_masks(masks, image_stack, images)


def read_matching_masks(masks: str | os.PathLike, image_stack: np.ndarray, images: str | os.PathLike
                        ) -> np.ndarray:
    """read_mask_stack of `masks`, checked to match the image stack read from `images` page for page."""
    mask_stack = read_mask_stack(masks)
    if mask_stack.shape[0] != image_stack.shape[0]:
        raise UserError(f"{masks}: {mask_stack.shape[0]} mask slices but {images} has "
                        f"{image_stack.shape[0]} image slices")
    if mask_stack.shape[1:] != image_stack.shape[1:]:
        raise UserError(f"{masks}: masks are {mask_stack.shape[2]}x{mask_stack.shape[1]} but images in "
                        f"{images} are {image_stack.shape[2]}x{image_stack.shape[1]} (width x height)")
    return mask_stack


def read_pixel_size(path: str | os.PathLike) -> PixelSize | None:
    """The pixel size a TIFF states (OME, ImageJ or resolution tags), None when it states none."""
    try:
        with tifffile.TiffFile(path) as tif:
            return from_tiff(tif)
    except Exception:  # unreadable metadata is unknown metadata; the pixels are validated elsewhere
        return None


def write_stack(path: str | os.PathLike, stack: np.ndarray, pixel_size: PixelSize | None = None) -> None:
    """Write (Z, H, W) as an uncompressed ImageJ stack (memory-mappable, opens in Fiji), atomically,
    with its pixel size (resolution + ImageJ unit and spacing) when known."""
    stack = np.ascontiguousarray(stack)
    if stack.ndim == 2:
        stack = stack[None]
    if stack.ndim != 3:
        raise ValueError(f"expected (Z, H, W), got shape {stack.shape}")

    metadata: dict = {"axes": "ZYX"}
    resolution = None
    if pixel_size is not None:
        resolution = (1.0 / pixel_size.x, 1.0 / pixel_size.y)  # pixels per unit, as TIFF counts
        metadata["unit"] = "nm"
        if pixel_size.z:
            metadata["spacing"] = pixel_size.z

    imagej = stack.dtype not in (np.uint32, np.int32)  # ImageJ stacks hold 8/16-bit ints and float32

    def write(tmp: Path) -> None:
        if imagej:
            tifffile.imwrite(tmp, stack, imagej=True, metadata=metadata, resolution=resolution,
                             compression=None)
        else:  # a plain multi-page TIFF for exact 32-bit ids (label images past 65535 objects): the
            #    pixel size goes in the resolution tags, per centimetre (no z spacing there)
            per_cm = None if pixel_size is None else (1e7 / pixel_size.x, 1e7 / pixel_size.y)
            tifffile.imwrite(tmp, stack, resolution=per_cm, resolutionunit="CENTIMETER" if per_cm else None,
                             compression=None)

    try:
        write_atomic(path, write)
    except OSError as exc:
        if exc.errno in (None, errno.ENOSPC, errno.EFBIG, errno.EDQUOT):  # tifffile: "N requested, M written"
            raise UserError(f"{path}: write failed, is the disk full? ({exc.strerror or exc})") from None
        raise


def _read_raw(path: Path) -> np.ndarray:
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a TIFF file")
    try:
        with tifffile.TiffFile(path) as tif:
            if len(tif.pages) == 0:
                raise UserError(f"{path}: TIFF has no pages")
            rgb = _is_rgb(tif)
            planar = tif.pages[0].planarconfig == tifffile.PLANARCONFIG.SEPARATE
            # Files written page by page (one series per page) are still one stack of slices.
            data = tif.asarray() if len(tif.series) <= 1 else tif.asarray(key=slice(None))
    except UserError:
        raise
    except MemoryError:
        raise UserError(f"{path}: TIFF header claims more data than fits in memory (corrupt file?)") from None
    except Exception as exc:  # tifffile raises many types for broken files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{path}: not a readable TIFF file ({reason[:160]})") from None
    if data.size == 0:
        raise UserError(f"{path}: TIFF has no pixels")
    if rgb:
        warnings.warn(f"{path}: RGB image converted to grayscale", stacklevel=3)
        data = _rgb_to_gray(np.moveaxis(data, -3, -1) if planar else data)
    return data


def _is_rgb(tif: tifffile.TiffFile) -> bool:
    page = tif.pages[0]
    return getattr(page, "samplesperpixel", 1) in (3, 4) and page.photometric == tifffile.PHOTOMETRIC.RGB


def _rgb_to_gray(data: np.ndarray) -> np.ndarray:
    weights = np.array([0.299, 0.587, 0.114], np.float64)
    gray = data[..., :3].astype(np.float64) @ weights
    if data.dtype.kind in "ui":
        return np.clip(np.rint(gray), 0, np.iinfo(data.dtype).max).astype(data.dtype)
    return gray.astype(np.float32)


def _to_zyx(data: np.ndarray, path: Path) -> np.ndarray:
    data = np.squeeze(data) if data.ndim > 3 else data
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        raise UserError(f"{path}: expected a grayscale stack (Z, H, W), got array of shape {data.shape}")
    if min(data.shape[1:]) < 1:
        raise UserError(f"{path}: slices have zero size {data.shape[1:]}")
    return data


def _check_finite(stack: np.ndarray, path: Path) -> None:
    bad = ~np.isfinite(stack).reshape(stack.shape[0], -1).all(axis=1)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise UserError(f"{path}: slice {first} contains NaN or Inf pixels "
                        f"({int(bad.sum())} bad slice(s) in total)")
