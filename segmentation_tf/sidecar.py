"""The segmenter's JSON sidecar (RUN/segmenter.json) and where a saved segmenter lives; no
TensorFlow import, so CLIs check a --model path before loading TensorFlow."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from shared.errors import UserError, non_negative_int
from shared.pixel_size import PixelSize
from shared.tiling import OVERLAP

MODEL_NAME = "segmenter.keras"
SIDECAR_NAME = "segmenter.json"
FORMAT = "emsynth-segmenter"


def model_paths(path: str | Path) -> tuple[Path, Path]:
    """A run folder or a .keras file -> (model file, sidecar file)."""
    path = Path(path)
    model = path / MODEL_NAME if path.is_dir() else path
    return model, model.with_name(SIDECAR_NAME)


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """The sidecar of a saved segmenter (checks that the model file exists too)."""
    model, sidecar = model_paths(path)
    if not model.is_file():
        raise UserError(f"{model}: no saved segmenter here")
    if not sidecar.is_file():
        raise UserError(f"{sidecar}: missing (a segmenter is saved as {MODEL_NAME} + {SIDECAR_NAME})")
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{sidecar}: unreadable ({str(exc)[:120]})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "threshold" not in meta:
        raise UserError(f"{sidecar}: not a segmenter sidecar")
    return meta


def model_pixel_size(meta: dict[str, Any]) -> PixelSize | None:
    """The pixel size the segmenter was trained at (None: unknown, e.g. older sidecars)."""
    return PixelSize.from_json(meta.get("pixel_size"))


def add_inference_flags(parser: argparse.ArgumentParser) -> None:
    """--overlap/--tta, defaulting to the settings the threshold was calibrated with."""
    parser.add_argument("--overlap", type=non_negative_int, default=None,
                        help="window overlap in pixels (default: as the threshold was calibrated)")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                        help="8-fold flip/rotation averaging (default: as the threshold was calibrated)")


def inference_settings(meta: dict[str, Any], overlap: int | None = None, tta: bool | None = None
                       ) -> tuple[int, bool]:
    """(overlap, tta): the given values, else the sidecar's (those the threshold was calibrated with);
    the overlap checked against the tile size."""
    overlap = int(meta.get("recommended_overlap", OVERLAP)) if overlap is None else overlap
    tta = bool(meta.get("recommended_tta", False)) if tta is None else tta
    if overlap >= int(meta["tile_size"]):
        raise UserError(f"--overlap must be below the tile size {meta['tile_size']}")
    return overlap, tta
