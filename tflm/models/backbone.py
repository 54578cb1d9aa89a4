"""TransformerBackbone: embeddings, a stack of transformer blocks, a final norm."""

import keras
import tensorflow as tf
from keras import ops

from tflm.config import POSITION_ENCODINGS
from tflm.layers.layer_utils import clone_initializer
from tflm.layers.masks import document_mask
from tflm.layers.normalization import make_normalization
from tflm.layers.position_embedding import PositionEmbedding
from tflm.layers.relative_position_bias import RelativePositionBias, relative_positions
from tflm.layers.sinusoidal_position_encoding import SinusoidalPositionEncoding
from tflm.layers.token_embedding import TokenEmbedding
from tflm.layers.transformer_block import TransformerBlock
from tflm.layers.transformer_decoder_block import TransformerDecoderBlock


@keras.saving.register_keras_serializable(package="tflm")
class TransformerBackbone(keras.Model):
    """A bidirectional encoder (BERT) or a causal decoder (GPT) by config.

    Reads top to bottom::

        x = token_embedding(token_ids)
          + position information (learned / sinusoidal; rotary and relative act in attention)
          + segment_embedding(segment_ids)           # if num_segments > 0
        x = dropout(embedding_norm(x))               # embedding_norm: BERT
        bias = relative_position_bias(key - query)   # relative (T5): one for all blocks
        mask = document_mask(document_ids)           # packed documents: block-diagonal
        for block in blocks: x = block(x, padding_mask, causal[, mask][, bias][, encoder output])
                                                     # recomputed in the backward pass with
                                                     # gradient_checkpointing (training only)
        x = final_norm(x)                            # pre-LN models (GPT-2)
        pooled = tanh(dense(x[:, 0]))                # if pooler (BERT)

    BERT: `causal=False, norm_first=False, activation="gelu",
    norm_epsilon=1e-12, position_encoding="learned", num_segments=2,
    embedding_norm=True, final_norm=False, pooler=True`.
    GPT-2: `causal=True, norm_first=True, activation="gelu_tanh",
    norm_epsilon=1e-5, position_encoding="learned", final_norm=True`.
    A T5 stack: `position_encoding="relative", normalization="rms_norm",
    norm_first=True, norm_epsilon=1e-6, use_bias=False, activation="relu"`
    (T5 v1.1: `"geglu"`).

    Args:
        vocabulary_size: number of token ids.
        num_layers: number of transformer blocks.
        num_heads: attention heads per block.
        hidden_dim: model width `d_model`.
        intermediate_dim: feed-forward width.
        max_sequence_length: longest input (size of the learned position table).
        causal: decoder (causal attention) if `True`, encoder otherwise.
        position_encoding: `"learned"`, `"sinusoidal"`, `"rotary"` or `"relative"`
            (T5's `RelativePositionBias`, bidirectional unless `causal`).
        num_segments: size of the segment (token type) vocabulary; 0 for none.
        activation: feed-forward activation (`"relu"`, `"gelu"`, `"gelu_tanh"`, `"swiglu"`,
            `"geglu"`).
        normalization: `"layer_norm"` or `"rms_norm"`.
        norm_first: pre-LN blocks if `True`, post-LN if `False`.
        norm_epsilon: epsilon of every norm.
        embedding_norm: whether to normalize the summed embeddings.
        final_norm: whether to normalize the last block's output; defaults to `norm_first`.
        pooler: whether to add a tanh pooler on the first token (BERT).
        dropout: dropout rate on embeddings and residual branches.
        attention_dropout: dropout rate on attention probabilities.
        use_bias: whether projections have biases.
        tie_embeddings: whether the output projection reuses the token embeddings.
        rope_theta: base of the rotary frequencies (`rotary_max_wavelength` of the layers).
        rotary_layout: `"half"` (Hugging Face Llama's rotate_half) or `"interleaved"`
            channel pairs of the rotary embedding.
        num_key_value_heads: key/value heads of the self-attention (grouped-query
            attention; 1: multi-query); 0 or `None`: `num_heads`. The cache holds only these.
        qkv_bias: whether the query/key/value projections have biases; `None`:
            `use_bias` (Qwen2: `use_bias=False, qkv_bias=True`).
        sliding_window: a causal decoder's query sees at most the last `sliding_window`
            keys (Mistral); 0: all.
        relative_num_buckets, relative_max_distance: the relative position bias's
            buckets and the distance from which they share the last (T5: 32, 128).
        head_dim: size of each attention head; 0 or `None`: `hidden_dim // num_heads`
            (T5's `d_kv` may differ).
        initializer_range: stddev of the truncated normal weight initializer.
        adapter_dim: bottleneck width of an `Adapter` after each sub-layer of
            every block (adapter fine-tuning); 0 for none.
        lora: LoRA factors on the blocks' projections (LoRA fine-tuning):
            `{"rank", "alpha", "dropout", "targets"}` (see `tflm.layers.lora`); None for none.
        cross_attention: the decoder of an encoder-decoder (`Seq2SeqBackbone`):
            its blocks also attend to an encoder's output (`TransformerDecoderBlock`).
        token_embedding: a `TokenEmbedding` to share (an encoder-decoder's shared
            vocabulary); not part of the config: its owner passes it again.
        dtype: a dtype policy, e.g. `"mixed_bfloat16"`.

    Inputs: a dict with `"token_ids"` `(batch, T)` int, `"padding_mask"`
    `(batch, T)` (1 at real tokens), `"segment_ids"` when `num_segments > 0`
    (zeros if absent), and optionally `"positions"` `(batch, T)` (default
    `0..T-1`; left-padded rows start their real tokens at 0) and `"document_ids"`
    `(batch, T)` (the documents packed into a row, each token attending only within
    its own: `tflm.data.pipeline.document_features`). With `cross_attention`, also
    `"encoder_sequence_output"` `(batch, S, hidden_dim)` and `"encoder_padding_mask"`
    `(batch, S)`.

    Outputs: a dict with `"sequence_output"` `(batch, T, hidden_dim)` and,
    with a pooler, `"pooled_output"` `(batch, hidden_dim)`.

    Example:
    >>> backbone = TransformerBackbone(
    ...     vocabulary_size=1000, num_layers=2, num_heads=4, hidden_dim=64,
    ...     intermediate_dim=256, max_sequence_length=128, causal=True, norm_first=True)
    >>> outputs = backbone({"token_ids": keras.ops.ones((2, 16), "int32"),
    ...                     "padding_mask": keras.ops.ones((2, 16), "int32")})
    """

    def __init__(
        self,
        vocabulary_size,
        num_layers,
        num_heads,
        hidden_dim,
        intermediate_dim,
        max_sequence_length=512,
        causal=False,
        position_encoding="learned",
        num_segments=0,
        activation="gelu",
        normalization="layer_norm",
        norm_first=False,
        norm_epsilon=1e-5,
        embedding_norm=False,
        final_norm=None,
        pooler=False,
        dropout=0.1,
        attention_dropout=0.1,
        use_bias=True,
        tie_embeddings=True,
        rope_theta=10000,
        rotary_layout="half",
        num_key_value_heads=0,
        qkv_bias=None,
        sliding_window=0,
        relative_num_buckets=32,
        relative_max_distance=128,
        head_dim=None,
        initializer_range=0.02,
        adapter_dim=0,
        lora=None,
        cross_attention=False,
        token_embedding=None,
        dtype=None,
        **kwargs,
    ):
        super().__init__(dtype=dtype, **kwargs)
        if position_encoding not in POSITION_ENCODINGS:
            raise ValueError(
                f"Unknown position_encoding {position_encoding!r}; "
                f"expected one of {POSITION_ENCODINGS}."
            )
        self.vocabulary_size = int(vocabulary_size)
        self.num_layers = int(num_layers)
        self.num_heads = int(num_heads)
        self.hidden_dim = int(hidden_dim)
        self.intermediate_dim = int(intermediate_dim)
        self.max_sequence_length = int(max_sequence_length)
        self.causal = bool(causal)
        self.position_encoding = position_encoding
        self.num_segments = int(num_segments)
        self.activation = activation
        self.normalization = normalization
        self.norm_first = bool(norm_first)
        self.norm_epsilon = float(norm_epsilon)
        self.embedding_norm = bool(embedding_norm)
        self.final_norm = self.norm_first if final_norm is None else bool(final_norm)
        self.pooler = bool(pooler)
        self.dropout = float(dropout)
        self.attention_dropout = float(attention_dropout)
        self.use_bias = bool(use_bias)
        self.tie_embeddings = bool(tie_embeddings)
        self.rope_theta = float(rope_theta)
        self.rotary_layout = rotary_layout
        self.num_key_value_heads = int(num_key_value_heads or num_heads)
        if self.num_heads % self.num_key_value_heads:
            raise ValueError(f"num_key_value_heads={self.num_key_value_heads} must divide "
                             f"num_heads={self.num_heads}.")
        self.qkv_bias = qkv_bias
        self.sliding_window = int(sliding_window or 0)
        if self.sliding_window and not self.causal:
            raise ValueError(f"sliding_window={self.sliding_window} needs a causal backbone.")
        self.relative_num_buckets = int(relative_num_buckets)
        self.relative_max_distance = int(relative_max_distance)
        self.initializer_range = float(initializer_range)
        self.adapter_dim = int(adapter_dim)
        self.lora = dict(lora) if lora else None
        self.cross_attention = bool(cross_attention)
        # A training setting, not part of the config: `set_gradient_checkpointing`.
        self.gradient_checkpointing = False
        if not head_dim and self.hidden_dim % self.num_heads:
            raise ValueError(
                f"hidden_dim={self.hidden_dim} is not divisible by num_heads={self.num_heads}."
            )
        self.head_dim = int(head_dim or self.hidden_dim // self.num_heads)

        initializer = keras.initializers.TruncatedNormal(stddev=self.initializer_range)
        policy = self.dtype_policy
        self.token_embedding = token_embedding or TokenEmbedding(
            self.vocabulary_size,
            self.hidden_dim,
            tie_weights=self.tie_embeddings,
            embeddings_initializer=clone_initializer(initializer),
            dtype=policy,
            name="token_embedding",
        )
        self.position_embedding = None
        if position_encoding == "learned":
            self.position_embedding = PositionEmbedding(
                self.max_sequence_length,
                initializer=clone_initializer(initializer),
                dtype=policy,
                name="position_embedding",
            )
        elif position_encoding == "sinusoidal":
            self.position_embedding = SinusoidalPositionEncoding(
                dtype=policy, name="position_encoding"
            )
        self.relative_position_bias = None
        if position_encoding == "relative":
            self.relative_position_bias = RelativePositionBias(
                self.num_heads,
                num_buckets=self.relative_num_buckets,
                max_distance=self.relative_max_distance,
                bidirectional=not self.causal,
                embeddings_initializer=clone_initializer(initializer),
                dtype=policy,
                name="relative_position_bias",
            )
        self.segment_embedding = None
        if self.num_segments > 0:
            self.segment_embedding = keras.layers.Embedding(
                self.num_segments,
                self.hidden_dim,
                embeddings_initializer=clone_initializer(initializer),
                dtype=policy,
                name="segment_embedding",
            )
        self.embedding_norm_layer = None
        if self.embedding_norm:
            self.embedding_norm_layer = make_normalization(
                normalization, self.norm_epsilon, dtype=policy, name="embedding_norm"
            )
        self.embedding_dropout = keras.layers.Dropout(dropout, dtype=policy, name="embedding_dropout")
        # One attribute per block (block_0, block_1, ...), not a list: TensorFlow's
        # checkpoints follow attributes, and do not see into Keras' tracked lists.
        block_class = TransformerDecoderBlock if self.cross_attention else TransformerBlock
        for i in range(self.num_layers):
            setattr(self, f"block_{i}", block_class(
                num_heads=self.num_heads,
                intermediate_dim=self.intermediate_dim,
                head_dim=self.head_dim,
                activation=activation,
                normalization=normalization,
                norm_first=self.norm_first,
                norm_epsilon=self.norm_epsilon,
                dropout=dropout,
                attention_dropout=attention_dropout,
                use_bias=self.use_bias,
                rotary_max_wavelength=(
                    self.rope_theta if position_encoding == "rotary" else None
                ),
                rotary_layout=self.rotary_layout,
                num_key_value_heads=self.num_key_value_heads,
                qkv_bias=self.qkv_bias,
                sliding_window=self.sliding_window,
                kernel_initializer=clone_initializer(initializer),
                adapter_dim=self.adapter_dim,
                lora=self.lora,
                dtype=policy,
                name=f"block_{i}",
            ))
        self.final_norm_layer = None
        if self.final_norm:
            self.final_norm_layer = make_normalization(
                normalization, self.norm_epsilon, dtype=policy, name="final_norm"
            )
        self.pooler_dense = None
        if self.pooler:
            self.pooler_dense = keras.layers.Dense(
                self.hidden_dim,
                activation="tanh",
                kernel_initializer=clone_initializer(initializer),
                dtype=policy,
                name="pooler",
            )
        self.build()

    @property
    def blocks(self):
        """The transformer blocks, bottom to top."""
        return [getattr(self, f"block_{i}") for i in range(self.num_layers)]

    def build(self, input_shape=None):
        # Weights exist right after construction (as in a functional model), so a
        # backbone can be inspected, converted into or restored before any call.
        if self.built:
            return
        hidden_shape = (None, None, self.hidden_dim)
        if not self.token_embedding.built:  # a shared one is built by its owner
            self.token_embedding.build((None, None))
        for layer in (self.position_embedding, self.embedding_norm_layer, self.final_norm_layer):
            if layer is not None:
                layer.build(hidden_shape)
        if self.segment_embedding is not None:
            self.segment_embedding.build((None, None))
        if self.relative_position_bias is not None:
            self.relative_position_bias.build((None, None, None))
        for block in self.blocks:
            block.build(hidden_shape)
        if self.pooler_dense is not None:
            self.pooler_dense.build((None, self.hidden_dim))
        self.built = True

    def embed(self, token_ids, segment_ids=None, start_index=0, positions=None, training=None):
        """Token + position (+ segment) embeddings, normalized and dropped out."""
        x = self.token_embedding(token_ids)
        if self.position_embedding is not None:
            x = x + self.position_embedding(x, start_index=start_index, positions=positions)
        if self.segment_embedding is not None:
            if segment_ids is None:
                segment_ids = ops.zeros_like(token_ids)
            x = x + self.segment_embedding(segment_ids)
        if self.embedding_norm_layer is not None:
            x = self.embedding_norm_layer(x)
        return self.embedding_dropout(x, training=training)

    def call(self, inputs, training=None):
        token_ids = inputs["token_ids"]
        padding_mask = inputs.get("padding_mask")
        positions = inputs.get("positions")  # optional, e.g. for left-padded rows
        x = self.embed(token_ids, inputs.get("segment_ids"), positions=positions, training=training)
        length = ops.shape(token_ids)[1]
        bias = self._relative_bias(length, length)
        # Packed documents (`document_ids`): each token attends only within its own.
        document_ids = inputs.get("document_ids")
        attention_mask = None if document_ids is None else document_mask(document_ids)
        arguments = dict(padding_mask=padding_mask, attention_mask=attention_mask,
                         use_causal_mask=self.causal, positions=positions, attention_bias=bias,
                         **self._encoder_arguments(inputs))
        for block in self.blocks:
            if self.gradient_checkpointing and training:
                x = recompute_block(block, x, **arguments)
            else:
                x = block(x, training=training, **arguments)
        if self.final_norm_layer is not None:
            x = self.final_norm_layer(x)
        outputs = {"sequence_output": x}
        if self.pooler_dense is not None:
            outputs["pooled_output"] = self.pooler_dense(x[:, 0, :])
        return outputs

    def _relative_bias(self, query_length, key_length, start_index=0):
        """`(1, heads, T, S)` relative position bias of the queries from `start_index` over
        keys from 0, shared by every block; `None` without one. Distances are between indices:
        in a left-padded row they equal the distances between its real tokens' positions."""
        if self.relative_position_bias is None:
            return None
        return self.relative_position_bias(
            relative_positions(query_length, key_length, start_index)[None])

    def _encoder_arguments(self, inputs):
        """The encoder output a cross-attending block reads (none for the others)."""
        if not self.cross_attention:
            return {}
        return {"encoder_outputs": inputs["encoder_sequence_output"],
                "encoder_padding_mask": inputs.get("encoder_padding_mask")}

    def cross_attention_caches(self, encoder_outputs):
        """Every block's cross-attention keys and values of `encoder_outputs`, computed once
        per request: `(batch, num_layers, 2, S, heads, head_dim)`."""
        return ops.stack([block.compute_cross_attention_cache(encoder_outputs)
                          for block in self.blocks], axis=1)

    def init_cache(self, batch_size, max_length):
        """A zero key/value cache `(batch, num_layers, 2, max_length, num_key_value_heads,
        head_dim)`."""
        return ops.zeros(
            (batch_size, self.num_layers, 2, max_length, self.num_key_value_heads,
             self.head_dim),
            dtype=self.compute_dtype,
        )

    def call_with_cache(self, token_ids, cache, cache_update_index, padding_mask=None,
                        positions=None, cross_attention_caches=None, encoder_padding_mask=None):
        """Runs new tokens through a causal decoder, reading and writing the cache.

        Args:
            token_ids: `(batch, T)` new tokens, at positions
                `cache_update_index .. cache_update_index + T - 1`.
            cache: from `init_cache` or a previous call.
            cache_update_index: position of the first new token.
            padding_mask: `(batch, max_length)` over cache positions, nonzero at
                real tokens (for left-padded prompts); `None` if all are real.
            positions: `(batch, T)` positions of the new tokens (left-padded
                rows start later); default `cache_update_index + arange(T)`.
            cross_attention_caches: with `cross_attention`, from
                `cross_attention_caches` (the encoder output's keys and values).
            encoder_padding_mask: with `cross_attention`, `(batch, S)`.

        Returns:
            `(sequence_output, cache)`: hidden states of the new tokens `(batch,
            T, hidden_dim)` after the final norm, and the updated cache.
        """
        if not self.causal:
            raise ValueError("call_with_cache needs a causal backbone (causal=True).")
        x = self.embed(token_ids, start_index=cache_update_index, positions=positions,
                       training=False)
        bias = self._relative_bias(ops.shape(token_ids)[1], ops.shape(cache)[3],
                                   cache_update_index)
        new_caches = []
        for i, block in enumerate(self.blocks):
            encoder = {}
            if self.cross_attention:
                encoder = {"cross_attention_cache": cross_attention_caches[:, i],
                           "encoder_padding_mask": encoder_padding_mask}
            x, layer_cache = block(
                x,
                padding_mask=padding_mask,
                use_causal_mask=True,
                cache=cache[:, i],
                cache_update_index=cache_update_index,
                positions=positions,
                attention_bias=bias,
                training=False,
                **encoder,
            )
            new_caches.append(layer_cache)
        if self.final_norm_layer is not None:
            x = self.final_norm_layer(x)
        return x, ops.stack(new_caches, axis=1)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocabulary_size": self.vocabulary_size,
                "num_layers": self.num_layers,
                "num_heads": self.num_heads,
                "hidden_dim": self.hidden_dim,
                "intermediate_dim": self.intermediate_dim,
                "max_sequence_length": self.max_sequence_length,
                "causal": self.causal,
                "position_encoding": self.position_encoding,
                "num_segments": self.num_segments,
                "activation": self.activation,
                "normalization": self.normalization,
                "norm_first": self.norm_first,
                "norm_epsilon": self.norm_epsilon,
                "embedding_norm": self.embedding_norm,
                "final_norm": self.final_norm,
                "pooler": self.pooler,
                "dropout": self.dropout,
                "attention_dropout": self.attention_dropout,
                "use_bias": self.use_bias,
                "tie_embeddings": self.tie_embeddings,
                "rope_theta": self.rope_theta,
                "rotary_layout": self.rotary_layout,
                # 0: as many as num_heads, as in ModelConfig.
                "num_key_value_heads": (0 if self.num_key_value_heads == self.num_heads
                                        else self.num_key_value_heads),
                "qkv_bias": self.qkv_bias,
                "sliding_window": self.sliding_window,
                "relative_num_buckets": self.relative_num_buckets,
                "relative_max_distance": self.relative_max_distance,
                # 0: the default width, as in ModelConfig (configs written before the key agree).
                "head_dim": (0 if self.head_dim * self.num_heads == self.hidden_dim
                             else self.head_dim),
                "initializer_range": self.initializer_range,
                "adapter_dim": self.adapter_dim,
                "lora": self.lora,
                "cross_attention": self.cross_attention,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if "rotary_max_wavelength" in config:  # its name in models saved before rope_theta
            config["rope_theta"] = config.pop("rotary_max_wavelength")
        return cls(**config)


# The block arguments that carry gradients (to the relative position bias, to the encoder).
DIFFERENTIABLE_ARGUMENTS = ("attention_bias", "encoder_outputs")


def recompute_block(block, x, **arguments):
    """`block(x, **arguments, training=True)` whose activations are recomputed in the
    backward pass (`tf.recompute_grad`) instead of kept from the forward pass.

    Gradients flow to `x`, to the `DIFFERENTIABLE_ARGUMENTS` given (not `None`) and to the
    block's variables; the other arguments (masks, positions, flags) get none. Each dropout
    of the block draws, when recomputed, the mask it drew in the forward pass: Keras' seed
    generators advance a state variable at each draw, so their states are read before the
    block and put back at the start of each of its two runs (a no-op in the first). Both
    runs leave the states where one plain forward pass would: a run with checkpointing
    trains as one without.
    """
    names = [name for name in DIFFERENTIABLE_ARGUMENTS if arguments.get(name) is not None]
    fixed = {name: value for name, value in arguments.items() if name not in names}
    states = [generator.state for layer in block._flatten_layers(include_self=True)
              for generator in layer._seed_generators]
    seeds = [tf.identity(state.value) for state in states]

    def forward(x, *tensors):
        for state, seed in zip(states, seeds):
            state.assign(seed)
        return block(x, training=True, **dict(zip(names, tensors)), **fixed)

    return tf.recompute_grad(forward)(x, *[arguments[name] for name in names])


def set_gradient_checkpointing(model, enabled=True):
    """Turns gradient checkpointing on (or off) in every `TransformerBackbone` of `model`
    (one in an encoder or a decoder, two in an encoder-decoder): each block's forward pass
    is recomputed in the backward pass (`recompute_block`), so training keeps the
    activations of one block instead of all of them. Returns how many backbones."""
    backbones = [layer for layer in model._flatten_layers(include_self=True)
                 if isinstance(layer, TransformerBackbone)]
    for backbone in backbones:
        backbone.gradient_checkpointing = bool(enabled)
    return len(backbones)
