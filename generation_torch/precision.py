"""Mixed precision: bf16/fp16 autocast on GPU, bf16 autocast on CPUs with native bf16 (AVX512-BF16 or
AMX), fp32 elsewhere. `auto` picks; --precision overrides. Weights and optimizer state stay fp32."""

from __future__ import annotations

import contextlib

import torch

from shared.errors import UserError


def cpu_has_bf16() -> bool:
    """oneDNN's own check for fast bf16 kernels (avx512_bf16 / AMX); without them bf16 is emulated."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve(flag: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for `flag` on `device`; None means plain fp32."""
    if flag == "fp32":
        return None
    if device.type == "cuda":
        if flag == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if flag == "bf16" else torch.float16
    if flag == "fp16":
        raise UserError("--precision fp16 needs a GPU; use bf16 or fp32 on CPU")
    if flag == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if cpu_has_bf16() else None


def name(dtype: torch.dtype | None) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def grad_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """fp16 needs loss scaling against underflow; bf16 has fp32's range and does not."""
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
