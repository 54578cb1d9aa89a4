"""Sinusoidal position encoding of "Attention Is All You Need"."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="tflm")
class SinusoidalPositionEncoding(keras.layers.Layer):
    """Fixed sinusoidal position encoding (Vaswani et al., 2017, section 3.5).

    `PE[pos, 2i] = sin(pos / max_wavelength^(2i / d))` and
    `PE[pos, 2i + 1] = cos(pos / max_wavelength^(2i / d))`, where `d` is the
    last dimension of the inputs. The layer has no weights; it returns the
    encoding broadcast to the inputs' shape, to be added to the embeddings.

    Args:
        max_wavelength: the base of the geometric progression of wavelengths.
        **kwargs: other keyword arguments of `keras.layers.Layer`.

    Call arguments:
        inputs: a tensor of shape `(batch, sequence, d)` (the embeddings).
        start_index: position of the first token, for decoding with a cache.
        positions: optional `(batch, T)` positions of each token; overrides `start_index`.

    Example:
    >>> embeddings = keras.random.normal((2, 16, 32))
    >>> encoding = SinusoidalPositionEncoding()(embeddings)
    >>> outputs = embeddings + encoding
    """

    def __init__(self, max_wavelength=10000, **kwargs):
        super().__init__(**kwargs)
        self.max_wavelength = max_wavelength
        self.built = True

    def call(self, inputs, start_index=0, positions=None):
        shape = ops.shape(inputs)
        seq_len, dim = shape[-2], shape[-1]
        if positions is None:
            positions = ops.arange(seq_len) + start_index
        positions = ops.cast(positions, "float32")
        # Channel 2i and 2i+1 share the frequency 1 / max_wavelength^(2i / d).
        pair_index = ops.cast(ops.arange(dim) // 2, "float32")
        inverse_freq = ops.power(
            float(self.max_wavelength), -2.0 * pair_index / ops.cast(dim, "float32")
        )
        angles = ops.expand_dims(positions, -1) * inverse_freq
        is_even = ops.equal(ops.arange(dim) % 2, 0)
        encoding = ops.where(is_even, ops.sin(angles), ops.cos(angles))
        return ops.broadcast_to(ops.cast(encoding, self.compute_dtype), shape)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"max_wavelength": self.max_wavelength})
        return config
