"""MaskedLM: predicts the original tokens at masked positions (BERT pretraining)."""

import keras
import tensorflow as tf
from keras import ops

from tflm.layers.feed_forward import activate
from tflm.layers.layer_utils import clone_initializer
from tflm.layers.normalization import make_normalization
from tflm.models.losses import (TokenAccuracy, WeightedCrossEntropy, chunked_cross_entropy,
                                weighted_cross_entropy)
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

    With `next_sentence_prediction=True` (BERT's pretraining on sentence pairs)
    a second head classifies the pooled output (the backbone needs a pooler):
    is segment B the continuation of segment A (label 0, as BERT's) or a random
    text (label 1)? The outputs, labels and sample weights are then dicts with
    the keys `"masked_lm"` and `"next_sentence"` (`(batch, 2)` logits, `(batch,)`
    labels and weights), and the loss is the masked-LM loss (mean over masked
    tokens) plus `next_sentence_weight` times the next-sentence loss (mean over
    rows).

    Example:
    >>> backbone = TransformerBackbone(vocabulary_size=100, num_layers=2, num_heads=2,
    ...     hidden_dim=32, intermediate_dim=64, max_sequence_length=64)
    >>> model = MaskedLM(backbone)
    >>> x = {"token_ids": keras.ops.ones((4, 16), "int32"),
    ...      "padding_mask": keras.ops.ones((4, 16)),
    ...      "mask_positions": keras.ops.ones((4, 3), "int32")}
    >>> logits = model(x)  # (4, 3, 100), float32
    """

    def __init__(self, backbone, next_sentence_prediction=False, next_sentence_weight=1.0,
                 loss_chunk_size=0, **kwargs):
        if backbone.causal:
            raise ValueError("MaskedLM needs a bidirectional backbone (causal=False).")
        if next_sentence_prediction and not backbone.pooler:
            raise ValueError("next_sentence_prediction needs a backbone with a pooler "
                             "(pooler=True): the head reads the pooled [CLS] output.")
        super().__init__(backbone, **kwargs)
        self.next_sentence_prediction = bool(next_sentence_prediction)
        self.next_sentence_weight = float(next_sentence_weight)
        self.loss_chunk_size = int(loss_chunk_size)
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
        self.next_sentence_head = None
        if self.next_sentence_prediction:
            self.next_sentence_head = keras.layers.Dense(
                2, kernel_initializer=clone_initializer(initializer), dtype=self.dtype_policy,
                name="next_sentence_head")
            self.next_sentence_head.build((None, backbone.hidden_dim))
        self._finish_init()

    def call(self, inputs, training=None):
        hidden, outputs = self._head_hidden(inputs, training)
        logits = self.backbone.token_embedding(hidden, reverse=True)
        logits = logits + ops.cast(self.head_bias, "float32")
        if not self.next_sentence_prediction:
            return logits
        return {"masked_lm": logits, "next_sentence": self._next_sentence(outputs)}

    def _head_hidden(self, inputs, training):
        """The head's hidden states at the masked positions, and the backbone's outputs."""
        outputs = self.backbone(inputs, training=training)
        hidden = outputs["sequence_output"]
        positions = ops.cast(inputs["mask_positions"], "int32")
        hidden = ops.take_along_axis(hidden, positions[:, :, None], axis=1)
        # The head uses the backbone's activation (erf GELU for BERT).
        hidden = activate(self.head_dense(hidden), self.backbone.activation)
        return self.head_norm(hidden), outputs

    def _next_sentence(self, outputs):
        return ops.cast(self.next_sentence_head(outputs["pooled_output"]), "float32")

    def head_inputs(self, inputs, training=None):
        hidden, _ = self._head_hidden(inputs, training)
        return (hidden, *self.backbone.token_embedding.output_projection(), self.head_bias)

    def chunked_loss_sums(self, inputs, labels, weights, label_smoothing=0.0, training=True,
                          return_predictions=False):
        """As `Task.chunked_loss_sums`; with next-sentence prediction the two terms of
        `loss_sums` (the next-sentence logits are small: computed whole). `fit` uses it
        without next-sentence prediction (with it, Keras logs a loss per head), the trainer
        with or without."""
        if not self.next_sentence_prediction:
            return super().chunked_loss_sums(inputs, labels, weights, label_smoothing,
                                             training, return_predictions)
        hidden, outputs = self._head_hidden(inputs, training)
        kernel, transpose_kernel = self.backbone.token_embedding.output_projection()
        mlm = chunked_cross_entropy(
            hidden, kernel, labels["masked_lm"], weights["masked_lm"], self.loss_chunk_size,
            bias=self.head_bias, label_smoothing=label_smoothing,
            return_predictions=return_predictions, transpose_kernel=transpose_kernel)
        next_sentence = self._next_sentence(outputs)
        nsp_sum, nsp_weight = weighted_cross_entropy(
            labels["next_sentence"], next_sentence, weights["next_sentence"])
        sums = (tf.stack([mlm[0], self.next_sentence_weight * nsp_sum]),
                tf.stack([mlm[1], nsp_weight]))
        if not return_predictions:
            return sums
        return sums + ({"masked_lm": mlm[2], "next_sentence": next_sentence},)

    def default_metrics(self):
        return [TokenAccuracy(name="accuracy")]

    def loss_sums(self, labels, outputs, weights, label_smoothing=0.0):
        """The masked-LM sums; with next-sentence prediction a vector of two terms
        `[masked-LM sum, next_sentence_weight * next-sentence sum]` and their weights,
        each to be divided by its own weight over the global batch."""
        if not self.next_sentence_prediction:
            return weighted_cross_entropy(labels, outputs, weights, label_smoothing)
        mlm_sum, mlm_weight = weighted_cross_entropy(
            labels["masked_lm"], outputs["masked_lm"], weights["masked_lm"], label_smoothing)
        nsp_sum, nsp_weight = weighted_cross_entropy(
            labels["next_sentence"], outputs["next_sentence"], weights["next_sentence"])
        return (tf.stack([mlm_sum, self.next_sentence_weight * nsp_sum]),
                tf.stack([mlm_weight, nsp_weight]))

    def compile(self, optimizer="auto", loss="auto", weighted_metrics="auto", **kwargs):
        """As `Task.compile`; with next-sentence prediction one loss and accuracy per head,
        the next-sentence loss weighted by `next_sentence_weight`."""
        if not self.next_sentence_prediction:
            return super().compile(optimizer, loss, weighted_metrics, **kwargs)
        if loss == "auto":
            loss = {"masked_lm": WeightedCrossEntropy(), "next_sentence": WeightedCrossEntropy()}
            kwargs.setdefault("loss_weights", {"masked_lm": 1.0,
                                               "next_sentence": self.next_sentence_weight})
        if weighted_metrics == "auto":
            weighted_metrics = {
                name: [TokenAccuracy(name="accuracy")] for name in ("masked_lm", "next_sentence")}
        return super().compile(optimizer, loss, weighted_metrics, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.update({"next_sentence_prediction": self.next_sentence_prediction,
                       "next_sentence_weight": self.next_sentence_weight,
                       "loss_chunk_size": self.loss_chunk_size})
        return config
