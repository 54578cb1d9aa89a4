"""Hugging Face BERT, GPT-2, BART, T5 and Llama-family (Llama, Mistral, Qwen2) checkpoints →
tflm models and tokenizers, exactly.

Two levels:

- `load_bert` / `load_gpt2` / `load_bart` / `load_t5` / `load_llama` take a Hugging Face
  `config.json` as a dict and the checkpoint's tensors as a dict of NumPy arrays (names as
  in `model.safetensors`), and build a `TransformerBackbone` (a `Seq2SeqBackbone`
  for BART and T5) that computes the same function. Every expected tensor must be present
  with the expected shape; a missing or mis-shaped one is an error naming the tensor.
- `load_huggingface(folder)` reads a checkpoint folder as `transformers`
  writes it: `config.json`, `model.safetensors` (or shards with an index),
  and the tokenizer files (`vocab.txt` + `tokenizer_config.json` for BERT,
  `vocab.json` + `merges.txt` for GPT-2 and BART, `spiece.model` for T5, `tokenizer.model`
  for Llama 2 and Mistral, `tokenizer.json` for Llama 3 and Qwen2), and returns the task
  model (`MaskedLM` for BERT, `CausalLM` for GPT-2 and the Llama family, `Seq2SeqLM` for
  BART and T5) with its tokenizer. The layouts
  of `bert-base-uncased`, of sentence-transformers BERT models (no `bert.`
  prefix, maybe no pooler) and of `gpt2` all load.

torch `Linear` weights are `(out, in)` and are transposed; GPT-2 `Conv1D`
weights are already `(in, out)`. BERT's separate query/key/value become the
fused `[Q | K | V]` kernel of `MultiHeadAttention`; GPT-2's `c_attn` already
has that layout. BART's and T5's cross-attention keys and values become the fused
`[K | V]` kernel of `CrossAttention`. Llama's q_proj/k_proj/v_proj become the fused
`[Q | K | V]` kernel of widths H·d, K·d, K·d (grouped-query attention), its gate_proj/up_proj
the `[gate | up]` SwiGLU kernel; its rotate_half rotary layout is tflm's `"half"`, so no
weight is permuted.
"""

import dataclasses
import json
import os

import numpy as np

from tflm.data.byte_pair import MERGES_FILE, VOCAB_FILE, BytePairTokenizer, read_vocab_json
from tflm.data.sentencepiece_tokenizer import SentencePieceTokenizer
from tflm.data.tokenizer_utils import read_json_file
from tflm.data.wordpiece import VOCAB_FILE as WORDPIECE_VOCAB
from tflm.data.wordpiece import WordPieceTokenizer
from tflm.errors import MissingFileError, TflmError
from tflm.models.backbone import TransformerBackbone
from tflm.models.causal_lm import CausalLM
from tflm.models.masked_lm import MaskedLM
from tflm.models.seq2seq_lm import Seq2SeqBackbone, Seq2SeqLM
from tflm.models.safetensors_file import INDEX_FILE, WEIGHTS_FILE, read_checkpoint_weights


class CheckpointError(TflmError, ValueError):
    """A checkpoint does not match the architecture; the message names the tensor."""


def _strip_prefix(params, prefixes):
    """Drops a model-class prefix ("bert.", "transformer.") if every backbone tensor has it."""
    for prefix in prefixes:
        if any(k.startswith(prefix) for k in params):
            return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in params.items()}
    return dict(params)


class _Reader:
    """Takes tensors out of a checkpoint dict, checking names and shapes."""

    def __init__(self, params, source):
        self.params = params
        self.source = source
        self.used = set()

    def get(self, name, shape):
        if name not in self.params:
            raise CheckpointError(f"{self.source}: tensor {name!r} is missing.")
        value = np.asarray(self.params[name], dtype=np.float32)
        if tuple(value.shape) != tuple(shape):
            raise CheckpointError(
                f"{self.source}: tensor {name!r} has shape {tuple(value.shape)}, "
                f"expected {tuple(shape)} for this architecture."
            )
        self.used.add(name)
        return value


def bert_backbone_kwargs(hf_config, pooler=True):
    """`TransformerBackbone` arguments that express a Hugging Face BERT config.

    `pooler=False` for checkpoints saved without the pooler (`add_pooling_layer=False`).
    """
    if hf_config.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(f"hidden_act={hf_config['hidden_act']!r}: only erf 'gelu' is supported.")
    if hf_config.get("position_embedding_type", "absolute") != "absolute":
        raise CheckpointError("Only absolute position embeddings are supported.")
    return dict(
        vocabulary_size=hf_config["vocab_size"],
        num_layers=hf_config["num_hidden_layers"],
        num_heads=hf_config["num_attention_heads"],
        hidden_dim=hf_config["hidden_size"],
        intermediate_dim=hf_config["intermediate_size"],
        max_sequence_length=hf_config["max_position_embeddings"],
        causal=False,
        position_encoding="learned",
        num_segments=hf_config.get("type_vocab_size", 2),
        activation="gelu",
        normalization="layer_norm",
        norm_first=False,
        norm_epsilon=hf_config.get("layer_norm_eps", 1e-12),
        embedding_norm=True,
        final_norm=False,
        pooler=pooler,
        dropout=hf_config.get("hidden_dropout_prob", 0.1),
        attention_dropout=hf_config.get("attention_probs_dropout_prob", 0.1),
        tie_embeddings=True,
        initializer_range=hf_config.get("initializer_range", 0.02),
    )


def gpt2_backbone_kwargs(hf_config):
    """`TransformerBackbone` arguments that express a Hugging Face GPT-2 config."""
    if hf_config.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        raise CheckpointError(
            f"activation_function={hf_config['activation_function']!r}: only the tanh GELU "
            "('gelu_new') is supported."
        )
    hidden = hf_config["n_embd"]
    return dict(
        vocabulary_size=hf_config["vocab_size"],
        num_layers=hf_config["n_layer"],
        num_heads=hf_config["n_head"],
        hidden_dim=hidden,
        intermediate_dim=hf_config.get("n_inner") or 4 * hidden,
        max_sequence_length=hf_config["n_positions"],
        causal=True,
        position_encoding="learned",
        activation="gelu_tanh",
        normalization="layer_norm",
        norm_first=True,
        norm_epsilon=hf_config.get("layer_norm_epsilon", 1e-5),
        final_norm=True,
        dropout=hf_config.get("resid_pdrop", 0.1),
        attention_dropout=hf_config.get("attn_pdrop", 0.1),
        tie_embeddings=True,
        initializer_range=hf_config.get("initializer_range", 0.02),
    )


