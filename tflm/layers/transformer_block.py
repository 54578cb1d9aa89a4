"""Transformer block: self-attention and feed-forward with residuals and norms."""

import keras

from tflm.layers.adapter import Adapter
from tflm.layers.feed_forward import FeedForward
from tflm.layers.layer_utils import clone_initializer
from tflm.layers.multi_head_attention import MultiHeadAttention
from tflm.layers.normalization import make_normalization


@keras.saving.register_keras_serializable(package="tflm")
class TransformerBlock(keras.layers.Layer):
    """One transformer layer, post-LN (BERT) or pre-LN (GPT-2).

    Post-LN (`norm_first=False`)::

        x = norm1(x + dropout(attention(x)))
        x = norm2(x + dropout(ffn(x)))

    With `adapter_dim > 0`, an `Adapter` follows each sub-layer's dropout
    (`x + adapter(dropout(attention(...)))`, likewise for the feed-forward).

    Pre-LN (`norm_first=True`)::

        x = x + dropout(attention(norm1(x)))
        x = x + dropout(ffn(norm2(x)))

    Args:
        num_heads: number of attention heads.
        intermediate_dim: width of the feed-forward hidden layer.
        head_dim: size of each head; defaults to `d_model // num_heads`.
        activation: feed-forward activation, see `FeedForward`.
        normalization: `"layer_norm"` or `"rms_norm"`.
        norm_first: pre-LN if `True`, post-LN if `False`.
        norm_epsilon: epsilon of the norms (BERT 1e-12, GPT-2 1e-5).
        dropout: dropout rate on the attention and feed-forward outputs.
        attention_dropout: dropout rate on the attention probabilities.
        use_bias: whether the projections have biases.
        num_key_value_heads, qkv_bias, rotary_layout, sliding_window: of the
            self-attention, see `MultiHeadAttention`.
        rotary_max_wavelength: if set, rotary position embedding in attention.
        kernel_initializer: initializer of the projection kernels.
        adapter_dim: bottleneck width of the adapters; 0 for none.
        lora: optional LoRA of the attention and feed-forward projections:
            `{"rank", "alpha", "dropout", "targets"}` (see `tflm.layers.lora`).
        **kwargs: other keyword arguments of `keras.layers.Layer`.

    Call arguments:
        inputs: `(batch, T, d_model)`.
        padding_mask, attention_mask, use_causal_mask, cache,
        cache_update_index, positions, attention_bias: as in
            `MultiHeadAttention`; with a cache the block returns
            `(outputs, updated_cache)`.
        training: whether dropout is active.

    Example:
    >>> block = TransformerBlock(num_heads=4, intermediate_dim=128, norm_first=True)
    >>> y = block(keras.random.normal((2, 16, 64)), use_causal_mask=True)
    """

    def __init__(
        self,
        num_heads,
        intermediate_dim,
        head_dim=None,
        activation="gelu",
        normalization="layer_norm",
        norm_first=False,
        norm_epsilon=1e-5,
        dropout=0.0,
        attention_dropout=0.0,
        use_bias=True,
        rotary_max_wavelength=None,
        kernel_initializer="glorot_uniform",
        adapter_dim=0,
        lora=None,
        num_key_value_heads=None,
        qkv_bias=None,
        rotary_layout="half",
        sliding_window=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.adapter_dim = int(adapter_dim)
        self.lora = dict(lora) if lora else None
        self.num_heads = int(num_heads)
        self.intermediate_dim = int(intermediate_dim)
        self.head_dim = head_dim
        self.activation = activation
        self.normalization = normalization
        self.norm_first = norm_first
        self.norm_epsilon = float(norm_epsilon)
        self.dropout = float(dropout)
        self.attention_dropout = float(attention_dropout)
        self.use_bias = use_bias
        self.rotary_max_wavelength = rotary_max_wavelength
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.num_key_value_heads = num_key_value_heads
        self.qkv_bias = qkv_bias
        self.rotary_layout = rotary_layout
        self.sliding_window = sliding_window

    def build(self, input_shape):
        model_dim = input_shape[-1]
        head_dim = self.head_dim
        if head_dim is None:
            if model_dim % self.num_heads:
                raise ValueError(
                    f"The model width {model_dim} is not divisible by num_heads="
                    f"{self.num_heads}; pass head_dim explicitly."
                )
            head_dim = model_dim // self.num_heads
        self.attention = MultiHeadAttention(
            num_heads=self.num_heads,
            head_dim=head_dim,
            dropout=self.attention_dropout,
            num_key_value_heads=self.num_key_value_heads,
            use_bias=self.use_bias,
            qkv_bias=self.qkv_bias,
            rotary_max_wavelength=self.rotary_max_wavelength,
            rotary_layout=self.rotary_layout,
            sliding_window=self.sliding_window,
            kernel_initializer=clone_initializer(self.kernel_initializer),
            lora=self.lora,
            dtype=self.dtype_policy,
            name="attention",
        )
        self.attention.build(input_shape)
        self.attention_norm = make_normalization(
            self.normalization, self.norm_epsilon, dtype=self.dtype_policy, name="attention_norm"
        )
        self.attention_norm.build(input_shape)
        self.feed_forward = FeedForward(
            intermediate_dim=self.intermediate_dim,
            activation=self.activation,
            use_bias=self.use_bias,
            kernel_initializer=clone_initializer(self.kernel_initializer),
            lora=self.lora,
            dtype=self.dtype_policy,
            name="feed_forward",
        )
        self.feed_forward.build(input_shape)
        self.feed_forward_norm = make_normalization(
            self.normalization, self.norm_epsilon, dtype=self.dtype_policy, name="feed_forward_norm"
        )
        self.feed_forward_norm.build(input_shape)
        self.attention_dropout_layer = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)
        self.feed_forward_dropout_layer = keras.layers.Dropout(
            self.dropout, dtype=self.dtype_policy
        )
        self.attention_adapter = self.feed_forward_adapter = None
        if self.adapter_dim:
            for name in ("attention_adapter", "feed_forward_adapter"):
                adapter = Adapter(self.adapter_dim, kernel_initializer=clone_initializer(
                    self.kernel_initializer), dtype=self.dtype_policy, name=name)
                adapter.build(input_shape)
                setattr(self, name, adapter)

    def _pre_norm(self, norm, x):
        return norm(x) if self.norm_first else x

    def _add_residual(self, residual, x, dropout, adapter, norm, training):
        """`residual + adapter(dropout(x))`, then `norm` in a post-LN block."""
        x = dropout(x, training=training)
        if adapter is not None:
            x = adapter(x)
        x = residual + x
        return x if self.norm_first else norm(x)

    def _self_attention_sublayer(self, x, padding_mask, attention_mask, use_causal_mask,
                                 cache, cache_update_index, positions, training,
                                 attention_bias=None):
        """The attention sub-layer; returns `(x, cache)` (`cache` `None` without one)."""
        y = self.attention(
            self._pre_norm(self.attention_norm, x),
            padding_mask=padding_mask,
            attention_mask=attention_mask,
            use_causal_mask=use_causal_mask,
            cache=cache,
            cache_update_index=cache_update_index,
            positions=positions,
            attention_bias=attention_bias,
            training=training,
        )
        if cache is not None:
            y, cache = y
        x = self._add_residual(x, y, self.attention_dropout_layer, self.attention_adapter,
                               self.attention_norm, training)
        return x, cache

    def _feed_forward_sublayer(self, x, training):
        y = self.feed_forward(self._pre_norm(self.feed_forward_norm, x))
        return self._add_residual(x, y, self.feed_forward_dropout_layer,
                                  self.feed_forward_adapter, self.feed_forward_norm, training)

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
        x, cache = self._self_attention_sublayer(
            inputs, padding_mask, attention_mask, use_causal_mask, cache, cache_update_index,
            positions, training, attention_bias,
        )
        x = self._feed_forward_sublayer(x, training)
        if cache is not None:
            return x, cache
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "head_dim": self.head_dim,
                "activation": self.activation,
                "normalization": self.normalization,
                "norm_first": self.norm_first,
                "norm_epsilon": self.norm_epsilon,
                "dropout": self.dropout,
                "attention_dropout": self.attention_dropout,
                "use_bias": self.use_bias,
                "rotary_max_wavelength": self.rotary_max_wavelength,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "adapter_dim": self.adapter_dim,
                "lora": self.lora,
                "num_key_value_heads": self.num_key_value_heads,
                "qkv_bias": self.qkv_bias,
                "rotary_layout": self.rotary_layout,
                "sliding_window": self.sliding_window,
            }
        )
        return config
