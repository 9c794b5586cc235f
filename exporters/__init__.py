"""ONNX exports of both models (`torch_onnx`, `keras_onnx`), the onnxruntime-only inference layer
(`runtime`, `infer`), and the segmenter as a bioimage.io model package (`bioimageio`). Importing this
package, `runtime` or `infer` never imports torch or tensorflow."""