def _set_norm(norm, reader, name, hidden):
    norm.gamma.assign(reader.get(name + ".weight", (hidden,)))
    norm.beta.assign(reader.get(name + ".bias", (hidden,)))


def _set_dense(dense, reader, name, in_dim, out_dim, transpose):
    shape = (out_dim, in_dim) if transpose else (in_dim, out_dim)
    kernel = reader.get(name + ".weight", shape)
    dense.kernel.assign(kernel.T if transpose else kernel)
    dense.bias.assign(reader.get(name + ".bias", (out_dim,)))


def load_bert(hf_config, params, source="BERT checkpoint", dtype=None, used=None):
    """A `TransformerBackbone` with a Hugging Face BERT's weights.

    `used`, a set, receives the names of the tensors that were read.

    Returns:
        `(backbone, head)`: `head` holds the masked-LM head tensors
        (`transform_kernel`, `transform_bias`, `norm_gamma`, `norm_beta`,
        `output_bias`) when the checkpoint has them (`BertForMaskedLM`), and the
        next-sentence head (`next_sentence_kernel`, `next_sentence_bias`) when it has
        that (`BertForPreTraining`); `None` if neither.
    """
    params = _strip_prefix(params, ("bert.",))
    pooler = "pooler.dense.weight" in params
    backbone = TransformerBackbone(**bert_backbone_kwargs(hf_config, pooler), dtype=dtype)
    reader = _Reader(params, source)
    h, inter = backbone.hidden_dim, backbone.intermediate_dim
    backbone.token_embedding.embeddings.assign(
        reader.get("embeddings.word_embeddings.weight", (backbone.vocabulary_size, h))
    )
    backbone.position_embedding.position_embeddings.assign(
        reader.get("embeddings.position_embeddings.weight", (backbone.max_sequence_length, h))
    )
    backbone.segment_embedding.embeddings.assign(
        reader.get("embeddings.token_type_embeddings.weight", (backbone.num_segments, h))
    )
    _set_norm(backbone.embedding_norm_layer, reader, "embeddings.LayerNorm", h)
    for i, block in enumerate(backbone.blocks):
        pre = f"encoder.layer.{i}."
        qkv = [reader.get(pre + f"attention.self.{n}.weight", (h, h)).T for n in ("query", "key", "value")]
        qkv_bias = [reader.get(pre + f"attention.self.{n}.bias", (h,)) for n in ("query", "key", "value")]
        block.attention.qkv_dense.kernel.assign(np.concatenate(qkv, axis=1))
        block.attention.qkv_dense.bias.assign(np.concatenate(qkv_bias))
        _set_dense(block.attention.output_dense, reader, pre + "attention.output.dense", h, h, True)
        _set_norm(block.attention_norm, reader, pre + "attention.output.LayerNorm", h)
        ffn = block.feed_forward
        _set_dense(ffn.intermediate_dense, reader, pre + "intermediate.dense", h, inter, True)
        _set_dense(ffn.output_dense, reader, pre + "output.dense", inter, h, True)
        _set_norm(block.feed_forward_norm, reader, pre + "output.LayerNorm", h)
    if pooler:
        _set_dense(backbone.pooler_dense, reader, "pooler.dense", h, h, True)

    head = None
    if "cls.predictions.bias" in params:
        head = {
            "transform_kernel": reader.get("cls.predictions.transform.dense.weight", (h, h)).T,
            "transform_bias": reader.get("cls.predictions.transform.dense.bias", (h,)),
            "norm_gamma": reader.get("cls.predictions.transform.LayerNorm.weight", (h,)),
            "norm_beta": reader.get("cls.predictions.transform.LayerNorm.bias", (h,)),
            "output_bias": reader.get("cls.predictions.bias", (backbone.vocabulary_size,)),
        }
        # The decoder is tied to the word embeddings; a saved copy must be that copy.
        _check_tied(reader, "cls.predictions.decoder.weight", "embeddings.word_embeddings.weight")
        _check_tied(reader, "cls.predictions.decoder.bias", "cls.predictions.bias")
    if {"cls.seq_relationship.weight", "cls.seq_relationship.bias"} <= set(params) and pooler:
        # BERT's next-sentence head (BertForPreTraining) on the pooled output.
        head = dict(head or {},
                    next_sentence_kernel=reader.get("cls.seq_relationship.weight", (2, h)).T,
                    next_sentence_bias=reader.get("cls.seq_relationship.bias", (2,)))
    if used is not None:
        used.update(reader.used)
    return backbone, head


def _check_tied(reader, name, tied_to):
    """A saved copy of a tied tensor must equal it (else the model is not what tflm computes)."""
    if name in reader.params:
        value = reader.get(name, reader.params[tied_to].shape)
        if not np.array_equal(value, reader.get(tied_to, value.shape)):
            raise CheckpointError(f"{reader.source}: tensor {name!r} differs from {tied_to!r}: "
                                  "an untied output projection, which tflm does not import.")


def set_masked_lm_head(masked_lm, head):
    """Copies a `load_bert` head dict into a `MaskedLM` built on the loaded backbone."""
    if "output_bias" in head:
        masked_lm.head_dense.kernel.assign(head["transform_kernel"])
        masked_lm.head_dense.bias.assign(head["transform_bias"])
        masked_lm.head_norm.gamma.assign(head["norm_gamma"])
        masked_lm.head_norm.beta.assign(head["norm_beta"])
        masked_lm.head_bias.assign(head["output_bias"])
    if "next_sentence_kernel" in head:
        masked_lm.next_sentence_head.kernel.assign(head["next_sentence_kernel"])
        masked_lm.next_sentence_head.bias.assign(head["next_sentence_bias"])


