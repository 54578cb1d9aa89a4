"""Token embedding that can also project hidden states back to vocabulary logits."""

import keras
from keras import ops

from tflm.layers.layer_utils import clone_initializer


@keras.saving.register_keras_serializable(package="tflm")
class TokenEmbedding(keras.layers.Layer):
    """Looks up token ids; in reverse, maps hidden states to vocabulary logits.

    With `tie_weights=True` (BERT, GPT-2) the output projection is the
    transposed embedding table, `logits = h E^T`; otherwise it is a separate
    `(d_model, vocabulary_size)` kernel. Reverse outputs are float32 logits:
    the matmul runs in the compute dtype (fast under mixed precision), the
    result is cast so that softmax and loss see float32.

    Args:
        vocabulary_size: number of token ids.
        embedding_dim: size of each embedding vector.
        tie_weights: whether the reverse projection reuses the table.
        embeddings_initializer: initializer of the table (and reverse kernel).
        **kwargs: other keyword arguments of `keras.layers.Layer`.

    Call arguments:
        inputs: integer ids `(batch, T)`, or hidden states `(batch, T, d)`
            when `reverse=True`.
        reverse: whether to project hidden states to logits.

    Example:
    >>> embedding = TokenEmbedding(vocabulary_size=100, embedding_dim=32)
    >>> hidden = embedding(keras.ops.array([[1, 2, 3]]))
    >>> logits = embedding(hidden, reverse=True)  # (1, 3, 100), float32
    """

    def __init__(
        self,
        vocabulary_size,
        embedding_dim,
        tie_weights=True,
        embeddings_initializer="uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.vocabulary_size = int(vocabulary_size)
        self.embedding_dim = int(embedding_dim)
        self.tie_weights = tie_weights
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)

    def build(self, input_shape=None):
        self.embeddings = self.add_weight(
            name="embeddings",
            shape=(self.vocabulary_size, self.embedding_dim),
            initializer=clone_initializer(self.embeddings_initializer),
            trainable=True,
        )
        if not self.tie_weights:
            self.reverse_embeddings = self.add_weight(
                name="reverse_embeddings",
                shape=(self.embedding_dim, self.vocabulary_size),
                initializer=clone_initializer(self.embeddings_initializer),
                trainable=True,
            )

    def call(self, inputs, reverse=False):
        if reverse:
            if self.tie_weights:
                kernel = ops.transpose(ops.convert_to_tensor(self.embeddings))
            else:
                kernel = ops.convert_to_tensor(self.reverse_embeddings)
            logits = ops.matmul(inputs, ops.cast(kernel, self.compute_dtype))
            return ops.cast(logits, "float32")
        ids = ops.cast(inputs, "int32")
        return ops.cast(ops.take(self.embeddings, ids, axis=0), self.compute_dtype)

    def compute_output_spec(self, inputs, reverse=False):
        if reverse:
            shape = tuple(inputs.shape[:-1]) + (self.vocabulary_size,)
            return keras.KerasTensor(shape, dtype="float32")
        shape = tuple(inputs.shape) + (self.embedding_dim,)
        return keras.KerasTensor(shape, dtype=self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocabulary_size": self.vocabulary_size,
                "embedding_dim": self.embedding_dim,
                "tie_weights": self.tie_weights,
                "embeddings_initializer": keras.initializers.serialize(
                    self.embeddings_initializer
                ),
            }
        )
        return config
