"""Numeric policy and device strategy, chosen automatically with a flag to override.

auto: GPUs with bf16 tensor cores (compute capability >= 8.0) -> mixed_bfloat16, older GPUs
(>= 7.0) -> mixed_float16; CPUs with AMX-BF16 tile units -> mixed_bfloat16; anything else float32.
Measured on 2-core AMD EPYC development machines (bench/segmentation.py): with avx512_bf16 (no AMX)
mixed_bfloat16 trained the 1.9 M-parameter U-Net at 0.8x the float32 speed; without avx512 at all
(2026-12-05) at 0.15x, emulated. So avx512_bf16 alone does not select it.
"""

from __future__ import annotations

from pathlib import Path

import keras
import tensorflow as tf

POLICIES = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
BF16_CPU_FLAGS = ("amx_bf16",)  # avx512_bf16 alone measured slower, see above


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_supports_bf16() -> bool:
    return any(flag in cpu_flags() for flag in BF16_CPU_FLAGS)


def gpu_capabilities() -> list[tuple[int, int]]:
    caps = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        caps.append(tuple(details.get("compute_capability", (0, 0))))
    return caps


def auto_policy() -> str:
    caps = gpu_capabilities()
    if caps:
        if min(caps) >= (8, 0):
            return "mixed_bfloat16"
        return "mixed_float16" if min(caps) >= (7, 0) else "float32"
    return "mixed_bfloat16" if cpu_supports_bf16() else "float32"


def resolve_policy(name: str) -> str:
    if name not in POLICIES:
        raise ValueError(f"unknown precision {name!r}; choose from {', '.join(POLICIES)}")
    return auto_policy() if name == "auto" else name


def apply_policy(name: str) -> str:
    """Set the global Keras dtype policy ('auto' resolved); returns the policy in force."""
    policy = resolve_policy(name)
    keras.mixed_precision.set_global_policy(policy)
    return policy


def split_cpu(devices: int) -> None:
    """Expose the CPU as several logical devices (to exercise MirroredStrategy without GPUs).
    Must run before TensorFlow initializes its devices."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * devices)


def choose_strategy(cpu_devices: int = 0) -> tf.distribute.Strategy:
    """MirroredStrategy over several GPUs (or over split logical CPUs when asked), else the default."""
    if cpu_devices > 1:
        split_cpu(cpu_devices)
        names = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(names, cross_device_ops=tf.distribute.ReductionToOneDevice())
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()