def load_gpt2(hf_config, params, source="GPT-2 checkpoint", dtype=None, used=None):
    """A causal `TransformerBackbone` with a Hugging Face GPT-2's weights (tied output).

    `used`, a set, receives the names of the tensors that were read.
    """
    params = _strip_prefix(params, ("transformer.",))
    backbone = TransformerBackbone(**gpt2_backbone_kwargs(hf_config), dtype=dtype)
    reader = _Reader(params, source)
    h, inter = backbone.hidden_dim, backbone.intermediate_dim
    backbone.token_embedding.embeddings.assign(reader.get("wte.weight", (backbone.vocabulary_size, h)))
    backbone.position_embedding.position_embeddings.assign(
        reader.get("wpe.weight", (backbone.max_sequence_length, h))
    )
    for i, block in enumerate(backbone.blocks):
        pre = f"h.{i}."
        _set_norm(block.attention_norm, reader, pre + "ln_1", h)
        _set_dense(block.attention.qkv_dense, reader, pre + "attn.c_attn", h, 3 * h, False)
        _set_dense(block.attention.output_dense, reader, pre + "attn.c_proj", h, h, False)
        _set_norm(block.feed_forward_norm, reader, pre + "ln_2", h)
        _set_dense(block.feed_forward.intermediate_dense, reader, pre + "mlp.c_fc", h, inter, False)
        _set_dense(block.feed_forward.output_dense, reader, pre + "mlp.c_proj", inter, h, False)
    _set_norm(backbone.final_norm_layer, reader, "ln_f", h)
    _check_tied(reader, "lm_head.weight", "wte.weight")
    if used is not None:
        used.update(reader.used)
    return backbone


# T5's `feed_forward_proj` → tflm's feed-forward activation.
T5_ACTIVATIONS = {"relu": "relu", "gated-gelu": "geglu"}
# BART's learned positions start at row 2 of `embed_positions` (fairseq's padding offset).
BART_POSITION_OFFSET = 2


def bart_backbone_kwargs(hf_config):
    """`Seq2SeqBackbone` arguments that express a Hugging Face BART config.

    BART is post-LN (`norm_first=False`) with a norm after the summed embeddings
    (`layernorm_embedding`) and no final norm, exact GELU, and learned positions.
    What tflm's encoder-decoder does not have is refused, naming the key:
    `scale_embedding` (token embeddings times sqrt(d_model)), pre-LN variants
    (`normalize_before`, `add_final_layer_norm`: mBART) and unequal halves.
    """
    def refuse(key, why):
        raise CheckpointError(f"config.json: {key}={hf_config[key]!r}: {why}")

    if hf_config.get("activation_function", "gelu") != "gelu":
        refuse("activation_function", "only erf 'gelu' is supported for BART.")
    for key in ("scale_embedding", "normalize_before", "add_final_layer_norm"):
        if hf_config.get(key):
            refuse(key, "tflm's encoder-decoder has no such option (BART has it false).")
    for a, b in (("encoder_attention_heads", "decoder_attention_heads"),
                 ("encoder_ffn_dim", "decoder_ffn_dim")):
        if hf_config[a] != hf_config[b]:
            refuse(b, f"differs from {a}={hf_config[a]!r}; tflm's encoder and decoder blocks "
                      "have the same heads and width.")
    if hf_config.get("tie_word_embeddings", True) is False:
        refuse("tie_word_embeddings", "tflm imports BART with the tied output projection.")
    return dict(
        vocabulary_size=hf_config["vocab_size"],
        num_layers=hf_config["encoder_layers"],
        num_decoder_layers=hf_config["decoder_layers"],
        num_heads=hf_config["encoder_attention_heads"],
        hidden_dim=hf_config["d_model"],
        intermediate_dim=hf_config["encoder_ffn_dim"],
        max_sequence_length=hf_config["max_position_embeddings"],
        position_encoding="learned",
        activation="gelu",
        normalization="layer_norm",
        norm_first=False,
        norm_epsilon=1e-5,  # torch.nn.LayerNorm's default, which BART uses
        embedding_norm=True,
        dropout=hf_config.get("dropout", 0.1),
        attention_dropout=hf_config.get("attention_dropout", 0.0),
        shared_embeddings=True,
        tie_embeddings=True,
        initializer_range=hf_config.get("init_std", 0.02),
    )


def _set_attention(attention, reader, name, hidden):
    """BART's separate q/k/v/out projections into a `MultiHeadAttention` ([Q|K|V] fused) or a
    `CrossAttention` (query, [K|V] fused)."""
    weights = {n: reader.get(f"{name}.{n}_proj.weight", (hidden, hidden)).T for n in "qkv"}
    biases = {n: reader.get(f"{name}.{n}_proj.bias", (hidden,)) for n in "qkv"}
    if hasattr(attention, "qkv_dense"):
        attention.qkv_dense.kernel.assign(np.concatenate([weights[n] for n in "qkv"], axis=1))
        attention.qkv_dense.bias.assign(np.concatenate([biases[n] for n in "qkv"]))
    else:
        attention.query_dense.kernel.assign(weights["q"])
        attention.query_dense.bias.assign(biases["q"])
        attention.key_value_dense.kernel.assign(np.concatenate([weights["k"], weights["v"]], 1))
        attention.key_value_dense.bias.assign(np.concatenate([biases["k"], biases["v"]]))
    _set_dense(attention.output_dense, reader, name + ".out_proj", hidden, hidden, True)


def _set_bart_half(half, reader, name, hidden):
    """One half (`encoder` / `decoder`) of a BART: positions, embedding norm, blocks."""
    table = reader.get(f"{name}.embed_positions.weight",
                       (half.max_sequence_length + BART_POSITION_OFFSET, hidden))
    half.position_embedding.position_embeddings.assign(table[BART_POSITION_OFFSET:])
    _set_norm(half.embedding_norm_layer, reader, f"{name}.layernorm_embedding", hidden)
    inter = half.intermediate_dim
    for i, block in enumerate(half.blocks):
        pre = f"{name}.layers.{i}."
        _set_attention(block.attention, reader, pre + "self_attn", hidden)
        _set_norm(block.attention_norm, reader, pre + "self_attn_layer_norm", hidden)
        if half.cross_attention:
            _set_attention(block.cross_attention, reader, pre + "encoder_attn", hidden)
            _set_norm(block.cross_attention_norm, reader, pre + "encoder_attn_layer_norm", hidden)
        _set_dense(block.feed_forward.intermediate_dense, reader, pre + "fc1", hidden, inter, True)
        _set_dense(block.feed_forward.output_dense, reader, pre + "fc2", inter, hidden, True)
        _set_norm(block.feed_forward_norm, reader, pre + "final_layer_norm", hidden)


