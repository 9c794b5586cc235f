"""One output layout and one mask encoding for every segment command (segmentation_tf.predict and
exporters.infer segment):

    OUT/probability.tif   float32 foreground probability, the input's grid and pixel size
    OUT/mask.tif          uint8 0/255 (visible in Fiji), foreground where probability >= threshold
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shared.errors import UserError
from shared.pixel_size import PixelSize
from shared.tiff_io import write_stack

PROBABILITY, MASK = "probability.tif", "mask.tif"


def foreground_mask(probs: np.ndarray, threshold: float) -> np.ndarray:
    """uint8 0/255 where probability >= threshold (the comparison calibration used)."""
    return np.where(probs >= threshold, 255, 0).astype(np.uint8)


def output_folder(out: Path) -> Path:
    """OUT is created if its parent exists (a mistyped parent is an error, not a new tree)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    if not out.parent.is_dir():
        raise UserError(f"{out.parent}: output folder does not exist")
    out.mkdir(exist_ok=True)
    return out


def write_segmentation(out: Path, probs: np.ndarray, threshold: float,
                       pixel_size: PixelSize | None = None) -> tuple[Path, Path]:
    """OUT/probability.tif and OUT/mask.tif, each written atomically."""
    folder = output_folder(out)
    write_stack(folder / PROBABILITY, probs.astype(np.float32), pixel_size)
    write_stack(folder / MASK, foreground_mask(probs, threshold), pixel_size)
    return folder / PROBABILITY, folder / MASK
