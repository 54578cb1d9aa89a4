"""Learned absolute position embedding (BERT, GPT-2)."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="tflm")
class PositionEmbedding(keras.layers.Layer):
    """A trainable embedding per position, up to `sequence_length` positions.

    Returns the embeddings of positions `start_index .. start_index + T - 1`
    broadcast to the inputs' shape `(batch, T, d)`, to be added to the token
    embeddings.

    Args:
        sequence_length: the largest number of positions.
        initializer: initializer of the `(sequence_length, d)` table.
        **kwargs: other keyword arguments of `keras.layers.Layer`.

    Call arguments:
        inputs: a tensor of shape `(batch, T, d)`.
        start_index: position of the first token, for decoding with a cache.
        positions: optional `(batch, T)` int positions of each token (e.g. for
            left-padded prompts); overrides `start_index`.

    Example:
    >>> embeddings = keras.random.normal((2, 16, 32))
    >>> outputs = embeddings + PositionEmbedding(sequence_length=128)(embeddings)
    """

    def __init__(self, sequence_length, initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        if sequence_length is None or int(sequence_length) <= 0:
            raise ValueError(
                f"`sequence_length` must be a positive integer, got {sequence_length!r}."
            )
        self.sequence_length = int(sequence_length)
        self.initializer = keras.initializers.get(initializer)

    def build(self, input_shape):
        dim = input_shape[-1]
        self.position_embeddings = self.add_weight(
            name="embeddings",
            shape=(self.sequence_length, dim),
            initializer=self.initializer,
            trainable=True,
        )

    def call(self, inputs, start_index=0, positions=None):
        shape = ops.shape(inputs)
        table = ops.convert_to_tensor(self.position_embeddings)
        if positions is not None:
            return ops.cast(ops.take(table, ops.cast(positions, "int32"), axis=0), self.compute_dtype)
        rows = ops.slice(table, (start_index, 0), (shape[-2], shape[-1]))
        return ops.broadcast_to(ops.cast(rows, self.compute_dtype), shape)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "sequence_length": self.sequence_length,
                "initializer": keras.initializers.serialize(self.initializer),
            }
        )
        return config
