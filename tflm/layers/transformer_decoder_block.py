"""Transformer decoder block: causal self-attention, cross-attention, feed-forward."""

import keras

from tflm.layers.adapter import Adapter
from tflm.layers.cross_attention import CrossAttention
from tflm.layers.layer_utils import clone_initializer
from tflm.layers.normalization import make_normalization
from tflm.layers.transformer_block import TransformerBlock


@keras.saving.register_keras_serializable(package="tflm")
class TransformerDecoderBlock(TransformerBlock):
    """One decoder layer of an encoder-decoder, post-LN (original Transformer,
    BART) or pre-LN (T5-style).

    A `TransformerBlock` with a cross-attention sub-layer over the encoder
    output between its self-attention and its feed-forward. Post-LN
    (`norm_first=False`)::

        x = norm1(x + dropout(self_attention(x)))
        x = norm2(x + dropout(cross_attention(x, encoder_outputs)))
        x = norm3(x + dropout(ffn(x)))

    Pre-LN (`norm_first=True`)::

        x = x + dropout(self_attention(norm1(x)))
        x = x + dropout(cross_attention(norm2(x), encoder_outputs))
        x = x + dropout(ffn(norm3(x)))

    With `adapter_dim > 0`, an `Adapter` follows each sub-layer's dropout, as
    in `TransformerBlock`. Rotary embedding (`rotary_max_wavelength`) applies
    to the self-attention only.

    For decoding, `compute_cross_attention_cache` projects the encoder output
    to keys and values once per request; each step then passes it as
    `cross_attention_cache` along with the self-attention `cache`.

    Args:
        As `TransformerBlock`; the cross-attention has the self-attention's
        heads, head size, biases and attention dropout.

    Call arguments:
        inputs: `(batch, T, d_model)` decoder sequence.
        encoder_outputs: `(batch, S, encoder_dim)` encoder output; not needed
            when `cross_attention_cache` is given.
        padding_mask: `(batch, T)` (with a cache: `(batch, S_max)` over cache
            positions), nonzero at real decoder tokens.
        encoder_padding_mask: `(batch, S)`, nonzero at real encoder tokens.
        attention_mask: `(batch, T, T)` explicit self-attention mask.
        use_causal_mask: whether the self-attention is causal (default `True`).
        cache, cache_update_index, positions, attention_bias: the
            self-attention's, as in
            `MultiHeadAttention`; with a cache the block returns
            `(outputs, updated_cache)`.
        cross_attention_cache: `(batch, 2, S, num_heads, head_dim)` from
            `compute_cross_attention_cache`, used instead of `encoder_outputs`.
        training: whether dropout is active.

    Example:
    >>> block = TransformerDecoderBlock(num_heads=4, intermediate_dim=128, norm_first=True)
    >>> encoder_out = keras.random.normal((2, 9, 64))
    >>> y = block(keras.random.normal((2, 16, 64)), encoder_out)
    """

    def build(self, inputs_shape, encoder_outputs_shape=None):
        super().build(inputs_shape)
        self.cross_attention = CrossAttention(
            num_heads=self.num_heads,
            head_dim=self.attention.head_dim,
            dropout=self.attention_dropout,
            use_bias=self.use_bias,
            kernel_initializer=clone_initializer(self.kernel_initializer),
            lora=self.lora,
            dtype=self.dtype_policy,
            name="cross_attention",
        )
        # Without encoder outputs (built from a cache) the encoder is taken to be
        # as wide as the decoder.
        self.cross_attention.build(inputs_shape, encoder_outputs_shape)
        self.cross_attention_norm = make_normalization(
            self.normalization, self.norm_epsilon, dtype=self.dtype_policy,
            name="cross_attention_norm",
        )
        self.cross_attention_norm.build(inputs_shape)
        self.cross_attention_dropout_layer = keras.layers.Dropout(
            self.dropout, dtype=self.dtype_policy
        )
        self.cross_attention_adapter = None
        if self.adapter_dim:
            self.cross_attention_adapter = Adapter(
                self.adapter_dim, kernel_initializer=clone_initializer(self.kernel_initializer),
                dtype=self.dtype_policy, name="cross_attention_adapter",
            )
            self.cross_attention_adapter.build(inputs_shape)

    def compute_cross_attention_cache(self, encoder_outputs):
        """The cross-attention keys and values, `(batch, 2, S, num_heads, head_dim)`."""
        return self.cross_attention.compute_key_value_cache(encoder_outputs)

    def call(
        self,
        inputs,
        encoder_outputs=None,
        padding_mask=None,
        encoder_padding_mask=None,
        attention_mask=None,
        use_causal_mask=True,
        cache=None,
        cache_update_index=None,
        cross_attention_cache=None,
        positions=None,
        attention_bias=None,
        training=None,
    ):
        x, cache = self._self_attention_sublayer(
            inputs, padding_mask, attention_mask, use_causal_mask, cache, cache_update_index,
            positions, training, attention_bias,
        )
        y = self.cross_attention(
            self._pre_norm(self.cross_attention_norm, x),
            encoder_outputs,
            padding_mask=encoder_padding_mask,
            cache=cross_attention_cache,
            training=training,
        )
        x = self._add_residual(x, y, self.cross_attention_dropout_layer,
                               self.cross_attention_adapter, self.cross_attention_norm, training)
        x = self._feed_forward_sublayer(x, training)
        if cache is not None:
            return x, cache
        return x
