"""SequenceClassifier: a pooled representation of the sequence and a linear head."""

import keras
from keras import ops

from tflm.config import POOLINGS
from tflm.layers.layer_utils import clone_initializer
from tflm.models.task import Task


@keras.saving.register_keras_serializable(package="tflm")
class SequenceClassifier(Task):
    """Classifies a sequence (or a pair, through segment ids) into `num_classes`.

    Pooling:
    - `"pooled"`: the backbone's tanh pooler on the first token (BERT);
    - `"first"`: the first token's hidden state (`[CLS]`);
    - `"last"`: the last real token's hidden state (causal decoders, which only
      see the whole sequence at its end);
    - `"mean"`: the mean over real tokens.
    Defaults to `"pooled"` if the backbone has a pooler, else `"last"` for a
    causal backbone and `"first"` for an encoder.

    Features: `{"token_ids", "padding_mask", "segment_ids" (optional)}`.
    Labels: class ids `(batch,)`. Logits: `(batch, num_classes)`, float32.

    Args:
        backbone: a `TransformerBackbone`.
        num_classes: number of labels.
        pooling: see above.
        dropout: dropout rate before the classification layer.
        label_names: the name of each class, in id order (saved with the model;
            the exported `classify` signature returns them).

    With a frozen backbone (`backbone.trainable = False`, feature extraction)
    the backbone runs in inference mode (no dropout) also while training.

    Example:
    >>> backbone = TransformerBackbone(vocabulary_size=100, num_layers=2, num_heads=2,
    ...     hidden_dim=32, intermediate_dim=64, max_sequence_length=64, pooler=True)
    >>> model = SequenceClassifier(backbone, num_classes=3)
    >>> x = {"token_ids": keras.ops.ones((4, 16), "int32"), "padding_mask": keras.ops.ones((4, 16))}
    >>> history = model.fit(x, keras.ops.array([0, 1, 2, 1]), verbose=0)
    """

    default_learning_rate = 5e-5

    def __init__(self, backbone, num_classes, pooling=None, dropout=0.1, label_names=None,
                 **kwargs):
        super().__init__(backbone, **kwargs)
        if label_names is not None:
            label_names = [str(name) for name in label_names]
            if len(label_names) != int(num_classes):
                raise ValueError(f"{len(label_names)} label names for {num_classes} classes.")
        self.label_names = label_names
        if pooling is None:
            pooling = "pooled" if backbone.pooler else ("last" if backbone.causal else "first")
        if pooling not in POOLINGS:
            raise ValueError(f"Unknown pooling {pooling!r}; expected one of {POOLINGS}.")
        if pooling == "pooled" and not backbone.pooler:
            raise ValueError('pooling="pooled" needs a backbone built with pooler=True.')
        self.num_classes = int(num_classes)
        self.pooling = pooling
        self.dropout = float(dropout)
        self.head_dropout = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)
        self.head = keras.layers.Dense(
            self.num_classes,
            kernel_initializer=clone_initializer(
                keras.initializers.TruncatedNormal(stddev=backbone.initializer_range)
            ),
            dtype=self.dtype_policy,
            name="classifier",
        )
        self.head.build((None, backbone.hidden_dim))
        self._finish_init()

    def pool(self, outputs, padding_mask):
        """Reduces the backbone outputs to one vector per sequence."""
        hidden = outputs["sequence_output"]
        if self.pooling == "pooled":
            return outputs["pooled_output"]
        if self.pooling == "first":
            return hidden[:, 0, :]
        mask = ops.cast(padding_mask, hidden.dtype)
        if self.pooling == "mean":
            total = ops.sum(hidden * mask[:, :, None], axis=1)
            return total / ops.maximum(ops.sum(mask, axis=1, keepdims=True), 1)
        last = ops.maximum(ops.cast(ops.sum(mask, axis=1), "int32") - 1, 0)
        return ops.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0, :]

    def call(self, inputs, training=None):
        backbone_training = training if self.backbone.trainable else False
        outputs = self.backbone(inputs, training=backbone_training)
        padding_mask = inputs.get("padding_mask")
        if padding_mask is None:
            padding_mask = ops.ones_like(inputs["token_ids"])
        pooled = self.head_dropout(self.pool(outputs, padding_mask), training=training)
        return ops.cast(self.head(pooled), "float32")

    def get_config(self):
        config = super().get_config()
        config.update(
            {"num_classes": self.num_classes, "pooling": self.pooling, "dropout": self.dropout,
             "label_names": self.label_names}
        )
        return config
