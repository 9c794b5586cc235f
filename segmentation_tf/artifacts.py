"""The saved segmenter: RUN/segmenter.keras (the float32 model, uncompiled, so loading it needs no
custom objects) and RUN/segmenter.json (calibrated threshold, tile size, depth, normalization,
model config, pixel size of the training data (nm, or null), training provenance). Both written
atomically.

    from segmentation_tf.artifacts import load_segmenter
    seg = load_segmenter("runs/x")          # or the .keras path
    seg.model        # keras.Model: (B, H, W, 1) float32 in [-1, 1] -> (B, H, W, 1) sigmoid probability
    seg.threshold    # calibrated foreground threshold
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import keras

from segmentation_tf.config import UNetConfig
from segmentation_tf.model import build_unet
from segmentation_tf.sidecar import FORMAT, MODEL_NAME, SIDECAR_NAME, model_paths, read_sidecar
from shared import normalization
from shared.atomic import atomic_path, write_json_atomic
from shared.errors import UserError
from shared.pixel_size import PixelSize
from shared.tiling import OVERLAP


@dataclass
class Segmenter:
    model: keras.Model
    meta: dict[str, Any]

    @property
    def threshold(self) -> float:
        return float(self.meta["threshold"])

    @property
    def tile_size(self) -> int:
        return int(self.meta["tile_size"])

    @property
    def depth(self) -> int:
        return int(self.meta["depth"])


def save_model_atomic(model: keras.Model, target: Path) -> None:
    """model.save to a temp .keras file beside `target`, then rename."""
    with atomic_path(target, suffix=".keras") as tmp:
        model.save(tmp)


def float32_copy(model: keras.Model, config: UNetConfig) -> keras.Model:
    """The same weights in a float32 graph (what export and plain inference want)."""
    return rebuild(model, config, "float32")


def save_segmenter(model: keras.Model, config: UNetConfig, run_dir: Path, threshold: float,
                   tile_size: int, provenance: dict[str, Any], overlap: int = OVERLAP,
                   tta: bool = False, pixel_size: PixelSize | None = None) -> Path:
    """Write segmenter.keras + segmenter.json into run_dir; returns the model path. The saved graph is
    float32 (a mixed-precision model is rebuilt; a float32 one is saved as it is)."""
    path = run_dir / MODEL_NAME
    mixed = any(layer.dtype_policy.name != "float32" for layer in model.layers)
    save_model_atomic(float32_copy(model, config) if mixed else model, path)
    meta = {"format": FORMAT, "version": 1, "threshold": float(threshold), "tile_size": int(tile_size),
            "depth": config.depth, "recommended_overlap": int(overlap), "recommended_tta": bool(tta),
            "model": asdict(config), "normalization": normalization.metadata(),
            "pixel_size": pixel_size.to_json() if pixel_size else None,
            "input": "NHWC float32, normalized to [-1, 1]; H, W divisible by 2**depth",
            "output": "NHWC float32 sigmoid foreground (mitochondria) probability",
            "provenance": provenance}
    write_json_atomic(run_dir / SIDECAR_NAME, meta)
    return path


def load_segmenter(path: str | Path, policy: str = "float32") -> Segmenter:
    """Load segmenter.keras + segmenter.json. policy other than float32 rebuilds the graph under
    that mixed-precision policy (same weights)."""
    model_file, _ = model_paths(path)
    meta = read_sidecar(model_file)
    try:
        model = keras.saving.load_model(model_file, compile=False)
    except Exception as exc:  # corrupt or foreign file
        raise UserError(f"{model_file}: cannot load the model ({str(exc)[:120]})") from None
    if policy != "float32":
        model = rebuild(model, UNetConfig(**meta["model"]), policy)
    return Segmenter(model, meta)


def rebuild(model: keras.Model, config: UNetConfig, policy: str) -> keras.Model:
    """The same weights in a graph built under another mixed-precision policy."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        other = build_unet(config)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    other.set_weights(model.get_weights())
    return other

