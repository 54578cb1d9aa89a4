"""Multi-head self-attention with fused QKV, masks and a key/value cache."""

import math

import keras
from keras import ops

from tflm.layers.layer_utils import build_dense
from tflm.layers.lora import lora_spec_for
from tflm.layers.masks import merge_attention_masks
from tflm.layers.rotary_embedding import ROTARY_LAYOUTS, RotaryEmbedding

# Scores of masked keys. Finite, so a row with every key masked gives a uniform
# distribution instead of NaN; far below any real float32 score.
_MASKED_SCORE = -1e9


@keras.saving.register_keras_serializable(package="tflm")
class MultiHeadAttention(keras.layers.Layer):
    """Multi-head scaled dot-product self-attention, grouped-query when asked.

    Each head computes `softmax(Q K^T / sqrt(d_k)) V`; the heads are
    concatenated and projected by `W^O`. Queries, keys and values come from one
    fused projection `x W_qkv + b_qkv` of shape `(d_model, (num_heads + 2 *
    num_key_value_heads) * head_dim)`, laid out as `[Q | K | V]`: `num_heads`
    query heads, `num_key_value_heads` key and value heads.

    With fewer key/value heads than query heads (grouped-query attention;
    multi-query with one), query head `h` reads key/value head
    `h // (num_heads // num_key_value_heads)`, as Hugging Face's `repeat_kv`;
    the cache holds only the key/value heads.

    The softmax runs in float32 whatever the compute dtype, so mixed precision
    keeps full-precision attention probabilities.

    Args:
        num_heads: number of attention heads.
        head_dim: size of each head (`d_k`).
        dropout: dropout rate on the attention probabilities.
        num_key_value_heads: key/value heads; it must divide `num_heads`. None
            or 0: `num_heads` (multi-head attention).
        use_bias: whether the projections have biases.
        qkv_bias: whether the query/key/value projection has a bias (Qwen2: and
            not the output projection); None: `use_bias`.
        rotary_max_wavelength: if set, applies rotary position embedding with
            this base (`rope_theta`) to queries and keys.
        rotary_layout: the rotary channel pairs, `"half"` or `"interleaved"`
            (see `RotaryEmbedding`).
        sliding_window: with the causal mask, a query sees at most the last
            `sliding_window` keys, itself included (Mistral); 0 or None: all.
        kernel_initializer, bias_initializer: initializers of the projections.
        lora: optional LoRA of the projections: `{"rank", "alpha", "dropout", "targets"}`
            (see `tflm.layers.lora`); None for none.
        **kwargs: other keyword arguments of `keras.layers.Layer`.

    Call arguments:
        inputs: `(batch, T, d_model)`.
        padding_mask: `(batch, S)`, nonzero at real tokens (keys).
        attention_mask: `(batch, T, S)` boolean, `True` where attention is allowed.
        use_causal_mask: whether query `i` may only see keys up to its position.
        cache: `(batch, 2, S_max, num_key_value_heads, head_dim)` keys and values of
            earlier positions, for decoding. When given, the new keys and
            values are written at `cache_update_index` and the layer returns
            `(outputs, updated_cache)`.
        cache_update_index: position of the first new token in the cache.
        positions: optional `(batch, T)` positions of the tokens, for rotary
            embedding with left-padded rows (default: their index).
        attention_bias: optional `(batch or 1, num_heads, T, S)` added to the
            scaled scores before the mask (T5's relative position bias).
        training: whether dropout is active.

    Example:
    >>> x = keras.random.normal((2, 16, 64))
    >>> attention = MultiHeadAttention(num_heads=4, head_dim=16)
    >>> y = attention(x, use_causal_mask=True)
    """

    def __init__(
        self,
        num_heads,
        head_dim,
        dropout=0.0,
        num_key_value_heads=None,
        use_bias=True,
        qkv_bias=None,
        rotary_max_wavelength=None,
        rotary_layout="half",
        sliding_window=None,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        lora=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.lora = dict(lora) if lora else None
        self.num_heads = int(num_heads)
        self.num_key_value_heads = int(num_key_value_heads or num_heads)
        if self.num_heads % self.num_key_value_heads:
            raise ValueError(f"num_key_value_heads={self.num_key_value_heads} must divide "
                             f"num_heads={self.num_heads}.")
        self.head_dim = int(head_dim)
        self.dropout = float(dropout)
        self.use_bias = use_bias
        self.qkv_bias = qkv_bias
        self.rotary_max_wavelength = rotary_max_wavelength
        if rotary_layout not in ROTARY_LAYOUTS:
            raise ValueError(f"rotary_layout={rotary_layout!r}; expected one of {ROTARY_LAYOUTS}.")
        self.rotary_layout = rotary_layout
        self.sliding_window = int(sliding_window or 0)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)

    def build(self, input_shape):
        inner_dim = self.num_heads * self.head_dim
        key_value_dim = self.num_key_value_heads * self.head_dim
        self.qkv_dense = self._build_dense(
            inner_dim + 2 * key_value_dim, input_shape, "qkv",
            [("query", inner_dim), ("key", key_value_dim), ("value", key_value_dim)],
            use_bias=self.use_bias if self.qkv_bias is None else self.qkv_bias)
        self._build_output(input_shape)
        self.rotary = None
        if self.rotary_max_wavelength:
            self.rotary = RotaryEmbedding(self.rotary_max_wavelength, layout=self.rotary_layout,
                                          dtype=self.dtype_policy)

    def _build_dense(self, units, input_shape, name, lora_parts, use_bias=None):
        """A projection; `lora_parts`: the LoRA targets its output columns hold, as
        `[(target, width)]`; `use_bias` None: the layer's."""
        return build_dense(
            units,
            input_shape,
            use_bias=self.use_bias if use_bias is None else use_bias,
            kernel_initializer=self.kernel_initializer,
            bias_initializer=self.bias_initializer,
            dtype=self.dtype_policy,
            name=name,
            lora=lora_spec_for(self.lora, lora_parts),
        )

    def _build_output(self, input_shape):
        """The output projection back to the width of `input_shape`, and the dropout."""
        inner_dim = self.num_heads * self.head_dim
        self.output_dense = self._build_dense(
            input_shape[-1], tuple(input_shape[:-1]) + (inner_dim,), "output",
            [("attention_output", input_shape[-1])],
        )
        self.dropout_layer = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)

    def call(
        self,
        inputs,
        padding_mask=None,
        attention_mask=None,
        use_causal_mask=False,
        cache=None,
        cache_update_index=None,
        positions=None,
        attention_bias=None,
        training=None,
    ):
        batch, length = ops.shape(inputs)[0], ops.shape(inputs)[1]
        qkv = self.qkv_dense(inputs)
        qkv = ops.reshape(qkv, (batch, length, self.num_heads + 2 * self.num_key_value_heads,
                                self.head_dim))
        # One split, not three slices: without XLA each slice's gradient is a zero-padded
        # full-size tensor, summed (a quarter of a small model's step on CPU).
        query, key, value = ops.split(
            qkv, [self.num_heads, self.num_heads + self.num_key_value_heads], axis=2)

        start_index = 0 if cache is None else cache_update_index
        if self.rotary is not None:
            query = self.rotary(query, start_index=start_index, positions=positions)
            key = self.rotary(key, start_index=start_index, positions=positions)

        if cache is not None:
            if cache_update_index is None:
                raise ValueError("`cache_update_index` is required when `cache` is given.")
            key = ops.slice_update(cache[:, 0], (0, start_index, 0, 0), key)
            value = ops.slice_update(cache[:, 1], (0, start_index, 0, 0), value)
            cache = ops.stack([key, value], axis=1)

        mask = merge_attention_masks(
            length,
            ops.shape(key)[1],
            padding_mask=padding_mask,
            attention_mask=attention_mask,
            use_causal_mask=use_causal_mask,
            start_index=start_index,
            sliding_window=self.sliding_window,
        )
        outputs = self._attend(query, key, value, mask, training, attention_bias)
        outputs = ops.reshape(outputs, (batch, length, self.num_heads * self.head_dim))
        outputs = self.output_dense(outputs)
        if cache is not None:
            return outputs, cache
        return outputs

    def _attend(self, query, key, value, mask, training, attention_bias=None):
        """`(batch, T, num_heads, head_dim)` attention of `query` over `key` and `value`
        (`(batch, S, num_key_value_heads, head_dim)`)."""
        # Scale queries before the product: one multiply of T*d, not T*S.
        query = query * ops.cast(1.0 / math.sqrt(self.head_dim), query.dtype)
        groups = self.num_heads // self.num_key_value_heads
        batch, length = ops.shape(query)[0], ops.shape(query)[1]
        if groups > 1:
            # Query head h = k * groups + g reads key/value head k, without copying the
            # keys and values `groups` times (the point of a smaller cache).
            query = ops.reshape(query, (batch, length, self.num_key_value_heads, groups,
                                        self.head_dim))
            scores = ops.einsum("btkgd,bskd->bkgts", query, key)
            scores = ops.reshape(scores, (batch, self.num_heads, length, ops.shape(key)[1]))
        else:
            scores = ops.einsum("bthd,bshd->bhts", query, key)
        scores = ops.cast(scores, "float32")
        if attention_bias is not None:
            scores = scores + ops.cast(attention_bias, "float32")
        if mask is not None:
            scores = ops.where(mask[:, None, :, :], scores, _MASKED_SCORE)
        probs = ops.softmax(scores, axis=-1)
        probs = self.dropout_layer(ops.cast(probs, self.compute_dtype), training=training)
        if groups > 1:
            probs = ops.reshape(probs, (batch, self.num_key_value_heads, groups, length,
                                        ops.shape(key)[1]))
            outputs = ops.einsum("bkgts,bskd->btkgd", probs, value)
            return ops.reshape(outputs, (batch, length, self.num_heads, self.head_dim))
        return ops.einsum("bhts,bshd->bthd", probs, value)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "head_dim": self.head_dim,
                "dropout": self.dropout,
                "num_key_value_heads": self.num_key_value_heads,
                "use_bias": self.use_bias,
                "qkv_bias": self.qkv_bias,
                "rotary_max_wavelength": self.rotary_max_wavelength,
                "rotary_layout": self.rotary_layout,
                "sliding_window": self.sliding_window,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "lora": self.lora,
            }
        )
        return config
