"""Normalization layers: RMSNorm, and a factory for the norm a config names."""

import keras
from keras import ops

from tflm.config import NORMALIZATIONS


@keras.saving.register_keras_serializable(package="tflm")
class RMSNormalization(keras.layers.Layer):
    """Root-mean-square normalization (Zhang & Sennrich, 2019).

    `y = x / sqrt(mean(x^2) + epsilon) * scale`, over the last axis, with no
    mean subtraction and no bias. Statistics run in float32 under mixed
    precision.

    Args:
        epsilon: added to the mean square.
        **kwargs: other keyword arguments of `keras.layers.Layer`.

    Example:
    >>> y = RMSNormalization(epsilon=1e-6)(keras.random.normal((2, 8, 32)))
    """

    def __init__(self, epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        self.scale = self.add_weight(
            name="scale", shape=(input_shape[-1],), initializer="ones", trainable=True
        )

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        mean_square = ops.mean(ops.square(x), axis=-1, keepdims=True)
        x = x * ops.rsqrt(mean_square + self.epsilon) * ops.cast(self.scale, "float32")
        return ops.cast(x, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"epsilon": self.epsilon})
        return config


def make_normalization(kind, epsilon, **kwargs):
    """Returns a new `LayerNormalization` (`"layer_norm"`) or `RMSNormalization` (`"rms_norm"`).

    Both compute their statistics in float32 under mixed precision.
    """
    if kind == "layer_norm":
        return keras.layers.LayerNormalization(epsilon=epsilon, **kwargs)
    if kind == "rms_norm":
        return RMSNormalization(epsilon=epsilon, **kwargs)
    raise ValueError(f"Unknown normalization {kind!r}; expected one of {NORMALIZATIONS}.")
