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

    `quantize("int8")` stores the table as int8 with one scale per row (per
    token), weight-only like `keras.layers.Embedding`'s (a config's activation
    quantizer is not used); the row scales are also the output-channel scales
    of the tied projection. An untied output kernel gets one scale per
    vocabulary column.

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

    def output_projection(self):
        """`(matrix, transposed)`, the output projection as stored, in the compute dtype:
        `call(hidden, reverse=True)` is `hidden @ matrix` (`matrix^T` if `transposed`, the
        tied `(vocabulary_size, embedding_dim)` table) in float32."""
        if self.tie_weights:
            return ops.cast(self.embeddings, self.compute_dtype), True
        return ops.cast(self.reverse_embeddings, self.compute_dtype), False

    def call(self, inputs, reverse=False):
        if reverse:
            matrix, transposed = self.output_projection()
            kernel = ops.transpose(matrix) if transposed else matrix
            return ops.cast(ops.matmul(inputs, kernel), "float32")
        ids = ops.cast(inputs, "int32")
        return ops.cast(ops.take(self.embeddings, ids, axis=0), self.compute_dtype)

    def quantize(self, mode=None, type_check=True, config=None):
        if type_check and type(self) is not TokenEmbedding:
            raise self._not_implemented_error(self.quantize)
        if mode != "int8":
            raise self._quantization_mode_error(mode)
        self.quantization_config = config
        self._quantize_int8("embeddings", axis=-1)
        if not self.tie_weights:
            self._quantize_int8("reverse_embeddings", axis=0)
        self._is_quantized = True  # before the policy, which would quantize again otherwise
        self.dtype_policy = keras.dtype_policies.get(f"int8_from_{self.dtype_policy.name}")

    def _quantize_int8(self, name, axis):
        """Replaces the float weight `name` by int8 values and `<name>_scale`, one scale
        per slice along `axis` (Keras's convention: the weight is `values / scale`)."""
        values, scale = keras.quantizers.abs_max_quantize(getattr(self, name), axis=axis,
                                                          to_numpy=True)
        delattr(self, name)
        for attribute, value, dtype in ((name, values, "int8"),
                                        (f"{name}_scale", ops.squeeze(scale, axis), None)):
            weight = self.add_weight(name=attribute, shape=value.shape, dtype=dtype,
                                     initializer="zeros", trainable=False)
            weight.assign(value)
            setattr(self, attribute, weight)

    def _int8_call(self, inputs, reverse=False):
        if reverse:
            if self.tie_weights:
                kernel = ops.transpose(ops.convert_to_tensor(self.embeddings))
                scale = self.embeddings_scale
            else:
                kernel, scale = self.reverse_embeddings, self.reverse_embeddings_scale
            logits = ops.matmul(inputs, ops.cast(kernel, self.compute_dtype))
            return ops.divide(ops.cast(logits, "float32"), scale)
        ids = ops.cast(inputs, "int32")
        rows = ops.cast(ops.take(self.embeddings, ids, axis=0), self.compute_dtype)
        scale = ops.take(self.embeddings_scale, ids, axis=0)
        return ops.divide(rows, ops.cast(ops.expand_dims(scale, -1), self.compute_dtype))

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
