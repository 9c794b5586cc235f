"""Pixel size: read from TIFF tags, ImageJ and OME metadata, carried in nanometres through the store,
the models and every TIFF written, and compared when a model meets data (a 2x mismatch changes what
a mitochondrion looks like to the model). Unknown stays None, and None is never warned about."""

from __future__ import annotations

import json
import re
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

import tifffile

MISMATCH_TOLERANCE = 0.25  # relative difference in x beyond which the model sees other-sized objects
_NM_PER_UNIT = {"nm": 1.0, "nanometer": 1.0, "nanometers": 1.0, "um": 1e3, "µm": 1e3, "μm": 1e3,
                "micron": 1e3, "microns": 1e3, "micrometer": 1e3, "micrometers": 1e3, "mm": 1e6,
                "millimeter": 1e6, "cm": 1e7, "centimeter": 1e7, "m": 1e9, "meter": 1e9, "pm": 1e-3,
                "a": 0.1, "å": 0.1, "angstrom": 0.1, "inch": 2.54e7, "in": 2.54e7}
_MAX_PLAUSIBLE_NM = 1e4  # 72 or 300 dpi "inch" resolutions of image editors are not EM calibrations


@dataclass(frozen=True)
class PixelSize:
    """Pixel size in nanometres; z (slice spacing) where the file says."""

    x: float
    y: float
    z: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"x": self.x, "y": self.y, "z": self.z, "unit": "nm"}

    @classmethod
    def from_json(cls, data: object) -> PixelSize | None:
        """From to_json's dict (None, or anything malformed, is unknown)."""
        if not isinstance(data, dict) or data.get("unit", "nm") != "nm":
            return None
        try:
            x, y = float(data["x"]), float(data["y"])
            z = None if data.get("z") is None else float(data["z"])
        except (KeyError, TypeError, ValueError):
            return None
        return cls(x, y, z) if x > 0 and y > 0 else None

    def describe(self) -> str:
        return f"{self.x:g} x {self.y:g}" + (f" x {self.z:g}" if self.z else "") + " nm"


def nm_per(unit: str) -> float | None:
    """Nanometres in one `unit` (ImageJ, OME and TIFF spellings), None if not a length."""
    key = unit.strip().lower().replace("\\u00b5", "µ")  # ImageJ may write "\\u00B5m" escaped
    return _NM_PER_UNIT.get(key)


def from_tiff(tif: tifffile.TiffFile) -> PixelSize | None:
    """The pixel size an open TIFF states: OME-XML, else ImageJ unit + resolution (+ spacing), else the
    TIFF resolution tags with their ResolutionUnit."""
    return _from_ome(tif) or _from_imagej(tif) or _from_tags(tif)


def from_metadata(props: dict[str, str]) -> PixelSize | None:
    """The pixel size in an ONNX file's metadata_props (exporters.keras_onnx writes it as JSON)."""
    try:
        return PixelSize.from_json(json.loads(props.get("pixel_size", "null")))
    except ValueError:
        return None


def mismatch(model: PixelSize | None, data: PixelSize | None,
             tolerance: float = MISMATCH_TOLERANCE) -> str | None:
    """One line when both are known and x differs by more than `tolerance` (relative), else None."""
    if model is None or data is None:
        return None
    ratio = data.x / model.x
    if abs(ratio - 1.0) <= tolerance:
        return None
    return (f"the data's pixel size {data.describe()} is {ratio:.2g}x the model's {model.describe()}: "
            "objects look {} to it than in training; resample the data to the model's pixel size"
            .format("larger" if ratio < 1 else "smaller"))


def warn_mismatch(model: PixelSize | None, data: PixelSize | None, what: str) -> bool:
    """Print mismatch()'s line on stderr, prefixed by `what` (e.g. the input file); True if it warned."""
    line = mismatch(model, data)
    if line:
        print(f"warning: {what}: {line}", file=sys.stderr)
    return line is not None


def _sizes(x_res: float, y_res: float, nm_per_unit: float | None, z: float | None = None
           ) -> PixelSize | None:
    """Pixels per unit -> nanometres per pixel (None for unknown units or implausible sizes)."""
    if nm_per_unit is None or x_res <= 0 or y_res <= 0:
        return None
    x, y = nm_per_unit / x_res, nm_per_unit / y_res
    if x > _MAX_PLAUSIBLE_NM or y > _MAX_PLAUSIBLE_NM:
        return None
    return PixelSize(_round(x), _round(y), None if z is None else _round(z))


def _round(value: float) -> float:
    return float(f"{value:.6g}")  # TIFF rationals carry round-off (0.2 -> 1/5, 4.9 -> 10/49)


def _resolution(tif: tifffile.TiffFile) -> tuple[float, float] | None:
    tags = tif.pages[0].tags
    if "XResolution" not in tags or "YResolution" not in tags:
        return None
    return _rational(tags["XResolution"].value), _rational(tags["YResolution"].value)


def _rational(value: object) -> float:
    if isinstance(value, tuple):
        return value[0] / value[1] if value[1] else 0.0
    return float(value)  # type: ignore[arg-type]


def _from_tags(tif: tifffile.TiffFile) -> PixelSize | None:
    res = _resolution(tif)
    unit_tag = tif.pages[0].tags.get("ResolutionUnit")
    unit = int(unit_tag.value) if unit_tag is not None else 2  # TIFF's default unit is the inch
    nm = {2: _NM_PER_UNIT["inch"], 3: _NM_PER_UNIT["cm"]}.get(unit)  # 1: no unit, no physical size
    return _sizes(*res, nm) if res else None


def _from_imagej(tif: tifffile.TiffFile) -> PixelSize | None:
    meta = tif.imagej_metadata or {}
    res = _resolution(tif)
    unit = meta.get("unit")
    if not isinstance(unit, str) or res is None:
        return None
    nm = nm_per(unit)
    spacing = meta.get("spacing")
    z = float(spacing) * nm if nm and isinstance(spacing, int | float) and spacing > 0 else None
    return _sizes(*res, nm, z)


def _from_ome(tif: tifffile.TiffFile) -> PixelSize | None:
    xml = tif.ome_metadata
    if not xml:
        return None
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    pixels = next((el for el in root.iter() if re.sub(r"^\{.*\}", "", el.tag) == "Pixels"), None)
    if pixels is None or "PhysicalSizeX" not in pixels.attrib:
        return None

    def size(axis: str) -> float | None:
        value = pixels.attrib.get(f"PhysicalSize{axis}")
        nm = nm_per(pixels.attrib.get(f"PhysicalSize{axis}Unit", "µm"))  # OME's default unit
        try:
            return float(value) * nm if value is not None and nm else None
        except ValueError:
            return None

    x, y = size("X"), size("Y") or size("X")
    if not x or not y or x > _MAX_PLAUSIBLE_NM:
        return None
    z = size("Z")
    return PixelSize(_round(x), _round(y), None if z is None else _round(z))
