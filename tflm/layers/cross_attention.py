"""Multi-head cross-attention: decoder queries over an encoder's keys and values."""

import keras
from keras import ops

from tflm.layers.masks import merge_attention_masks
from tflm.layers.multi_head_attention import MultiHeadAttention


@keras.saving.register_keras_serializable(package="tflm")
class CrossAttention(MultiHeadAttention):
    """Multi-head attention of one sequence (queries) over another (keys, values).

    The queries are `inputs W_q + b_q`; keys and values come from one fused
    projection `context W_kv + b_kv` of shape `(context_dim, 2 * num_heads *
    head_dim)`, laid out as `[K | V]`, each `(num_heads, head_dim)`. The
    attention itself (scaling, float32 softmax, dropout) is
    `MultiHeadAttention`'s.

    In an encoder-decoder the context is the encoder output, fixed for the whole
    request: `compute_key_value_cache` projects it once, and every decoding step
    passes that cache instead of the context, so the encoder's keys and values
    are never recomputed per generated token.

    Args:
        num_heads: number of attention heads.
        head_dim: size of each head (`d_k`).
        dropout: dropout rate on the attention probabilities.
        use_bias: whether the projections have biases.
        kernel_initializer, bias_initializer: initializers of the projections.
        lora: optional LoRA of the projections: `{"rank", "alpha", "dropout", "targets"}`
            (see `tflm.layers.lora`); None for none.
        **kwargs: other keyword arguments of `keras.layers.Layer`.

    Call arguments:
        inputs: `(batch, T, d_model)` queries (the decoder's sequence).
        context: `(batch, S, context_dim)` sequence attended to (the encoder
            output); not needed when `cache` is given.
        padding_mask: `(batch, S)`, nonzero at real context tokens (the
            encoder's padding mask).
        attention_mask: `(batch, T, S)` boolean, `True` where attention is allowed.
        cache: `(batch, 2, S, num_heads, head_dim)` keys and values of the
            context, from `compute_key_value_cache`; used instead of `context`.
        training: whether dropout is active.

    Example:
    >>> decoder_x = keras.random.normal((2, 5, 64))
    >>> encoder_out = keras.random.normal((2, 9, 32))
    >>> attention = CrossAttention(num_heads=4, head_dim=16)
    >>> y = attention(decoder_x, encoder_out)                  # (2, 5, 64)
    >>> cache = attention.compute_key_value_cache(encoder_out)  # once per request
    >>> step = attention(decoder_x[:, :1], cache=cache)         # each new token
    """

    def __init__(
        self,
        num_heads,
        head_dim,
        dropout=0.0,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        lora=None,
        **kwargs,
    ):
        super().__init__(
            num_heads,
            head_dim,
            dropout=dropout,
            use_bias=use_bias,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            lora=lora,
            **kwargs,
        )

    def build(self, inputs_shape, context_shape=None):
        # Without a context (a call with only a cache), the context is taken to
        # be as wide as the queries.
        context_shape = inputs_shape if context_shape is None else context_shape
        inner_dim = self.num_heads * self.head_dim
        self.query_dense = self._build_dense(inner_dim, inputs_shape, "query",
                                             [("query", inner_dim)])
        self.key_value_dense = self._build_dense(2 * inner_dim, context_shape, "key_value",
                                                 [("key", inner_dim), ("value", inner_dim)])
        self._build_output(inputs_shape)

    def _key_value(self, context):
        batch, length = ops.shape(context)[0], ops.shape(context)[1]
        key_value = self.key_value_dense(context)
        key_value = ops.reshape(key_value, (batch, length, 2, self.num_heads, self.head_dim))
        return ops.unstack(key_value, 2, axis=2)

    def compute_key_value_cache(self, context):
        """The keys and values of `context`, `(batch, 2, S, num_heads, head_dim)`.

        Computed once per encoder output and passed as `cache` to every call
        after it. The layer must be built (called once, or `build`) first.
        """
        if not self.built:
            raise ValueError(
                f"CrossAttention {self.name!r} is not built; call it once (or build it) "
                "before compute_key_value_cache."
            )
        return ops.stack(self._key_value(context), axis=1)

    def call(
        self,
        inputs,
        context=None,
        padding_mask=None,
        attention_mask=None,
        cache=None,
        training=None,
    ):
        if cache is not None:
            key, value = ops.unstack(cache, 2, axis=1)
        elif context is not None:
            key, value = self._key_value(context)
        else:
            raise ValueError("CrossAttention needs `context` or a precomputed `cache`.")
        batch, length = ops.shape(inputs)[0], ops.shape(inputs)[1]
        query = ops.reshape(self.query_dense(inputs), (batch, length, self.num_heads, self.head_dim))
        mask = merge_attention_masks(
            length, ops.shape(key)[1], padding_mask=padding_mask, attention_mask=attention_mask
        )
        outputs = self._attend(query, key, value, mask, training)
        outputs = ops.reshape(outputs, (batch, length, self.num_heads * self.head_dim))
        return self.output_dense(outputs)

    def get_config(self):
        config = super().get_config()
        # Self-attention's own: positions enter through the queries' sequence, the
        # context's keys and values have every query head (no grouping, no window).
        for key in ("rotary_max_wavelength", "rotary_layout", "sliding_window",
                    "num_key_value_heads", "qkv_bias"):
            del config[key]
        return config
