"""Writing ONNX files: metadata_props, an IR version onnxruntime can load, atomic save, parity."""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from exporters import metadata as meta
from shared.atomic import write_atomic

# onnx >= 1.20 stamps IR version 14+; onnxruntime 1.31 loads at most 13. Opset 17 needs IR >= 8.
MAX_IR_VERSION = 10


def finalize(proto: onnx.ModelProto, kind: str, props: dict[str, object]) -> onnx.ModelProto:
    """Attach the project's metadata, cap the IR version, and check the graph."""
    proto.ir_version = min(proto.ir_version, MAX_IR_VERSION)
    values = meta.as_strings({meta.MODEL_KIND: kind, meta.FORMAT_VERSION: meta.VERSION, **props})
    existing = {p.key: p for p in proto.metadata_props}
    for key, value in values.items():
        if key in existing:
            existing[key].value = value
        else:
            proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto)
    return proto


def save_atomic(proto: onnx.ModelProto, target: str | os.PathLike) -> Path:
    target = Path(target)
    write_atomic(target, lambda tmp: onnx.save(proto, str(tmp)))
    return target


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}
