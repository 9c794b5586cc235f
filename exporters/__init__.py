"""ONNX exports of both models (`torch_onnx`, `keras_onnx`) and the onnxruntime-only inference layer
(`runtime`, `infer`). Importing this package, `runtime` or `infer` never imports torch or tensorflow."""
