"""The metadata_props contract of the project's ONNX files: key names and their reading, in one place.

Written by the exporters, read by `exporters.runtime` and by any client with numpy + onnxruntime."""

from __future__ import annotations

import json

MODEL_KIND = "emsynth.model"          # "segmenter" | "vae_encoder" | "vae_decoder" | "denoiser"
FORMAT_VERSION = "emsynth.format_version"
VERSION = "1"

SEGMENTER_KEYS = ("input_layout", "input_dtype", "tile_size", "size_divisor", "norm_mean", "norm_std",
                  "pixel_scale_uint8", "output_meaning", "threshold")
GENERATOR_KEYS = ("schedule", "timesteps", "prediction", "latent_scale", "latent_shape", "norm_mean",
                  "norm_std")


def as_strings(values: dict[str, object]) -> dict[str, str]:
    """metadata_props hold strings: JSON-encode anything that is not one."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}


def missing_keys(props: dict[str, str], kind: str) -> list[str]:
    needed = SEGMENTER_KEYS if kind == "segmenter" else GENERATOR_KEYS if kind == "denoiser" else ()
    return [k for k in (MODEL_KIND, *needed) if k not in props]
