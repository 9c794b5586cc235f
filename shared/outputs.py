"""One output layout and one mask encoding for every segment command (segmentation_tf.predict and
exporters.infer segment):

    OUT/probability.tif   float32 foreground probability, the input's grid and pixel size
    OUT/mask.tif          uint8 0/255 (visible in Fiji), foreground where probability >= threshold
    OUT/instances.tif     with --instances 2d|3d: one id per connected object of the mask (0 background;
                          uint16, uint32 past 65535 objects), as napari Labels and ilastik read them
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shared.errors import UserError
from shared.pixel_size import PixelSize
from shared.tiff_io import write_stack

PROBABILITY, MASK, INSTANCES = "probability.tif", "mask.tif", "instances.tif"
INSTANCE_MODES = ("none", "2d", "3d")


def foreground_mask(probs: np.ndarray, threshold: float) -> np.ndarray:
    """uint8 0/255 where probability >= threshold (the comparison calibration used)."""
    return np.where(probs >= threshold, 255, 0).astype(np.uint8)


def instance_labels(mask: np.ndarray, mode: str) -> np.ndarray:
    """Connected objects of a (Z, H, W) mask, face-connected: "2d" labels each slice on its own (ids
    run on across the stack, so every id is one object), "3d" joins objects that touch across slices
    (a consecutive volume: one mitochondrion, one id)."""
    from scipy import ndimage  # a dependency of the package; shared stays light for every other use

    if mode not in INSTANCE_MODES[1:]:
        raise ValueError(f"instance mode must be one of {INSTANCE_MODES[1:]}, got {mode!r}")
    foreground = np.asarray(mask) > 0
    if mode == "3d":
        labels, count = ndimage.label(foreground)
    else:
        labels, count = np.zeros(foreground.shape, np.int64), 0
        for z, plane in enumerate(foreground):
            labels[z], n = ndimage.label(plane)
            labels[z][labels[z] > 0] += count
            count += n
    return labels.astype(np.uint16 if count <= np.iinfo(np.uint16).max else np.uint32)


def output_folder(out: Path) -> Path:
    """OUT is created if its parent exists (a mistyped parent is an error, not a new tree)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    if not out.parent.is_dir():
        raise UserError(f"{out.parent}: output folder does not exist")
    out.mkdir(exist_ok=True)
    return out


def write_segmentation(out: Path, probs: np.ndarray, threshold: float, pixel_size: PixelSize | None = None,
                       instances: str = "none") -> list[Path]:
    """OUT/probability.tif, OUT/mask.tif and with instances "2d"/"3d" OUT/instances.tif, each written
    atomically; returns the paths written."""
    folder = output_folder(out)
    mask = foreground_mask(probs, threshold)
    write_stack(folder / PROBABILITY, probs.astype(np.float32), pixel_size)
    write_stack(folder / MASK, mask, pixel_size)
    written = [folder / PROBABILITY, folder / MASK]
    if instances != "none":
        write_stack(folder / INSTANCES, instance_labels(mask, instances), pixel_size)
        written.append(folder / INSTANCES)
    return written


def add_instances_flag(parser) -> None:
    parser.add_argument("--instances", choices=INSTANCE_MODES, default="none",
                        help="also write OUT/instances.tif, one id per connected object: 2d per slice, "
                             "3d across slices (a consecutive volume); default none")