def load_bart(hf_config, params, source="BART checkpoint", dtype=None, used=None):
    """A `Seq2SeqBackbone` with a Hugging Face BART's weights (`BartModel` or
    `BartForConditionalGeneration`: shared, tied token embedding).

    Positions `i` read row `i + 2` of `embed_positions`, as BART does. The LM's
    `final_logits_bias` is a buffer BART never trains: it must be zero (tflm's
    logits have no bias); a nonzero one is an error naming it.

    `used`, a set, receives the names of the tensors that were read.
    """
    params = _strip_prefix(params, ("model.",))
    backbone = Seq2SeqBackbone(**bart_backbone_kwargs(hf_config), dtype=dtype)
    reader = _Reader(params, source)
    h = backbone.hidden_dim
    backbone.token_embedding.embeddings.assign(
        reader.get("shared.weight", (backbone.vocabulary_size, h)))
    for half in ("encoder", "decoder"):
        _check_tied(reader, f"{half}.embed_tokens.weight", "shared.weight")
        _set_bart_half(getattr(backbone, half), reader, half, h)
    _check_tied(reader, "lm_head.weight", "shared.weight")
    if "final_logits_bias" in params:
        bias = reader.get("final_logits_bias", (1, backbone.vocabulary_size))
        if np.any(bias):
            raise CheckpointError(f"{source}: tensor 'final_logits_bias' is not zero: a logits "
                                  "bias, which tflm's Seq2SeqLM does not have.")
    if used is not None:
        used.update(reader.used)
    return backbone


def t5_backbone_kwargs(hf_config):
    """`Seq2SeqBackbone` arguments that express a Hugging Face T5 config (T5, T5 v1.1,
    flan-t5).

    T5 is pre-norm with RMSNorm (no mean, no bias), no biases anywhere, a relative position
    bias per stack and no position embeddings, `d_kv`-wide heads, and a relu (T5) or
    gated tanh-GELU (`feed_forward_proj: gated-gelu`, v1.1) feed-forward. The output
    projection is the shared embedding (`tie_word_embeddings`, T5) or `lm_head` (v1.1).
    T5 has no position limit; `n_positions` (512) bounds the decoder's cache.
    """
    def refuse(key, why):
        raise CheckpointError(f"config.json: {key}={hf_config[key]!r}: {why}")

    for key in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads"):
        if key not in hf_config:
            raise CheckpointError(f"config.json: no {key!r}, which a T5 config has.")
    if hf_config.get("feed_forward_proj", "relu") not in T5_ACTIVATIONS:
        refuse("feed_forward_proj", "tflm imports 'relu' (T5) and 'gated-gelu' (T5 v1.1).")
    if hf_config.get("is_encoder_decoder", True) is False:
        refuse("is_encoder_decoder", "tflm imports T5's encoder-decoder.")
    return dict(
        vocabulary_size=hf_config["vocab_size"],
        num_layers=hf_config["num_layers"],
        num_decoder_layers=hf_config.get("num_decoder_layers") or hf_config["num_layers"],
        num_heads=hf_config["num_heads"],
        hidden_dim=hf_config["d_model"],
        intermediate_dim=hf_config["d_ff"],
        head_dim=hf_config["d_kv"],
        max_sequence_length=hf_config.get("n_positions", 512),
        position_encoding="relative",
        relative_num_buckets=hf_config.get("relative_attention_num_buckets", 32),
        relative_max_distance=hf_config.get("relative_attention_max_distance", 128),
        activation=T5_ACTIVATIONS[hf_config.get("feed_forward_proj", "relu")],
        normalization="rms_norm",
        norm_first=True,
        norm_epsilon=hf_config.get("layer_norm_epsilon", 1e-6),
        dropout=hf_config.get("dropout_rate", 0.1),
        attention_dropout=hf_config.get("dropout_rate", 0.1),
        use_bias=False,
        shared_embeddings=True,
        tie_embeddings=hf_config.get("tie_word_embeddings", True),
    )


def _set_t5_attention(attention, reader, name, hidden, inner):
    """T5's q/k/v/o (no biases) into a `MultiHeadAttention` ([Q|K|V] fused) or a
    `CrossAttention` (query, [K|V] fused). T5 does not scale its logits by 1/sqrt(d_kv):
    the queries are scaled up by sqrt(d_kv) instead, which computes the same scores."""
    weights = {n: reader.get(f"{name}.{n}.weight", (inner, hidden)).T for n in "qkv"}
    weights["q"] = weights["q"] * np.sqrt(attention.head_dim)
    if hasattr(attention, "qkv_dense"):
        attention.qkv_dense.kernel.assign(np.concatenate([weights[n] for n in "qkv"], axis=1))
    else:
        attention.query_dense.kernel.assign(weights["q"])
        attention.key_value_dense.kernel.assign(np.concatenate([weights["k"], weights["v"]], 1))
    attention.output_dense.kernel.assign(reader.get(f"{name}.o.weight", (hidden, inner)).T)


