"""Encoder-decoder models: `Seq2SeqBackbone` (an encoder and a cross-attending decoder) and
`Seq2SeqLM` (the decoder's next-token prediction given a source)."""

import keras

from tflm.models.backbone import TransformerBackbone
from tflm.models.task import Task


@keras.saving.register_keras_serializable(package="tflm")
class Seq2SeqBackbone(keras.Model):
    """The Transformer's encoder-decoder: a bidirectional encoder over the source, a causal
    decoder over the target whose blocks also attend to the encoder's output.

    Reads top to bottom::

        memory = encoder(source_ids, source_padding_mask)          # TransformerBackbone
        x = decoder(target_ids, target_padding_mask,               # causal, cross-attending
                    encoder_sequence_output=memory, encoder_padding_mask=source_padding_mask)

    Both halves are `TransformerBackbone`s (the decoder with `cross_attention=True`), so
    positions, norms, adapters and dtype policies work as in the encoder-only and
    decoder-only models. With `shared_embeddings` (BART, T5) one token embedding serves the
    source, the target and (tied) the output projection.

    Args:
        vocabulary_size, hidden_dim, num_heads, intermediate_dim, max_sequence_length,
        position_encoding, activation, normalization, norm_first, norm_epsilon, dropout,
        attention_dropout, use_bias, initializer_range, embedding_norm, head_dim,
        relative_num_buckets, relative_max_distance, lora: as `TransformerBackbone`, for both
            halves (`position_encoding="relative"`: each half has its own bias, the
            encoder's bidirectional, the decoder's causal, as T5's).
        num_layers: encoder blocks.
        num_decoder_layers: decoder blocks (default: `num_layers`).
        shared_embeddings: one token embedding for source and target; else the encoder has
            its own (a source vocabulary of the same size, e.g. two languages).
        tie_embeddings: the output projection reuses the decoder's token embedding.
        dtype: a dtype policy.

    Inputs: `{"encoder_token_ids", "encoder_padding_mask", "decoder_token_ids",
    "decoder_padding_mask"}`, each `(batch, S)` or `(batch, T)`.
    Outputs: `{"encoder_sequence_output": (batch, S, d), "decoder_sequence_output":
    (batch, T, d)}`.

    Example:
    >>> backbone = Seq2SeqBackbone(vocabulary_size=100, num_layers=2, num_heads=2,
    ...                            hidden_dim=32, intermediate_dim=64)
    >>> ids, mask = keras.ops.ones((2, 7), "int32"), keras.ops.ones((2, 7), "int32")
    >>> out = backbone({"encoder_token_ids": ids, "encoder_padding_mask": mask,
    ...                 "decoder_token_ids": ids[:, :5], "decoder_padding_mask": mask[:, :5]})
    """

    def __init__(self, vocabulary_size, num_layers, num_heads, hidden_dim, intermediate_dim,
                 num_decoder_layers=None, max_sequence_length=512, position_encoding="learned",
                 activation="gelu", normalization="layer_norm", norm_first=False,
                 norm_epsilon=1e-5, embedding_norm=False, dropout=0.1, attention_dropout=0.1,
                 use_bias=True, shared_embeddings=True, tie_embeddings=True,
                 initializer_range=0.02, head_dim=None, relative_num_buckets=32,
                 relative_max_distance=128, lora=None, dtype=None, **kwargs):
        super().__init__(dtype=dtype, **kwargs)
        self.num_decoder_layers = int(num_decoder_layers or num_layers)
        self.shared_embeddings = bool(shared_embeddings)
        common = dict(
            vocabulary_size=vocabulary_size, num_heads=num_heads, hidden_dim=hidden_dim,
            intermediate_dim=intermediate_dim, max_sequence_length=max_sequence_length,
            position_encoding=position_encoding, activation=activation,
            normalization=normalization, norm_first=norm_first, norm_epsilon=norm_epsilon,
            embedding_norm=embedding_norm, dropout=dropout, attention_dropout=attention_dropout,
            use_bias=use_bias, tie_embeddings=tie_embeddings,
            initializer_range=initializer_range, head_dim=head_dim,
            relative_num_buckets=relative_num_buckets,
            relative_max_distance=relative_max_distance, lora=lora, dtype=self.dtype_policy,
        )
        self._common = common
        self.encoder = TransformerBackbone(num_layers=num_layers, causal=False, name="encoder",
                                           **common)
        self.decoder = TransformerBackbone(
            num_layers=self.num_decoder_layers, causal=True, cross_attention=True,
            token_embedding=self.encoder.token_embedding if self.shared_embeddings else None,
            name="decoder", **common)
        self._common["head_dim"] = self.encoder.get_config()["head_dim"]  # 0: the default width
        # The attributes a backbone's users read (generation, FLOP counts, ...).
        self.vocabulary_size = self.decoder.vocabulary_size
        self.hidden_dim = self.decoder.hidden_dim
        self.num_layers = self.encoder.num_layers
        self.max_sequence_length = self.decoder.max_sequence_length
        self.token_embedding = self.decoder.token_embedding
        self.built = True

    def encode(self, token_ids, padding_mask, training=None):
        """The encoder's output `(batch, S, hidden_dim)`."""
        return self.encoder({"token_ids": token_ids, "padding_mask": padding_mask},
                            training=training)["sequence_output"]

    def call(self, inputs, training=None):
        memory = self.encode(inputs["encoder_token_ids"], inputs["encoder_padding_mask"],
                             training=training)
        decoded = self.decoder({
            "token_ids": inputs["decoder_token_ids"],
            "padding_mask": inputs["decoder_padding_mask"],
            "encoder_sequence_output": memory,
            "encoder_padding_mask": inputs["encoder_padding_mask"],
        }, training=training)["sequence_output"]
        return {"encoder_sequence_output": memory, "decoder_sequence_output": decoded}

    def get_config(self):
        config = super().get_config()
        config.update({key: value for key, value in self._common.items() if key != "dtype"})
        config.update({"num_layers": self.encoder.num_layers,
                       "num_decoder_layers": self.num_decoder_layers,
                       "shared_embeddings": self.shared_embeddings})
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="tflm")
class Seq2SeqLM(Task):
    """Next-token prediction of a target given a source: `logits[t]` predicts
    `decoder_token_ids[t + 1]` (teacher forcing), through the tied output projection.
    Logits are float32 under any dtype policy.

    Features: the backbone's four inputs. Labels: the target shifted by one `(batch, T)`;
    sample weights `(batch, T)`, 0 at padding.

    Example:
    >>> model = Seq2SeqLM(Seq2SeqBackbone(vocabulary_size=100, num_layers=2, num_heads=2,
    ...                                   hidden_dim=32, intermediate_dim=64))
    >>> logits = model({"encoder_token_ids": ids, "encoder_padding_mask": mask,
    ...                 "decoder_token_ids": ids, "decoder_padding_mask": mask})
    """

    def __init__(self, backbone, **kwargs):
        if not isinstance(backbone, Seq2SeqBackbone):
            raise ValueError("Seq2SeqLM needs a Seq2SeqBackbone.")
        super().__init__(backbone, **kwargs)
        self._finish_init()

    def call(self, inputs, training=None):
        hidden = self.backbone(inputs, training=training)["decoder_sequence_output"]
        return self.backbone.token_embedding(hidden, reverse=True)
