"""The residual U-Net: a builder that takes widths and depth and returns a fully convolutional
keras.Model, input (B, H, W, 1) float32 in [-1, 1], output (B, H, W, 1) float32 sigmoid probability.

H and W must be divisible by 2**depth. Only ONNX-friendly layers: Conv2D, BatchNormalization,
Activation, Add, MaxPooling2D, UpSampling2D, Concatenate.
"""

from __future__ import annotations

import keras
from keras import layers

from segmentation_tf.config import UNetConfig

__all__ = ["UNetConfig", "build_unet", "residual_block"]


def _conv(x, width: int, kernel: int, name: str):
    return layers.Conv2D(width, kernel, padding="same", use_bias=False,
                         kernel_initializer="he_normal", name=name)(x)


def residual_block(x, width: int, name: str, momentum: float = 0.95):
    """conv-BN-ReLU-conv-BN plus a (1x1 conv + BN) shortcut, then ReLU."""
    shortcut = x
    if x.shape[-1] != width:
        shortcut = _conv(x, width, 1, f"{name}_proj")
        shortcut = layers.BatchNormalization(momentum=momentum, name=f"{name}_proj_bn")(shortcut)
    y = _conv(x, width, 3, f"{name}_conv1")
    y = layers.BatchNormalization(momentum=momentum, name=f"{name}_bn1")(y)
    y = layers.Activation("relu", name=f"{name}_relu1")(y)
    y = _conv(y, width, 3, f"{name}_conv2")
    y = layers.BatchNormalization(momentum=momentum, name=f"{name}_bn2")(y)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.Activation("relu", name=f"{name}_out")(y)


def build_unet(config: UNetConfig | None = None, name: str = "residual_unet") -> keras.Model:
    """Encoder of residual blocks + max-pooling, decoder of upsampling + skip concatenation +
    residual blocks, 1x1 conv + sigmoid head computed in float32 (also under mixed precision)."""
    widths = (config or UNetConfig()).widths()
    config = config or UNetConfig()
    inputs = keras.Input((None, None, 1), name="image", dtype="float32")
    x, skips = inputs, []
    for level, width in enumerate(widths[:-1]):
        x = residual_block(x, width, f"enc{level}", config.bn_momentum)
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"pool{level}")(x)
    x = residual_block(x, widths[-1], "bottleneck", config.bn_momentum)
    if config.dropout > 0:
        x = layers.SpatialDropout2D(config.dropout, name="bottleneck_dropout")(x)
    for level in reversed(range(config.depth)):
        x = layers.UpSampling2D(2, interpolation="nearest", name=f"up{level}")(x)
        x = _conv(x, widths[level], 1, f"up{level}_conv")
        x = layers.Concatenate(name=f"skip{level}")([x, skips[level]])
        x = residual_block(x, widths[level], f"dec{level}", config.bn_momentum)
    logits = layers.Conv2D(1, 1, kernel_initializer="he_normal", name="logits", dtype="float32")(x)
    probability = layers.Activation("sigmoid", name="probability", dtype="float32")(logits)
    return keras.Model(inputs, probability, name=name)