def _set_t5_stack(half, reader, name, hidden, output_scale=1.0):
    """One stack (`encoder` / `decoder`) of a T5: the relative bias of block 0 (which every
    block uses), the blocks, the final norm (times `output_scale`)."""
    inner, ff = half.num_heads * half.head_dim, half.intermediate_dim
    half.relative_position_bias.embeddings.assign(reader.get(
        f"{name}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        (half.relative_num_buckets, half.num_heads)))
    for i, block in enumerate(half.blocks):
        pre = f"{name}.block.{i}.layer."
        _set_t5_attention(block.attention, reader, pre + "0.SelfAttention", hidden, inner)
        block.attention_norm.scale.assign(reader.get(pre + "0.layer_norm.weight", (hidden,)))
        if half.cross_attention:
            _set_t5_attention(block.cross_attention, reader, pre + "1.EncDecAttention", hidden,
                              inner)
            block.cross_attention_norm.scale.assign(
                reader.get(pre + "1.layer_norm.weight", (hidden,)))
        ffn = pre + ("2." if half.cross_attention else "1.")
        wi = ("wi_0", "wi_1") if half.activation == "geglu" else ("wi",)  # [gate | up]
        block.feed_forward.intermediate_dense.kernel.assign(np.concatenate(
            [reader.get(f"{ffn}DenseReluDense.{n}.weight", (ff, hidden)).T for n in wi], 1))
        block.feed_forward.output_dense.kernel.assign(
            reader.get(ffn + "DenseReluDense.wo.weight", (hidden, ff)).T)
        block.feed_forward_norm.scale.assign(reader.get(ffn + "layer_norm.weight", (hidden,)))
    half.final_norm_layer.scale.assign(
        reader.get(f"{name}.final_layer_norm.weight", (hidden,)) * output_scale)


def load_t5(hf_config, params, source="T5 checkpoint", dtype=None, used=None):
    """A `Seq2SeqBackbone` with a Hugging Face T5's weights (`T5ForConditionalGeneration`:
    T5, T5 v1.1, flan-t5; its `lm_head.weight` is read when not tied).

    Two of T5's constant factors are folded into weights, so the model computes T5's
    logits with tflm's layers: T5's unscaled attention logits (the queries are scaled by
    sqrt(d_kv)), and, with the tied output projection, T5's `d_model ** -0.5` on the
    decoder output (the decoder's final norm is scaled by it; so its
    `decoder_sequence_output` is T5's times that factor).

    `used`, a set, receives the names of the tensors that were read.
    """
    kwargs = t5_backbone_kwargs(hf_config)
    backbone = Seq2SeqBackbone(**kwargs, dtype=dtype)
    reader = _Reader(params, source)
    h = backbone.hidden_dim
    backbone.token_embedding.embeddings.assign(
        reader.get("shared.weight", (backbone.vocabulary_size, h)))
    for half in ("encoder", "decoder"):
        _check_tied(reader, f"{half}.embed_tokens.weight", "shared.weight")
    _set_t5_stack(backbone.encoder, reader, "encoder", h)
    if kwargs["tie_embeddings"]:
        _set_t5_stack(backbone.decoder, reader, "decoder", h, output_scale=h ** -0.5)
        _check_tied(reader, "lm_head.weight", "shared.weight")
    else:
        _set_t5_stack(backbone.decoder, reader, "decoder", h)
        backbone.token_embedding.reverse_embeddings.assign(
            reader.get("lm_head.weight", (backbone.vocabulary_size, h)).T)
    if used is not None:
        used.update(reader.used)
    return backbone


# The Llama family: one layout (RMS norm, rotate_half RoPE, grouped-query attention, SwiGLU);
# Qwen2 adds query/key/value biases, Mistral a sliding window.
LLAMA_KINDS = ("llama", "mistral", "qwen2")
# Config keys of mixture-of-experts variants (Mixtral, Qwen2-MoE), which tflm does not build.
_MOE_KEYS = ("num_local_experts", "num_experts", "num_experts_per_tok", "moe_intermediate_size")


def llama_backbone_kwargs(hf_config, kind="llama"):
    """`TransformerBackbone` arguments that express a Hugging Face Llama, Mistral or Qwen2
    config; what tflm's layers do not compute is refused, naming the config key."""
    def refuse(key, why):
        raise CheckpointError(f"config.json: {key}={hf_config[key]!r}: {why}")

    if hf_config.get("rope_scaling") is not None:
        refuse("rope_scaling", "tflm's rotary positions have no scaling (linear, dynamic, yarn, "
                               "llama3); only plain RoPE (rope_scaling null) imports.")
    for key in ("attention_bias", "mlp_bias"):
        if hf_config.get(key):
            refuse(key, "tflm's Llama-family blocks have no output-projection or MLP biases "
                        "(only Qwen2's query/key/value biases).")
    for key in _MOE_KEYS:
        if hf_config.get(key):
            refuse(key, "mixture-of-experts models are not supported.")
    if hf_config.get("hidden_act", "silu") != "silu":
        refuse("hidden_act", "only 'silu' (SwiGLU) is supported.")
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "vocab_size"):
        if key not in hf_config:
            raise CheckpointError(f"config.json: no {key!r}, which a {kind} config has.")
    layers = hf_config["num_hidden_layers"]
    window = 0
    if kind == "mistral":
        window = hf_config.get("sliding_window") or 0
    elif kind == "qwen2" and hf_config.get("use_sliding_window"):
        # Qwen2 windows only the layers from max_window_layers up (newer configs spell it out
        # as layer_types); tflm's window applies to every layer or none.
        first = hf_config.get("max_window_layers", layers)
        types = hf_config.get("layer_types") or [
            "sliding_attention" if i >= first else "full_attention" for i in range(layers)]
        if len(set(types)) > 1:
            key = "layer_types" if "layer_types" in hf_config else "max_window_layers"
            refuse(key, "a sliding window on some layers only; tflm's window applies to every "
                        "layer.")
        if types[0] == "sliding_attention":
            window = hf_config.get("sliding_window") or 0
    return dict(
        vocabulary_size=hf_config["vocab_size"],
        num_layers=layers,
        num_heads=hf_config["num_attention_heads"],
        num_key_value_heads=hf_config.get("num_key_value_heads") or 0,
        hidden_dim=hf_config["hidden_size"],
        intermediate_dim=hf_config["intermediate_size"],
        head_dim=hf_config.get("head_dim") or None,
        max_sequence_length=hf_config.get("max_position_embeddings", 2048),
        causal=True,
        position_encoding="rotary",
        rope_theta=hf_config.get("rope_theta", 10000.0),
        rotary_layout="half",  # Hugging Face's rotate_half: its q/k weights need no permutation
        sliding_window=window,
        activation="swiglu",
        normalization="rms_norm",
        norm_first=True,
        norm_epsilon=hf_config.get("rms_norm_eps", 1e-6),
        final_norm=True,
        dropout=0.0,
        attention_dropout=hf_config.get("attention_dropout", 0.0),
        use_bias=False,
        qkv_bias=kind == "qwen2",
        tie_embeddings=bool(hf_config.get("tie_word_embeddings", False)),
        initializer_range=hf_config.get("initializer_range", 0.02),
    )


def load_llama(hf_config, params, source="Llama checkpoint", kind="llama", dtype=None,
               used=None):
    """A causal `TransformerBackbone` with a Hugging Face `LlamaForCausalLM`,
    `MistralForCausalLM` or `Qwen2ForCausalLM`'s weights (`kind`: "llama", "mistral",
    "qwen2"); `lm_head.weight` is read unless the embeddings are tied.

    `used`, a set, receives the names of the tensors that were read.
    """
    kwargs = llama_backbone_kwargs(hf_config, kind)
    params = _strip_prefix(params, ("model.",))
    backbone = TransformerBackbone(**kwargs, dtype=dtype)
    reader = _Reader(params, source)
    h, inter = backbone.hidden_dim, backbone.intermediate_dim
    q_width = backbone.num_heads * backbone.head_dim
    kv_width = backbone.num_key_value_heads * backbone.head_dim
    widths = {"q": q_width, "k": kv_width, "v": kv_width}
    backbone.token_embedding.embeddings.assign(
        reader.get("embed_tokens.weight", (backbone.vocabulary_size, h)))
    for i, block in enumerate(backbone.blocks):
        pre = f"layers.{i}."
        attention = block.attention
        # The fused kernel is [Q | K | V] of widths H·d, K·d, K·d.
        attention.qkv_dense.kernel.assign(np.concatenate(
            [reader.get(f"{pre}self_attn.{n}_proj.weight", (widths[n], h)).T for n in "qkv"], 1))
        if kwargs["qkv_bias"]:
            attention.qkv_dense.bias.assign(np.concatenate(
                [reader.get(f"{pre}self_attn.{n}_proj.bias", (widths[n],)) for n in "qkv"]))
        attention.output_dense.kernel.assign(
            reader.get(pre + "self_attn.o_proj.weight", (h, q_width)).T)
        block.attention_norm.scale.assign(reader.get(pre + "input_layernorm.weight", (h,)))
        block.feed_forward.intermediate_dense.kernel.assign(np.concatenate(  # [gate | up]
            [reader.get(f"{pre}mlp.{n}_proj.weight", (inter, h)).T for n in ("gate", "up")], 1))
        block.feed_forward.output_dense.kernel.assign(
            reader.get(pre + "mlp.down_proj.weight", (h, inter)).T)
        block.feed_forward_norm.scale.assign(
            reader.get(pre + "post_attention_layernorm.weight", (h,)))
    backbone.final_norm_layer.scale.assign(reader.get("norm.weight", (h,)))
    if kwargs["tie_embeddings"]:
        _check_tied(reader, "lm_head.weight", "embed_tokens.weight")
    else:
        backbone.token_embedding.reverse_embeddings.assign(
            reader.get("lm_head.weight", (backbone.vocabulary_size, h)).T)
    if used is not None:
        used.update(reader.used)
    return backbone


# -- Checkpoint folders. ----------------------------------------------------------------------
CONFIG_FILE = "config.json"
KINDS = ("bert", "gpt2", "bart", "t5") + LLAMA_KINDS
# The `architectures` names of each kind (when config.json has no model_type).
_ARCHITECTURE_PREFIXES = {"bert": "Bert", "gpt2": "GPT2", "bart": "Bart", "t5": "T5",
                          "llama": "LlamaFor", "mistral": "MistralFor", "qwen2": "Qwen2For"}
# The model-class prefixes of the kinds' tensor names.
_PREFIXES = ("bert.", "transformer.", "model.")
# Buffers that old `transformers` versions saved next to the weights; not parameters.
_BUFFERS = ("embeddings.position_ids", ".attn.bias", ".attn.masked_bias",
            ".rotary_emb.inv_freq")
# A tensor that only one of the architectures has: names the other in errors.
_MARKERS = {"bert": "encoder.layer.0.attention.self.query.weight", "gpt2": "h.0.attn.c_attn.weight",
            "bart": "encoder.layers.0.self_attn.q_proj.weight",
            "t5": "encoder.block.0.layer.0.SelfAttention.q.weight",
            "llama": "layers.0.mlp.gate_proj.weight"}
# BART's special tokens (fairseq's dictionary: <s>=0, <pad>=1, </s>=2, <unk>=3, and <mask>).
BART_SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
# T5's SentencePiece model (its pieces <pad>=0, </s>=1, <unk>=2; it normalizes text itself).
T5_SPIECE_FILE = "spiece.model"
# The SentencePiece model of Llama (1, 2) and Mistral checkpoints.
LLAMA_SPIECE_FILE = "tokenizer.model"
# Hugging Face `tokenizers`' file: Llama 3's and Qwen2's byte-level BPE.
HF_TOKENIZER_FILE = "tokenizer.json"
# The `Split` regexes of tokenizer.json byte-level BPEs, by tflm's pre_tokenizer name.
BYTE_LEVEL_SPLITS = {
    "llama3": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}"
              r"\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "qwen2": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
             r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
}


