"""Keras layers of tflm: position information, attention, feed-forward, blocks."""

from tflm.layers.adapter import Adapter
from tflm.layers.cross_attention import CrossAttention
from tflm.layers.feed_forward import FeedForward
from tflm.layers.masks import causal_mask, merge_attention_masks
from tflm.layers.multi_head_attention import MultiHeadAttention
from tflm.layers.normalization import RMSNormalization, make_normalization
from tflm.layers.position_embedding import PositionEmbedding
from tflm.layers.relative_position_bias import RelativePositionBias
from tflm.layers.rotary_embedding import RotaryEmbedding
from tflm.layers.sinusoidal_position_encoding import SinusoidalPositionEncoding
from tflm.layers.token_embedding import TokenEmbedding
from tflm.layers.transformer_block import TransformerBlock
from tflm.layers.transformer_decoder_block import TransformerDecoderBlock

__all__ = [
    "Adapter",
    "CrossAttention",
    "FeedForward",
    "MultiHeadAttention",
    "PositionEmbedding",
    "RMSNormalization",
    "RelativePositionBias",
    "RotaryEmbedding",
    "SinusoidalPositionEncoding",
    "TokenEmbedding",
    "TransformerBlock",
    "TransformerDecoderBlock",
    "causal_mask",
    "make_normalization",
    "merge_attention_masks",
]
