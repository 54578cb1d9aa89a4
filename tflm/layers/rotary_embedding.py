"""Rotary position embedding (RoPE, Su et al., 2021)."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="tflm")
class RotaryEmbedding(keras.layers.Layer):
    """Rotates query/key channel pairs by an angle proportional to position.

    Channel `i` of the first half is paired with channel `i + d/2` (the
    "rotate half" layout of GPT-NeoX and LLaMA) and the pair is rotated by
    `position * max_wavelength^(-2i/d) / scaling_factor`. Rotations preserve
    norms, and the dot product of a rotated query at position `m` with a
    rotated key at position `n` depends only on `m - n`.

    Args:
        max_wavelength: the base of the geometric progression of frequencies.
        scaling_factor: divides the positions (linear position interpolation).
        **kwargs: other keyword arguments of `keras.layers.Layer`.

    Call arguments:
        inputs: a tensor of shape `(batch, T, num_heads, head_dim)`; `head_dim`
            must be even.
        start_index: position of the first token, for decoding with a cache.
        positions: optional `(batch, T)` positions of each token; overrides `start_index`.

    Example:
    >>> query = keras.random.normal((2, 16, 4, 8))
    >>> rotated = RotaryEmbedding()(query)
    """

    def __init__(self, max_wavelength=10000, scaling_factor=1.0, **kwargs):
        super().__init__(**kwargs)
        self.max_wavelength = max_wavelength
        self.scaling_factor = scaling_factor
        self.built = True

    def call(self, inputs, start_index=0, positions=None):
        shape = ops.shape(inputs)
        seq_len, dim = shape[1], inputs.shape[-1]
        if dim % 2:
            raise ValueError(f"RotaryEmbedding needs an even last dimension, got {dim}.")
        # Angles in float32: positions up to 1e5 lose whole radians in bfloat16.
        inverse_freq = ops.power(
            float(self.max_wavelength),
            -ops.cast(ops.arange(0, dim, 2), "float32") / float(dim),
        )
        if positions is None:
            positions = (ops.arange(seq_len) + start_index)[None, :]
        positions = ops.cast(positions, "float32")  # (batch or 1, T)
        angles = ops.expand_dims(positions, -1) * inverse_freq / self.scaling_factor
        angles = ops.concatenate([angles, angles], axis=-1)[:, :, None, :]
        cos, sin = ops.cos(angles), ops.sin(angles)
        x = ops.cast(inputs, "float32")
        first, second = ops.split(x, 2, axis=-1)
        rotated_half = ops.concatenate([-second, first], axis=-1)
        return ops.cast(x * cos + rotated_half * sin, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {"max_wavelength": self.max_wavelength, "scaling_factor": self.scaling_factor}
        )
        return config