@dataclasses.dataclass
class ImportedCheckpoint:
    """What `load_huggingface` read.

    Attributes:
        model: `MaskedLM` (BERT), `CausalLM` (GPT-2, Llama family) or `Seq2SeqLM` (BART,
            T5) with the checkpoint's weights.
        tokenizer: the tflm tokenizer built from the checkpoint's vocabulary files.
        kind: "bert", "gpt2", "bart", "t5", "llama", "mistral" or "qwen2".
        head_loaded: whether the task head came from the checkpoint (BERT's masked-LM
            head; the output projection of the others, the tied embedding or the
            `lm_head` of T5 v1.1 and untied Llama-family models, is always loaded).
        unused_tensors: tensors of the checkpoint that are not part of the model
            (e.g. a `BertForSequenceClassification` classifier, or NSP weights).
    """

    model: object
    tokenizer: object
    kind: str
    head_loaded: bool
    unused_tensors: list


def checkpoint_kind(hf_config, source=CONFIG_FILE):
    """One of `KINDS` from `model_type` (or `architectures`); else a
    `CheckpointError`."""
    model_type = hf_config.get("model_type")
    if model_type in KINDS:
        return model_type
    for architecture in hf_config.get("architectures") or []:
        for kind, prefix in _ARCHITECTURE_PREFIXES.items():
            if str(architecture).startswith(prefix):
                return kind
    raise CheckpointError(f"{source}: model_type={model_type!r}; tflm imports "
                          f"{', '.join(KINDS)} checkpoints.")


