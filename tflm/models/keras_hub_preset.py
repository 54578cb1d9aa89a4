"""keras-hub preset folders → tflm models and tokenizers, exactly.

A preset folder is what keras-hub's `save_to_preset` writes: `config.json` (the backbone),
`model.weights.h5`, `metadata.json`, and, when saved from a task or with a tokenizer,
`task.json` (+ `task.weights.h5`), `tokenizer.json` and `assets/tokenizer/` (the vocabulary
files). keras-hub itself loads the folder (so its own weight layout is read by its own code);
the converter of the backbone's architecture copies the weights into a tflm
`TransformerBackbone` and builds the task model and the tflm tokenizer:

- `GPT2Backbone` (+ `GPT2CausalLM`) → `CausalLM` and the byte-level `BytePairTokenizer`;
- `BertBackbone` → `MaskedLM` with a fresh head, as a Hugging Face BERT without its head
  converts (`BertMaskedLM`'s head applies erf GELU where tflm's applies the backbone's
  tanh GELU; a `BertTextClassifier`'s head is left out as a Hugging Face classifier's is:
  fine-tuning starts its own), and the `WordPieceTokenizer`;
- `LlamaBackbone` / `MistralBackbone` (+ `LlamaCausalLM` / `MistralCausalLM`) → `CausalLM`
  (grouped-query attention, rotary positions, Mistral's sliding window; the tied or untied
  output projection) and the `SentencePieceTokenizer` of `vocabulary.spm`, which gives the
  text's ids without the `<s>` that keras-hub's preprocessor (not its tokenizer) prepends.

The tokenizers give keras-hub's ids, but for one choice of tflm's: `<|endoftext|>` written in
the text is tokenized as text (keras-hub, like `tokenizers`, matches it as the special id).

An architecture is one function, named in `CONVERTERS` under its backbone's class name.
keras-hub's `EinsumDense` projections hold per-head kernels, `(hidden, heads, head_dim)`
for queries, keys and values and `(heads, head_dim, hidden)` for the output; flattened, they
are the columns (rows) of tflm's fused `[Q | K | V]` and output kernels, head-major alike
(with grouped-query attention too: keras-hub repeats each key/value head for its group of
query heads, as tflm does).
"""

import dataclasses
import json
import os

import keras
import numpy as np

from tflm.data.byte_pair import BytePairTokenizer
from tflm.data.sentencepiece_tokenizer import SentencePieceTokenizer
from tflm.data.wordpiece import WordPieceTokenizer
from tflm.errors import MissingFileError
from tflm.models.backbone import TransformerBackbone
from tflm.models.causal_lm import CausalLM
from tflm.models.huggingface import (
    CheckpointError,
    ImportedCheckpoint,
    bert_backbone_kwargs,
    gpt2_backbone_kwargs,
    llama_backbone_kwargs,
)
from tflm.models.masked_lm import MaskedLM

CONFIG_FILE = "config.json"
TASK_FILE = "task.json"
TOKENIZER_FILE = "tokenizer.json"
# Where keras-hub's tokenizers save their vocabulary files (`save_assets`).
TOKENIZER_ASSETS = os.path.join("assets", "tokenizer")
REGISTERED_PREFIX = "keras_hub>"


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not a JSON file: {e}") from None


def is_keras_hub_preset(directory):
    """A folder keras-hub's `save_to_preset` wrote: its config.json names a keras-hub class."""
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.exists(path):
        return False
    config = _read_json(path)
    return isinstance(config, dict) and str(config.get("registered_name", "")).startswith(
        REGISTERED_PREFIX)


@dataclasses.dataclass
class Preset:
    """A preset folder loaded by keras-hub, as a converter sees it.

    Attributes:
        directory: the folder.
        backbone: the keras-hub backbone with the preset's weights.
        task: the keras-hub task (`task.json`) with its weights, or None.
        tokenizer_config: the `config` of `tokenizer.json`, or None.
    """

    directory: str
    backbone: object
    task: object
    tokenizer_config: dict

    def refuse(self, file, key, value, why):
        raise CheckpointError(f"{os.path.join(self.directory, file)}: {key}={value!r}: {why}")

    def asset(self, name):
        """The path of a vocabulary file in `assets/tokenizer/`; an error naming it if absent."""
        path = os.path.join(self.directory, TOKENIZER_ASSETS, name)
        if not os.path.exists(path):
            raise MissingFileError(f"{self.directory}: no {os.path.join(TOKENIZER_ASSETS, name)} "
                                   "(the tokenizer's vocabulary).")
        return path

    def refuse_tokenizer_options(self, supported, tokenizer):
        """`supported`: `{tokenizer.json config key: the one value tflm's tokenizer has}`."""
        for key, value in supported.items():
            if self.tokenizer_config.get(key, value) != value:
                self.refuse(TOKENIZER_FILE, key, self.tokenizer_config[key],
                            f"tflm's {tokenizer} supports {key}={value!r} only.")


