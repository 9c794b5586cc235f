"""FLOPs of an ONNX graph at a fixed input shape (multiply-add = 2 FLOPs), and the CPU's float32 peak."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import shape_inference


def _dims(value_info) -> list[int]:
    return [d.dim_value for d in value_info.type.tensor_type.shape.dim]


def graph_flops(model: onnx.ModelProto, input_shapes: dict[str, list[int]]) -> float:
    """Conv, ConvTranspose, MatMul and Gemm FLOPs after shape inference with the given input shapes."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for inp in model.graph.input:
        if inp.name in input_shapes:
            for dim, size in zip(inp.type.tensor_type.shape.dim, input_shapes[inp.name], strict=True):
                dim.Clear()
                dim.dim_value = size
    model = shape_inference.infer_shapes(model, data_prop=True)
    shapes = {v.name: _dims(v) for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]}
    shapes.update({t.name: list(t.dims) for t in model.graph.initializer})
    total = 0.0
    for node in model.graph.node:
        if node.op_type in ("Conv", "ConvTranspose"):
            w, x, out = (shapes.get(n) for n in (node.input[1], node.input[0], node.output[0]))
            if not (w and x and out and all(x) and all(out)):
                continue
            if node.op_type == "Conv":  # w: (Cout, Cin/g, k, k); every output element costs Cin/g*k*k MACs
                total += 2.0 * np.prod(w[1:]) * np.prod(out)
            else:  # w: (Cin, Cout/g, k, k); every input element is spread over Cout/g*k*k outputs
                total += 2.0 * np.prod(w[1:]) * np.prod(x)
        elif node.op_type in ("MatMul", "Gemm"):
            a, out = shapes.get(node.input[0]), shapes.get(node.output[0])
            if a and out and all(a) and all(out):
                total += 2.0 * a[-1] * np.prod(out)
    return float(total)


def nominal_peak_gflops(flops_per_cycle: int = 64) -> tuple[float, str]:
    """cores x clock x FLOPs/cycle. 64 = two 512-bit FMA pipes (Zen 5, recent Xeons) in float32."""
    mhz = 0.0
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        mhz = next((float(x.split(":")[1]) for x in lines if x.startswith("cpu MHz")), 0.0)
    except OSError:
        pass
    cores = os.cpu_count() or 1
    return cores * mhz / 1000 * flops_per_cycle, f"{cores} cores x {mhz / 1000:.2f} GHz x {flops_per_cycle}"


def measured_sgemm_gflops(n: int = 2048, seconds: float = 1.5) -> float:
    """float32 matrix multiply rate (torch's BLAS when present: numpy's may run capped kernels)."""
    try:
        import torch

        a = torch.rand(n, n)
    except ImportError:
        a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    b = a.clone() if hasattr(a, "clone") else a.copy()
    a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2.0 * n**3 * count / (time.perf_counter() - start) / 1e9