def read_huggingface(directory):
    """`(hf_config, kind, tensors)` of a Hugging Face checkpoint folder."""
    if not os.path.isdir(directory):
        raise MissingFileError(f"Checkpoint folder {directory!r} does not exist.")
    config_path = os.path.join(directory, CONFIG_FILE)
    if not os.path.exists(config_path):
        raise MissingFileError(f"{directory}: no {CONFIG_FILE}; not a Hugging Face checkpoint.")
    hf_config = _read_json(config_path)
    if not isinstance(hf_config, dict):
        raise CheckpointError(f"{config_path}: expected a JSON object.")
    return hf_config, checkpoint_kind(hf_config, config_path), read_checkpoint_weights(directory)


def _read_json(path):
    try:
        return read_json_file(path, "checkpoint file")
    except ValueError as e:  # not UTF-8 or not JSON
        raise CheckpointError(str(e)) from None


def _read_json_if_present(path):
    return _read_json(path) if os.path.exists(path) else {}


def bert_tokenizer_options(directory):
    """`WordPieceTokenizer` options that reproduce the checkpoint's BERT tokenizer.

    From `tokenizer.json`'s `BertNormalizer` when present (the fast tokenizer
    `transformers` uses), else `tokenizer_config.json`; Hugging Face's BERT
    tokenizer applies no NFKC, unless `tokenizer.json` puts an NFKC normalizer before it
    (as tflm's export does for a tokenizer with `nfkc`).
    """
    normalizer = _read_json_if_present(os.path.join(directory, "tokenizer.json")).get("normalizer")
    nfkc = False
    if isinstance(normalizer, dict) and normalizer.get("type") == "Sequence" and [
            n.get("type") for n in normalizer.get("normalizers", [])] == ["NFKC", "BertNormalizer"]:
        # NFKC, then BERT's normalizer: what tflm's own WordPiece tokenizers apply (its export).
        nfkc, normalizer = True, normalizer["normalizers"][1]
    if isinstance(normalizer, dict) and normalizer.get("type") == "BertNormalizer":
        lowercase = bool(normalizer.get("lowercase", True))
        split_cjk = bool(normalizer.get("handle_chinese_chars", True))
        strip_accents = normalizer.get("strip_accents")
    else:
        config = _read_json_if_present(os.path.join(directory, "tokenizer_config.json"))
        lowercase = bool(config.get("do_lower_case", True))
        split_cjk = bool(config.get("tokenize_chinese_chars", True))
        strip_accents = config.get("strip_accents")
    return dict(lowercase=lowercase, nfkc=nfkc, split_cjk=split_cjk,
                strip_accents=None if strip_accents is None else bool(strip_accents))


def _llama_tokenizer(directory, kind):
    """The tokenizer of a Llama-family folder: its SentencePiece `tokenizer.model` (Llama 1/2,
    Mistral), which the library segments as Hugging Face's slow `LlamaTokenizer` does, else
    the byte-level BPE of its `tokenizer.json` (Llama 3, Qwen2). Its `start_token` is the
    <s> / <|begin_of_text|> that Hugging Face's tokenizer puts before a text
    (`llama_start_token`), so that tflm's rows and prompts begin as the model was trained."""
    path = os.path.join(directory, LLAMA_SPIECE_FILE)
    try:
        if os.path.exists(path):
            return SentencePieceTokenizer(path, nfkc=False, clean_whitespace=False,
                                          start_token=llama_start_token(directory, "<s>"))
        path = os.path.join(directory, HF_TOKENIZER_FILE)
        if os.path.exists(path):
            return byte_level_bpe_of_tokenizer_json(
                path, start_token=llama_start_token(directory, None))
    except ValueError as e:  # a start token that is not one of the special tokens
        if isinstance(e, TflmError):
            raise
        raise CheckpointError(f"{path}: {e}") from None
    raise MissingFileError(f"{directory}: neither {LLAMA_SPIECE_FILE} nor {HF_TOKENIZER_FILE} "
                           f"(the {kind} vocabulary).")


def llama_start_token(directory, default):
    """The token Hugging Face's tokenizer of a Llama-family folder puts before every text
    (`tokenizer(text).input_ids`), or None: `tokenizer_config.json`'s `add_bos_token` (with
    its `bos_token`) where it says, else the `TemplateProcessing` of `tokenizer.json`'s
    `post_processor` (Llama 3's <|begin_of_text|>; Qwen2 has none), else `default`
    (`LlamaTokenizer`'s: <s>). A token added after the text (`add_eos_token`) is refused:
    tflm's rows end with end-of-text only between documents."""
    config_path = os.path.join(directory, "tokenizer_config.json")
    config = _read_json_if_present(config_path)
    if config.get("add_eos_token"):
        raise CheckpointError(f"{config_path}: add_eos_token=true: tflm does not end every "
                              "text with </s>.")
    if "add_bos_token" in config:
        if not config["add_bos_token"]:
            return None
        token = config.get("bos_token", "<s>")
        return token.get("content") if isinstance(token, dict) else token
    json_path = os.path.join(directory, HF_TOKENIZER_FILE)
    processor = _read_json_if_present(json_path).get("post_processor") or {}
    for step in processor.get("processors", []) if processor.get("type") == "Sequence" \
            else [processor]:
        if step.get("type") != "TemplateProcessing":
            continue
        single = step.get("single") or []
        special = [item["SpecialToken"]["id"] for item in single if "SpecialToken" in item]
        if [next(iter(item)) for item in single] != ["SpecialToken", "Sequence"][-len(single):]:
            raise CheckpointError(f"{json_path}: post_processor single="
                                  f"{json.dumps(single)[:200]}: tflm puts at most one token "
                                  "before a text and none after it.")
        return special[0] if special else None
    return default