def _numpy(variable):
    return np.asarray(variable.numpy() if hasattr(variable, "numpy") else variable, np.float32)


def _copy_norm(norm, source):
    norm.gamma.assign(_numpy(source.gamma))
    norm.beta.assign(_numpy(source.beta))


def _copy_dense(dense, source):
    dense.kernel.assign(_numpy(source.kernel))
    dense.bias.assign(_numpy(source.bias))


def _copy_attention(attention, source):
    """A keras `MultiHeadAttention`'s (or keras-hub Llama's) per-head query/key/value/output
    into tflm's fused one; the biases when the projections have them."""
    hidden = attention.qkv_dense.kernel.shape[0]
    parts = (source._query_dense, source._key_dense, source._value_dense)
    attention.qkv_dense.kernel.assign(
        np.concatenate([_numpy(p.kernel).reshape(hidden, -1) for p in parts], axis=1))
    attention.output_dense.kernel.assign(_numpy(source._output_dense.kernel).reshape(-1, hidden))
    if attention.qkv_dense.bias is not None:
        attention.qkv_dense.bias.assign(
            np.concatenate([_numpy(p.bias).reshape(-1) for p in parts]))
        attention.output_dense.bias.assign(_numpy(source._output_dense.bias))


def _copy_blocks(backbone, source):
    """keras-hub `TransformerEncoder` / `TransformerDecoder` layers (no cross-attention) into
    tflm blocks; both place their norms as tflm's blocks of the same `norm_first` do."""
    for block, layer in zip(backbone.blocks, source.transformer_layers, strict=True):
        _copy_attention(block.attention, layer._self_attention_layer)
        _copy_norm(block.attention_norm, layer._self_attention_layer_norm)
        _copy_dense(block.feed_forward.intermediate_dense, layer._feedforward_intermediate_dense)
        _copy_dense(block.feed_forward.output_dense, layer._feedforward_output_dense)
        _copy_norm(block.feed_forward_norm, layer._feedforward_layer_norm)


def _copy_embeddings(backbone, source):
    backbone.token_embedding.embeddings.assign(_numpy(source.token_embedding.embeddings))
    backbone.position_embedding.position_embeddings.assign(
        _numpy(source.position_embedding.position_embeddings))


def convert_gpt2(preset, dtype=None):
    """`GPT2Backbone` (alone or in a `GPT2CausalLM`) → `(CausalLM, BytePairTokenizer)`."""
    source = preset.backbone
    backbone = TransformerBackbone(**gpt2_backbone_kwargs({
        "vocab_size": source.vocabulary_size, "n_layer": source.num_layers,
        "n_head": source.num_heads, "n_embd": source.hidden_dim,
        "n_inner": source.intermediate_dim, "n_positions": source.max_sequence_length,
        "resid_pdrop": source.dropout, "attn_pdrop": source.dropout,
    }), dtype=dtype)
    _copy_embeddings(backbone, source)
    _copy_blocks(backbone, source)
    _copy_norm(backbone.final_norm_layer, source.layer_norm)
    tokenizer = None
    if preset.tokenizer_config is not None:
        if preset.tokenizer_config.get("add_prefix_space"):
            preset.refuse(TOKENIZER_FILE, "add_prefix_space", True,
                          "tflm's GPT-2 tokenizer adds no prefix space.")
        tokenizer = BytePairTokenizer(preset.asset("vocabulary.json"), preset.asset("merges.txt"))
    # GPT2CausalLM's output projection is the tied token embedding: nothing else to copy.
    return CausalLM(backbone), tokenizer, True


