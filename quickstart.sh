#!/usr/bin/env bash
# The main job on the embedded default data, end to end, in minutes on a CPU:
# phantom EM stacks -> tile store -> generator (VAE + mask-conditioned latent DDPM) -> synthetic tiles
# -> segmenter on real + 30% synthetic -> ONNX exports -> onnxruntime inference and evaluation.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/quickstart}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
rm -rf "$OUT" && mkdir -p "$OUT"
step() { printf '\n== %s\n' "$*"; }

step "1/6 phantom data and the real tile store (z-block split)"
$PY -m shared.phantom --out "$OUT/phantom" --slices 10 --seed 0
$PY -m shared.tiles build --images "$OUT/phantom/phantom_images.tif" --masks "$OUT/phantom/phantom_masks.tif" \
    --out "$OUT/real_store" --val-fraction 0.2

step "2/6 generator: VAE, then the mask-conditioned latent DDPM (quick preset)"
$PY -m generation_torch.train --store "$OUT/real_store" --preset quick --out "$OUT/generator"

step "3/6 synthetic image + mask pairs for varied real masks"
$PY -m generation_torch.sample --checkpoint "$OUT/generator/generator.pt" --masks-from "$OUT/real_store" \
    --n 64 --sampler dpmpp2m --steps 20 --guidance 2 --out "$OUT/synthetic_store"

step "4/6 segmenter on real tiles + 30% synthetic (validation on real only)"
$PY -m segmentation_tf.fit --store "$OUT/real_store" --synthetic-store "$OUT/synthetic_store" \
    --synthetic-ratio 0.3 --preset quick --out "$OUT/segmenter"

step "5/6 ONNX exports (parity-checked against the frameworks)"
$PY -m exporters.keras_onnx --model "$OUT/segmenter" --out "$OUT/segmenter.onnx"
$PY -m exporters.torch_onnx --checkpoint "$OUT/generator/generator.pt" --out "$OUT/generator_onnx"

step "6/6 onnxruntime inference: segment the phantom slices, draw tiles for masks, evaluate"
$PY -m exporters.infer segment --model "$OUT/segmenter.onnx" --images "$OUT/phantom/phantom_images.tif" \
    --out "$OUT/segmented"
$PY -m exporters.infer generate --model-dir "$OUT/generator_onnx" --masks "$OUT/synthetic_store/chunk-00000-masks.tif" \
    --n 4 --steps 20 --sampler dpmpp2m --guidance 2 --out "$OUT/generated"
$PY -m segmentation_tf.evaluate --model "$OUT/segmenter" --store "$OUT/real_store" --split val
printf '\nDone. Outputs in %s; TensorBoard: tensorboard --logdir %s\n' "$OUT" "$OUT"
