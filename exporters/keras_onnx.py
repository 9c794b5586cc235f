"""Export the Keras segmenter to ONNX through tf2onnx, with everything a client needs in metadata.

    python -m exporters.keras_onnx --model RUN_DIR_OR_KERAS --out segmenter.onnx [--fp16]

Dynamic batch and spatial size (H, W divisible by 2**depth); parity against Keras is checked on
export (max abs difference <= 1e-4 on random tiles), and the file is written atomically.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from exporters.onnx_io import finalize, save_atomic
from shared import normalization
from shared.errors import ArgumentParser, UserError, run_cli
from shared.tiling import OVERLAP

OPSET = 17
PARITY_TOLERANCE = 1e-4


def segmenter_metadata(sidecar: dict) -> dict[str, object]:
    depth = int(sidecar["depth"])
    return {
        "input_name": "image", "input_layout": "NHWC", "input_dtype": "float32",
        "input_shape": "[batch, height, width, 1]; height and width divisible by size_divisor",
        "tile_size": int(sidecar["tile_size"]), "size_divisor": 2**depth,
        **normalization.metadata(),
        "output_name": "probability",
        "output_meaning": "sigmoid foreground (mitochondria) probability, NHWC float32 [batch, height, "
                          "width, 1]; foreground where probability >= threshold",
        "threshold": float(sidecar["threshold"]),
        "recommended_overlap": int(sidecar.get("recommended_overlap", OVERLAP)),
        "recommended_tta": bool(sidecar.get("recommended_tta", False)),
        "pixel_size": sidecar.get("pixel_size"),  # shared.pixel_size JSON (nm), null when unknown
        "provenance": sidecar.get("provenance", {}),
    }


def keras_to_onnx(model, opset: int = OPSET):
    import tensorflow as tf
    import tf2onnx

    spec = (tf.TensorSpec((None, None, None, 1), tf.float32, name="image"),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset,
                                          output_path=None)
    return proto


def parity(model, proto, tile: int, seed: int = 0) -> float:
    """Max |Keras - onnxruntime| on random normalized tiles (CPU, float32)."""
    import onnxruntime as ort

    x = np.random.default_rng(seed).uniform(-1, 1, (2, tile, tile, 1)).astype(np.float32)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    return float(np.abs(np.asarray(model(x, training=False)) - got).max())


def export_segmenter(model_path: Path, out: Path, fp16: bool = False) -> tuple[Path, float]:
    if not Path(model_path).exists():  # before TensorFlow loads (seconds, and its log lines)
        raise UserError(f"{model_path}: no saved segmenter here")
    from segmentation_tf.quiet import quiet_tensorflow

    quiet_tensorflow()  # before segmentation_tf.artifacts imports TensorFlow: no start-up lines
    from segmentation_tf.artifacts import load_segmenter

    if not out.parent.is_dir():
        raise UserError(f"{out.parent}: output folder does not exist")
    seg = load_segmenter(model_path)
    proto = keras_to_onnx(seg.model)
    props = segmenter_metadata(seg.meta)
    finalize(proto, "segmenter", props)
    diff = parity(seg.model, proto, min(seg.tile_size, 128))
    if diff > PARITY_TOLERANCE:
        raise RuntimeError(f"ONNX export differs from Keras by {diff:.2e} (> {PARITY_TOLERANCE})")
    save_atomic(proto, out)
    if fp16:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        half = convert_float_to_float16(proto, keep_io_types=False)
        finalize(half, "segmenter", {**props, "input_dtype": "float16", "precision": "fp16"})
        save_atomic(half, out.with_suffix(".fp16.onnx"))
    return out, diff


def quantize_int8(fp32_path: Path, out: Path, tiles: np.ndarray) -> Path:
    """Static int8 (QDQ, per-channel weights); activations calibrated on `tiles` ((N, T, T) normalized
    real tiles). Weights in 7 bits (reduce_range): CPUs without VNNI multiply u8 x s8 pairs into
    saturating 16-bit sums, which put the test model's probabilities 0.105 off float32 on average on
    an AVX2-only EPYC (2026-12-05); a file must run alike on any CPU. Measured on the EPFL segmenter
    with 8-bit weights: 1.9x the float32 speed."""
    import tempfile

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"image": tiles[i:i + 4, ..., None].astype(np.float32)}
                                 for i in range(0, len(tiles), 4)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(Path(tmp) / "int8.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                        reduce_range=True)
        import onnx

        proto = onnx.load(str(Path(tmp) / "int8.onnx"))
    props = {p.key: p.value for p in proto.metadata_props}
    finalize(proto, "segmenter", {**props, "precision": "int8 (static QDQ, per-channel weights)"})
    return save_atomic(proto, out)


def calibration_tiles(store_path: Path, n: int = 32) -> np.ndarray:
    from shared.store import TileStore

    store = TileStore(store_path)
    idx = store.indices("train")
    return store.images(idx[np.linspace(0, len(idx) - 1, min(n, len(idx))).astype(int)])


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m exporters.keras_onnx", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="segmenter run folder or .keras file")
    parser.add_argument("--out", type=Path, required=True, help="output .onnx file")
    parser.add_argument("--fp16", action="store_true", help="also write OUT.fp16.onnx (for CUDA)")
    parser.add_argument("--int8-store", type=Path,
                        help="also write OUT.int8.onnx (CPU int8), calibrated on this store's train tiles")
    args = parser.parse_args(argv)
    out, diff = export_segmenter(args.model, args.out, args.fp16)
    print(f"wrote {out} (opset {OPSET}, max |Keras - onnxruntime| = {diff:.2e})")
    if args.int8_store is not None:
        int8 = quantize_int8(out, out.with_suffix(".int8.onnx"), calibration_tiles(args.int8_store))
        print(f"wrote {int8} (int8, calibrated on {args.int8_store})")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
