"""Rotary position embedding (RoPE, Su et al., 2021)."""

import keras
from keras import ops

from tflm.config import ROTARY_LAYOUTS


@keras.saving.register_keras_serializable(package="tflm")
class RotaryEmbedding(keras.layers.Layer):
    """Rotates query/key channel pairs by an angle proportional to position.

    Channel `i` of the first half is paired with channel `i + d/2` (the
    "rotate half" layout of GPT-NeoX and Hugging Face's Llama; `layout="half"`)
    or channel `2i` with `2i + 1` (`layout="interleaved"`: RoFormer, Meta's
    Llama weights before Hugging Face permutes them), and pair `i` is rotated by
    `position * max_wavelength^(-2i/d) / scaling_factor`. Rotations preserve
    norms, and the dot product of a rotated query at position `m` with a
    rotated key at position `n` depends only on `m - n`.

    Args:
        max_wavelength: the base of the geometric progression of frequencies
            (Hugging Face's `rope_theta`).
        scaling_factor: divides the positions (linear position interpolation).
        layout: `"half"` or `"interleaved"`: which channels form a pair.
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

    def __init__(self, max_wavelength=10000, scaling_factor=1.0, layout="half", **kwargs):
        super().__init__(**kwargs)
        if layout not in ROTARY_LAYOUTS:
            raise ValueError(f"RotaryEmbedding layout={layout!r}; expected one of "
                             f"{ROTARY_LAYOUTS}.")
        self.max_wavelength = max_wavelength
        self.scaling_factor = scaling_factor
        self.layout = layout
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
        angles = angles[:, :, None, :]  # (batch or 1, T, 1, d/2): one angle per pair
        cos, sin = ops.cos(angles), ops.sin(angles)
        x = ops.cast(inputs, "float32")
        if self.layout == "half":
            first, second = ops.split(x, 2, axis=-1)
        else:
            pairs = ops.reshape(x, tuple(ops.shape(x)[:-1]) + (dim // 2, 2))
            first, second = ops.unstack(pairs, 2, axis=-1)
        # The pair (a, b) becomes (a cos - b sin, b cos + a sin).
        first, second = first * cos - second * sin, second * cos + first * sin
        if self.layout == "half":
            rotated = ops.concatenate([first, second], axis=-1)
        else:
            rotated = ops.reshape(ops.stack([first, second], axis=-1), ops.shape(x))
        return ops.cast(rotated, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {"max_wavelength": self.max_wavelength, "scaling_factor": self.scaling_factor,
             "layout": self.layout}
        )
        return config
