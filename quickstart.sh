#!/usr/bin/env bash
# The main job on the embedded default data: phantom EM stacks -> tile store -> (as the stages land)
# generator -> synthetic tiles -> segmenter -> ONNX -> onnxruntime inference. Finishes in minutes on CPU.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/quickstart}
rm -rf "$OUT" && mkdir -p "$OUT"
$PY -m shared.phantom --out "$OUT/phantom" --slices 10 --seed 0
$PY -m shared.tiles build --images "$OUT/phantom/phantom_images.tif" --masks "$OUT/phantom/phantom_masks.tif" \
    --out "$OUT/real_store" --val-fraction 0.2