def byte_level_bpe_of_tokenizer_json(path, start_token=None):
    """A `BytePairTokenizer` that reproduces a `tokenizer.json` byte-level BPE: GPT-2's split,
    or Llama 3's or Qwen2's `Split` regex before a regex-free `ByteLevel`; no normalizer or
    NFC. Anything else is a `CheckpointError` naming the field: never approximate ids.
    `start_token`: the tokenizer's (`Tokenizer.start_token`), one of its special tokens."""
    spec = _read_json(path)

    def refuse(field, value, why):
        raise CheckpointError(f"{path}: {field}={json.dumps(value)[:200]}: {why}")

    model = spec.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or model.get(
            "continuing_subword_prefix") or model.get("end_of_word_suffix"):
        refuse("model", {k: model.get(k) for k in ("type", "byte_fallback",
                                                    "continuing_subword_prefix")},
               "tflm reads a byte-level BPE (no byte fallback, no subword affixes).")
    normalizer = spec.get("normalizer")
    if normalizer not in (None, {"type": "NFC"}):
        refuse("normalizer", normalizer, "tflm reproduces none or NFC.")
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    split = None
    if [step.get("type") for step in steps] == ["Split", "ByteLevel"] \
            and not steps[1].get("use_regex", True) and not steps[1].get("add_prefix_space") \
            and steps[0].get("behavior") == "Isolated" and not steps[0].get("invert"):
        split = {pattern: name for name, pattern in BYTE_LEVEL_SPLITS.items()}.get(
            (steps[0].get("pattern") or {}).get("Regex"))
    elif [step.get("type") for step in steps] == ["ByteLevel"] \
            and steps[0].get("use_regex", True) and not steps[0].get("add_prefix_space"):
        split = "gpt2"
    if split is None:
        refuse("pre_tokenizer", pre, "tflm splits words as GPT-2, Llama 3 or Qwen2 do.")
    vocabulary = dict(model.get("vocab") or {})
    special = []
    for token in spec.get("added_tokens") or []:
        vocabulary.setdefault(token["content"], token["id"])
        if token.get("special"):
            special.append(token["content"])
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
              for m in model.get("merges") or []]
    return BytePairTokenizer(vocabulary, merges, special_tokens=tuple(special),
                             nfc=normalizer is not None, pre_tokenizer=split,
                             ignore_merges=bool(model.get("ignore_merges")),
                             start_token=start_token)


def huggingface_tokenizer(directory, kind):
    """The tflm tokenizer of a checkpoint folder: WordPiece (BERT), byte-level BPE (GPT-2,
    BART: its special tokens are those of `BART_SPECIAL_TOKENS` in its vocabulary) or
    SentencePiece (T5's `spiece.model`)."""
    if kind == "t5":
        path = os.path.join(directory, T5_SPIECE_FILE)
        if not os.path.exists(path):
            raise MissingFileError(f"{directory}: no {T5_SPIECE_FILE} (the T5 vocabulary).")
        return SentencePieceTokenizer(path, nfkc=False)
    if kind in LLAMA_KINDS:
        return _llama_tokenizer(directory, kind)
    if kind == "bert":
        path = os.path.join(directory, WORDPIECE_VOCAB)
        if not os.path.exists(path):
            raise MissingFileError(f"{directory}: no {WORDPIECE_VOCAB} (the BERT vocabulary).")
        return WordPieceTokenizer(path, **bert_tokenizer_options(directory))
    for name in (VOCAB_FILE, MERGES_FILE):
        if not os.path.exists(os.path.join(directory, name)):
            raise MissingFileError(f"{directory}: no {name} (the {kind} vocabulary is "
                                    f"{VOCAB_FILE} + {MERGES_FILE}).")
    vocabulary, merges = os.path.join(directory, VOCAB_FILE), os.path.join(directory, MERGES_FILE)
    if kind == "bart":
        tokens = read_vocab_json(vocabulary)
        special = tuple(t for t in BART_SPECIAL_TOKENS if t in tokens)
        return BytePairTokenizer(vocabulary, merges, special_tokens=special)
    return BytePairTokenizer(vocabulary, merges)


def load_huggingface(directory, dtype=None):
    """Reads a Hugging Face BERT, GPT-2, BART, T5, Llama, Mistral or Qwen2 checkpoint folder;
    returns an
    `ImportedCheckpoint`.

    Raises:
        FileNotFoundError: the folder, config.json, weights or vocabulary files are missing.
        CheckpointError: an unsupported architecture, or a tensor missing, mis-shaped or
            of another architecture (named).
    """

    hf_config, kind, params = read_huggingface(directory)
    source = os.path.join(directory, WEIGHTS_FILE)
    if not os.path.exists(source):  # sharded: the index says where each tensor is
        source = os.path.join(directory, INDEX_FILE)
    used = set()
    try:
        if kind == "bert":
            backbone, head = load_bert(hf_config, params, source, dtype=dtype, used=used)
        elif kind == "gpt2":
            backbone, head = load_gpt2(hf_config, params, source, dtype=dtype, used=used), None
        elif kind == "bart":
            backbone, head = load_bart(hf_config, params, source, dtype=dtype, used=used), None
        elif kind == "t5":
            backbone, head = load_t5(hf_config, params, source, dtype=dtype, used=used), None
        else:
            backbone = load_llama(hf_config, params, source, kind=kind, dtype=dtype, used=used)
            head = None
    except CheckpointError as e:
        for other in _MARKERS:
            if other != kind and not (other == "llama" and kind in LLAMA_KINDS) \
                    and "is missing" in str(e) and any(
                    name.endswith(_MARKERS[other]) for name in params):
                raise CheckpointError(f"{e} config.json says {kind!r}, but the weights are those "
                                      f"of a {other!r} model ({_MARKERS[other]!r}).") from None
        raise
    tokenizer = huggingface_tokenizer(directory, kind)
    if tokenizer.vocabulary_size > backbone.vocabulary_size:
        raise CheckpointError(f"{directory}: the tokenizer has {tokenizer.vocabulary_size} ids, "
                              f"the embeddings only {backbone.vocabulary_size}.")
    if kind == "bert":
        model = MaskedLM(backbone,
                         next_sentence_prediction="next_sentence_kernel" in (head or {}))
        if head is not None:
            set_masked_lm_head(model, head)
    elif kind == "gpt2" or kind in LLAMA_KINDS:
        model = CausalLM(backbone)
    else:
        model = Seq2SeqLM(backbone)
    unused = sorted(
        name for name in params
        if not any(name.startswith(p) and name[len(p):] in used for p in _PREFIXES)
        and name not in used and not any(name.endswith(b) for b in _BUFFERS))
    return ImportedCheckpoint(model=model, tokenizer=tokenizer, kind=kind,
                              head_loaded=kind != "bert" or "output_bias" in (head or {}),
                              unused_tensors=unused)
