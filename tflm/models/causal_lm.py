"""CausalLM: next-token prediction on a causal backbone, tied output projection."""

import keras

from tflm.models.losses import TokenAccuracy
from tflm.models.task import Task


@keras.saving.register_keras_serializable(package="tflm")
class CausalLM(Task):
    """A GPT-style language model: `logits[t]` predicts `token_ids[t + 1]`.

    The output projection is the backbone's token embedding in reverse (tied,
    as GPT-2) or its own kernel if the backbone has `tie_embeddings=False`.
    Logits are float32 under any dtype policy.

    Features: `{"token_ids": (batch, T), "padding_mask": (batch, T)}`.
    Labels: the next tokens `(batch, T)`; sample weights: `(batch, T)`, 0 at
    padding. `tflm.data` builds such batches from text.

    Example:
    >>> backbone = TransformerBackbone(vocabulary_size=260, num_layers=2, num_heads=2,
    ...     hidden_dim=32, intermediate_dim=64, max_sequence_length=64, causal=True,
    ...     norm_first=True)
    >>> model = CausalLM(backbone)
    >>> ids = keras.ops.ones((4, 17), "int32")
    >>> x = {"token_ids": ids[:, :-1], "padding_mask": keras.ops.ones((4, 16))}
    >>> history = model.fit(x, ids[:, 1:], epochs=1, verbose=0)

    Text generation: `tflm.generation.generate(model, prompts, ...)`.

    `loss_chunk_size > 0`: training (`fit`, the trainer) computes the projection and the
    loss that many positions at a time (`chunked_cross_entropy`), never the whole float32
    logits; the model's outputs are still the logits.
    """

    def __init__(self, backbone, loss_chunk_size=0, **kwargs):
        if not backbone.causal:
            raise ValueError("CausalLM needs a causal backbone (causal=True).")
        super().__init__(backbone, **kwargs)
        self.loss_chunk_size = int(loss_chunk_size)
        self._finish_init()

    def call(self, inputs, training=None):
        hidden = self.backbone(inputs, training=training)["sequence_output"]
        return self.backbone.token_embedding(hidden, reverse=True)

    def head_inputs(self, inputs, training=None):
        hidden = self.backbone(inputs, training=training)["sequence_output"]
        return (hidden, *self.backbone.token_embedding.output_projection(), None)

    def default_metrics(self):
        return [TokenAccuracy(name="accuracy")]

    def get_config(self):
        config = super().get_config()
        config["loss_chunk_size"] = self.loss_chunk_size
        return config