def convert_bert(preset, dtype=None):
    """`BertBackbone` (alone or in any task: `BertMaskedLM`, `BertTextClassifier`) →
    `(MaskedLM, WordPieceTokenizer)`; the task's head is not converted."""
    source = preset.backbone
    kwargs = bert_backbone_kwargs({
        "vocab_size": source.vocabulary_size, "num_hidden_layers": source.num_layers,
        "num_attention_heads": source.num_heads, "hidden_size": source.hidden_dim,
        "intermediate_size": source.intermediate_dim,
        "max_position_embeddings": source.max_sequence_length,
        "type_vocab_size": source.num_segments, "hidden_dropout_prob": source.dropout,
        "attention_probs_dropout_prob": source.dropout,
    })
    # keras-hub's BERT layers use the tanh GELU (`gelu_approximate`), not BERT's erf GELU.
    kwargs["activation"] = "gelu_tanh"
    backbone = TransformerBackbone(**kwargs, dtype=dtype)
    _copy_embeddings(backbone, source)
    backbone.segment_embedding.embeddings.assign(_numpy(source.segment_embedding.embeddings))
    _copy_norm(backbone.embedding_norm_layer, source.embeddings_layer_norm)
    _copy_blocks(backbone, source)
    _copy_dense(backbone.pooler_dense, source.pooled_dense)

    # tflm's MaskedLM head cannot take BertMaskedLM's (see above), and a classifier's head is
    # not part of a model_dir's model (fine-tuning starts its own): both are left out.
    model = MaskedLM(backbone)

    tokenizer = None
    if preset.tokenizer_config is not None:
        config = preset.tokenizer_config
        preset.refuse_tokenizer_options(
            {"split": True, "special_tokens_in_strings": False, "special_tokens": None},
            "WordPiece tokenizer")
        tokenizer = WordPieceTokenizer(
            preset.asset("vocabulary.txt"), lowercase=bool(config.get("lowercase", False)),
            nfkc=False, split_cjk=bool(config.get("split_on_cjk", True)),
            strip_accents=bool(config.get("strip_accents", False)),
            suffix_indicator=config.get("suffix_indicator", "##"),
            unknown_token=config.get("oov_token", "[UNK]"))
    return model, tokenizer, False


def convert_llama(preset, dtype=None):
    """`LlamaBackbone` or `MistralBackbone` (alone or in its `CausalLM` task) →
    `(CausalLM, SentencePieceTokenizer)`.

    keras-hub's Llama has no length limit (rotary positions), so the tflm config's
    `max_sequence_length` is the Hugging Face import's default; the rotary scalings of
    Llama 3.1 and Mistral's `rope_scaling_factor` are refused, naming the config key."""
    source = preset.backbone
    mistral = type(source).__name__ == "MistralBackbone"
    defaults = ({"rope_scaling_factor": 1.0} if mistral else {
        "rope_position_scaling_factor": 1.0, "rope_frequency_adjustment_factor": None,
        "rope_low_freq_factor": None, "rope_high_freq_factor": None,
        "rope_pretraining_sequence_length": None})
    for key, plain in defaults.items():
        if getattr(source, key) != plain:
            preset.refuse(CONFIG_FILE, key, getattr(source, key),
                          "tflm's rotary positions have no scaling; only plain RoPE converts.")
    tied = bool(source.token_embedding.tie_weights)
    # The keras-hub names, as Hugging Face's config spells them: one mapping, and its checks.
    backbone = TransformerBackbone(**llama_backbone_kwargs({
        "vocab_size": source.vocabulary_size, "num_hidden_layers": source.num_layers,
        "num_attention_heads": source.num_query_heads,
        "num_key_value_heads": source.num_key_value_heads, "hidden_size": source.hidden_dim,
        "intermediate_size": source.intermediate_dim,
        "head_dim": getattr(source, "head_dim", None),
        "rope_theta": float(source.rope_max_wavelength),
        "rms_norm_eps": source.layer_norm_epsilon, "attention_dropout": source.dropout,
        "sliding_window": getattr(source, "sliding_window", None), "tie_word_embeddings": tied,
    }, "mistral" if mistral else "llama"), dtype=dtype)

    backbone.token_embedding.embeddings.assign(_numpy(source.token_embedding.embeddings))
    if not tied:
        backbone.token_embedding.reverse_embeddings.assign(
            _numpy(source.token_embedding.reverse_embeddings))
    for block, layer in zip(backbone.blocks, source.transformer_layers, strict=True):
        _copy_attention(block.attention, layer._self_attention_layer)
        block.attention_norm.scale.assign(_numpy(layer._self_attention_layernorm.scale))
        # tflm's SwiGLU kernel is [gate | up]; keras-hub's "intermediate" dense is the up one.
        block.feed_forward.intermediate_dense.kernel.assign(np.concatenate(
            [_numpy(layer._feedforward_gate_dense.kernel),
             _numpy(layer._feedforward_intermediate_dense.kernel)], axis=1))
        block.feed_forward.output_dense.kernel.assign(
            _numpy(layer._feedforward_output_dense.kernel))
        block.feed_forward_norm.scale.assign(_numpy(layer._feedforward_layernorm.scale))
    backbone.final_norm_layer.scale.assign(_numpy(source.layer_norm.scale))

    tokenizer = None
    if preset.tokenizer_config is not None:
        # The start token is the preprocessor's to add (tflm's task adds its own).
        preset.refuse_tokenizer_options({"add_bos": False, "add_eos": False},
                                        "SentencePiece tokenizer")
        # keras-hub's CausalLMPreprocessor puts <s> before every text unless told not to
        # (`add_start_token`): the model was trained so, and tflm's rows and prompts follow.
        preprocessor = getattr(preset.task, "preprocessor", None)
        start_token = "<s>" if getattr(preprocessor, "add_start_token", True) else None
        # keras-hub gives SentencePiece the text as it is (the model's own normalizer only).
        tokenizer = SentencePieceTokenizer(preset.asset("vocabulary.spm"), nfkc=False,
                                           clean_whitespace=False, start_token=start_token)
    # The task's output projection is the backbone's reverse embedding: nothing else to copy.
    return CausalLM(backbone), tokenizer, True


