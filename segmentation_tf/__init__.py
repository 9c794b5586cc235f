"""Keras residual U-Net segmenter: model, losses, data pipeline, training, prediction, evaluation."""
