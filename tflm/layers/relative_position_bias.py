"""T5's relative position bias: a learned scalar per head and bucket of key - query distance."""

import math

import keras
from keras import ops


def relative_positions(query_length, key_length, start_index=0):
    """`(query_length, key_length)` int32 distances `key - query` of keys `0..key_length-1`
    and queries `start_index..start_index+query_length-1` (a decoding step's queries sit at
    the cache position)."""
    queries = ops.arange(query_length, dtype="int32") + ops.cast(start_index, "int32")
    return ops.arange(key_length, dtype="int32")[None, :] - queries[:, None]


def relative_position_bucket(relative_position, bidirectional, num_buckets, max_distance):
    """T5's bucket of each distance `key - query`: half the buckets exact distances, half
    logarithmically wider ones up to `max_distance` (farther share the last); with
    `bidirectional`, half the buckets are for keys after the query, else later keys (which a
    causal mask hides) share bucket 0."""
    relative_position = ops.cast(relative_position, "int32")
    buckets = ops.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + ops.cast(relative_position > 0, "int32") * num_buckets
        distance = ops.abs(relative_position)
    else:
        distance = -ops.minimum(relative_position, 0)
    max_exact = num_buckets // 2
    # float32 as T5 computes it (a distance on a bucket edge falls the same way); log(0) at the
    # exact distances is discarded by the `where`.
    log_ratio = ops.log(ops.cast(distance, "float32") / max_exact) / math.log(
        max_distance / max_exact)
    large = max_exact + ops.cast(log_ratio * (num_buckets - max_exact), "int32")
    large = ops.minimum(large, num_buckets - 1)
    return buckets + ops.where(distance < max_exact, distance, large)


@keras.saving.register_keras_serializable(package="tflm")
class RelativePositionBias(keras.layers.Layer):
    """The relative position bias of T5 (Raffel et al., 2020), added to attention logits.

    Each key - query distance falls in one of `num_buckets` buckets (see
    `relative_position_bucket`), and each bucket has a learned scalar per head. One layer
    serves every block of a stack (T5 keeps it in the first block and shares it).

    Args:
        num_heads: attention heads (one bias per head).
        num_buckets: distance buckets (T5: 32).
        max_distance: distances from here on share the last bucket (T5: 128).
        bidirectional: separate buckets for keys before and after the query (an encoder);
            `False` for a causal decoder.
        embeddings_initializer: initializer of the `(num_buckets, num_heads)` table.
        **kwargs: other keyword arguments of `keras.layers.Layer`.

    Call arguments:
        inputs: `(batch, T, S)` int distances `key - query` (`relative_positions`).

    Returns:
        `(batch, num_heads, T, S)` biases.

    Example:
    >>> bias = RelativePositionBias(num_heads=4)
    >>> logits_bias = bias(relative_positions(5, 5)[None])  # (1, 4, 5, 5)
    """

    def __init__(self, num_heads, num_buckets=32, max_distance=128, bidirectional=True,
                 embeddings_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        self.num_buckets = int(num_buckets)
        self.max_distance = int(max_distance)
        self.bidirectional = bool(bidirectional)
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)

    def build(self, input_shape=None):
        self.embeddings = self.add_weight(
            name="embeddings", shape=(self.num_buckets, self.num_heads),
            initializer=self.embeddings_initializer, trainable=True,
        )

    def call(self, inputs):
        buckets = relative_position_bucket(inputs, self.bidirectional, self.num_buckets,
                                           self.max_distance)
        bias = ops.take(self.embeddings, buckets, axis=0)  # (batch, T, S, heads)
        return ops.transpose(bias, (0, 3, 1, 2))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_heads) + tuple(input_shape[1:])

    def get_config(self):
        config = super().get_config()
        config.update({
            "num_heads": self.num_heads,
            "num_buckets": self.num_buckets,
            "max_distance": self.max_distance,
            "bidirectional": self.bidirectional,
            "embeddings_initializer": keras.initializers.serialize(self.embeddings_initializer),
        })
        return config