# Backbone class name → (kind, converter). A converter takes `(preset, dtype)` and returns
# `(task model, tokenizer or None, head_loaded)`; adding an architecture is adding one here.
CONVERTERS = {"GPT2Backbone": ("gpt2", convert_gpt2), "BertBackbone": ("bert", convert_bert),
              "LlamaBackbone": ("llama", convert_llama),
              "MistralBackbone": ("mistral", convert_llama)}


def _registered_class(directory, file):
    config = _read_json(os.path.join(directory, file))
    name = config.get("registered_name") if isinstance(config, dict) else None
    if not name:
        raise CheckpointError(f"{os.path.join(directory, file)}: no 'registered_name'; not a "
                              "keras-hub preset file.")
    return name, config


def load_keras_hub(directory, dtype=None):
    """Reads a keras-hub preset folder; returns an `ImportedCheckpoint`.

    Raises:
        FileNotFoundError: the folder, config.json or the vocabulary files are missing.
        CheckpointError: an architecture tflm does not convert (named), or a tokenizer
            option it does not have (named).
    """
    if not os.path.isdir(directory) or not os.path.exists(os.path.join(directory, CONFIG_FILE)):
        raise MissingFileError(f"{directory}: no {CONFIG_FILE}; not a keras-hub preset folder.")
    name, _ = _registered_class(directory, CONFIG_FILE)
    class_name = name[len(REGISTERED_PREFIX):] if name.startswith(REGISTERED_PREFIX) else name
    if class_name not in CONVERTERS:
        raise CheckpointError(
            f"{os.path.join(directory, CONFIG_FILE)}: a keras-hub {class_name} preset; tflm "
            f"converts {', '.join(sorted(CONVERTERS))} presets.")

    import keras_hub  # registers keras-hub's classes for the lookups below

    task = None
    if os.path.exists(os.path.join(directory, TASK_FILE)):
        task_name, _ = _registered_class(directory, TASK_FILE)
        task = keras.saving.get_registered_object(task_name).from_preset(directory)
        backbone = task.backbone
    else:
        backbone = keras_hub.models.Backbone.from_preset(directory)
    tokenizer_config = None
    if os.path.exists(os.path.join(directory, TOKENIZER_FILE)):
        tokenizer_config = _read_json(os.path.join(directory, TOKENIZER_FILE)).get("config", {})
    preset = Preset(directory, backbone, task, tokenizer_config)
    kind, convert = CONVERTERS[class_name]
    model, tokenizer, head_loaded = convert(preset, dtype=dtype)
    if tokenizer is None:
        raise MissingFileError(f"{directory}: no {TOKENIZER_FILE}; save the preset with its "
                               "tokenizer (or from a task with a preprocessor).")
    if tokenizer.vocabulary_size > model.backbone.vocabulary_size:
        raise CheckpointError(f"{directory}: the tokenizer has {tokenizer.vocabulary_size} ids, "
                              f"the embeddings only {model.backbone.vocabulary_size}.")
    unused = []
    if task is not None and not head_loaded:  # what the task adds to the backbone
        backbone_weights = {id(w) for w in backbone.weights}
        unused = sorted(w.path for w in task.weights if id(w) not in backbone_weights)
    return ImportedCheckpoint(model=model, tokenizer=tokenizer, kind=kind,
                              head_loaded=head_loaded, unused_tensors=unused)
