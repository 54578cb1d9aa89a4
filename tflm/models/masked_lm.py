"""MaskedLM: predicts the original tokens at masked positions (BERT pretraining)."""

import keras
from keras import ops

from tflm.layers.feed_forward import activate
from tflm.layers.layer_utils import clone_initializer
from tflm.layers.normalization import make_normalization
from tflm.models.task import Task


@keras.saving.register_keras_serializable(package="tflm")
class MaskedLM(Task):
    """A BERT-style masked language model.

    Only the masked positions go through the vocabulary projection, which is
    where most of the head's cost is. The head, as BERT's::

        h = hidden[mask_positions]
        h = norm(activation(dense(h)))
        logits = h E^T + bias                   # E: the token embeddings (tied)

    Features: `{"token_ids", "padding_mask", "segment_ids" (optional),
    "mask_positions": (batch, P)}`. Labels: the original ids at the masked
    positions `(batch, P)`; sample weights `(batch, P)`: 1 for real masks, 0
    for the padding of `mask_positions`.

    Example:
    >>> backbone = TransformerBackbone(vocabulary_size=100, num_layers=2, num_heads=2,
    ...     hidden_dim=32, intermediate_dim=64, max_sequence_length=64)
    >>> model = MaskedLM(backbone)
    >>> x = {"token_ids": keras.ops.ones((4, 16), "int32"),
    ...      "padding_mask": keras.ops.ones((4, 16)),
    ...      "mask_positions": keras.ops.ones((4, 3), "int32")}
    >>> logits = model(x)  # (4, 3, 100), float32
    """

    def __init__(self, backbone, **kwargs):
        if backbone.causal:
            raise ValueError("MaskedLM needs a bidirectional backbone (causal=False).")
        super().__init__(backbone, **kwargs)
        initializer = keras.initializers.TruncatedNormal(stddev=backbone.initializer_range)
        self.head_dense = keras.layers.Dense(
            backbone.hidden_dim,
            kernel_initializer=clone_initializer(initializer),
            dtype=self.dtype_policy,
            name="head_dense",
        )
        self.head_norm = make_normalization(
            backbone.normalization, backbone.norm_epsilon, dtype=self.dtype_policy, name="head_norm"
        )
        self.head_dense.build((None, None, backbone.hidden_dim))
        self.head_norm.build((None, None, backbone.hidden_dim))
        self.head_bias = self.add_weight(
            name="head_bias", shape=(backbone.vocabulary_size,), initializer="zeros"
        )
        self._finish_init()

    def call(self, inputs, training=None):
        hidden = self.backbone(inputs, training=training)["sequence_output"]
        positions = ops.cast(inputs["mask_positions"], "int32")
        hidden = ops.take_along_axis(hidden, positions[:, :, None], axis=1)
        # The head uses the backbone's activation (erf GELU for BERT).
        hidden = activate(self.head_dense(hidden), self.backbone.activation)
        hidden = self.head_norm(hidden)
        logits = self.backbone.token_embedding(hidden, reverse=True)
        return logits + ops.cast(self.head_bias, "float32")
