"""Hugging Face BERT and GPT-2 parameters → tflm backbones, exactly.

Takes a Hugging Face `config.json` as a dict and the checkpoint's tensors as
a dict of NumPy arrays (names as in `model.safetensors`), and builds a
`TransformerBackbone` that computes the same function. Every expected tensor
must be present with the expected shape; anything else is an error naming
the tensor.

torch `Linear` weights are `(out, in)` and are transposed; GPT-2 `Conv1D`
weights are already `(in, out)`. BERT's separate query/key/value become the
fused `[Q | K | V]` kernel of `MultiHeadAttention`; GPT-2's `c_attn` already
has that layout.
"""

import numpy as np

from tflm.models.backbone import TransformerBackbone


class CheckpointError(ValueError):
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


def bert_backbone_kwargs(hf_config):
    """`TransformerBackbone` arguments that express a Hugging Face BERT config."""
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
        pooler=True,
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


def load_bert(hf_config, params, source="BERT checkpoint", dtype=None):
    """A `TransformerBackbone` with a Hugging Face BERT's weights.

    Returns:
        `(backbone, head)`: `head` holds the masked-LM head tensors
        (`transform_kernel`, `transform_bias`, `norm_gamma`, `norm_beta`,
        `output_bias`) when the checkpoint has them (`BertForMaskedLM`), else `None`.
    """
    params = _strip_prefix(params, ("bert.",))
    backbone = TransformerBackbone(**bert_backbone_kwargs(hf_config), dtype=dtype)
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
    return backbone, head


def set_masked_lm_head(masked_lm, head):
    """Copies a `load_bert` head dict into a `MaskedLM` built on the loaded backbone."""
    masked_lm.head_dense.kernel.assign(head["transform_kernel"])
    masked_lm.head_dense.bias.assign(head["transform_bias"])
    masked_lm.head_norm.gamma.assign(head["norm_gamma"])
    masked_lm.head_norm.beta.assign(head["norm_beta"])
    masked_lm.head_bias.assign(head["output_bias"])


def load_gpt2(hf_config, params, source="GPT-2 checkpoint", dtype=None):
    """A causal `TransformerBackbone` with a Hugging Face GPT-2's weights (tied output)."""
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
    return backbone
