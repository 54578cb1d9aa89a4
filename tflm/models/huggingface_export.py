"""tflm models → Hugging Face checkpoint folders (BERT, GPT-2, Llama, Mistral, Qwen2): the
inverse of `huggingface`.

`export_huggingface(model, tokenizer, output_dir, head)` writes the folder `transformers` and
tflm's own importer read: `config.json`, `model.safetensors` (float32) and the tokenizer
files (BERT: `vocab.txt`, `tokenizer_config.json` and `tokenizer.json`; GPT-2:
`vocab.json`, `merges.txt` and `tokenizer_config.json`; the Llama family: a SentencePiece
`tokenizer.model` (`LlamaTokenizer`) or a byte-level BPE `tokenizer.json`, with
`tokenizer_config.json`). `head` is the Hugging Face head the model is (`MASKED_LM_HEAD`,
...): the model's task declares it (`tflm.tasks.pretrained.export_model_to_huggingface`).

A Llama-shaped causal LM (RMS norm, SwiGLU, rotary positions in the rotate_half layout,
grouped-query attention, no biases) exports as Llama; with a sliding window as Mistral; with
query/key/value biases as Qwen2.

Each architecture is one `Architecture` entry of `ARCHITECTURES`: the Hugging Face config
that expresses a backbone, the tensors under Hugging Face's names, the tokenizer files.
What a model is must be exactly what the importer would rebuild from that config: the
backbone's config is compared, key by key, with the importer's own `*_backbone_kwargs` of
the written config (the rest with `TransformerBackbone`'s defaults), so the two directions
cannot drift and a model the architecture cannot express (rotary positions in a "GPT-2",
pre-LN BERT, an untied GPT-2 output, layer norm in a Llama) is an error naming the key; the
nearest architecture is named. The tokenizer is read back
with the importer's `huggingface_tokenizer` before the folder is published, and must be the
same tokenizer (same vocabulary, options and special tokens).

Example:
>>> export_huggingface(model, tokenizer, "hf/my-bert", MASKED_LM_HEAD)  # a BERT MaskedLM
>>> load_huggingface("hf/my-bert").model      # the same weights, bit for bit
"""

import dataclasses
import functools
import inspect
import json
import os
import shutil

import numpy as np

from tflm.data.byte_pair import END_OF_TEXT, BytePairTokenizer
from tflm.data.wordpiece import WordPieceTokenizer
from tflm.errors import OutputExistsError
from tflm.models.backbone import TransformerBackbone
from tflm.data.sentencepiece_tokenizer import SentencePieceTokenizer
from tflm.models.huggingface import (
    BYTE_LEVEL_SPLITS,
    CONFIG_FILE,
    HF_TOKENIZER_FILE,
    LLAMA_SPIECE_FILE,
    CheckpointError,
    bert_backbone_kwargs,
    gpt2_backbone_kwargs,
    huggingface_tokenizer,
    llama_backbone_kwargs,
)
from tflm.models.lora import has_lora
from tflm.models.safetensors_file import WEIGHTS_FILE, write_safetensors

TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
TOKENIZER_JSON_FILE = HF_TOKENIZER_FILE
# The Hugging Face heads a task model exports as (its task's `huggingface_head`): the ends
# of the model class names (`BertForMaskedLM`, `LlamaForCausalLM`, ...).
MASKED_LM_HEAD = "ForMaskedLM"
CAUSAL_LM_HEAD = "ForCausalLM"
SEQUENCE_CLASSIFICATION_HEAD = "ForSequenceClassification"
# Backbone config keys that are not architecture, or act only with a position encoding that
# the compared `position_encoding` already rules out.
_NOT_COMPARED = {"name", "trainable", "dtype"}
_REFUSED = "refused: "
_POSITION_KEYS = {"rotary": ("rotary_max_wavelength",),
                  "relative": ("relative_num_buckets", "relative_max_distance")}


class ExportError(CheckpointError):
    """A tflm model or tokenizer that the Hugging Face architecture cannot express."""


def _array(variable):
    return np.asarray(variable, dtype=np.float32)


def _norm(prefix, norm):
    return {prefix + ".weight": _array(norm.gamma), prefix + ".bias": _array(norm.beta)}


def _linear(prefix, dense):
    """A torch `Linear`: the weight is `(out, in)`, the transpose of a Keras kernel."""
    return {prefix + ".weight": _array(dense.kernel).T, prefix + ".bias": _array(dense.bias)}


def _conv1d(prefix, dense):
    """GPT-2's `Conv1D`: the weight is `(in, out)`, as a Keras kernel."""
    return {prefix + ".weight": _array(dense.kernel), prefix + ".bias": _array(dense.bias)}


# -- BERT. ------------------------------------------------------------------------------------
def bert_config(backbone, tokenizer):
    if backbone.num_segments < 1:
        raise ExportError("model.num_segments=0: Hugging Face BERT always has token type "
                          "embeddings (type_vocab_size >= 1).")
    return {
        "model_type": "bert",
        "vocab_size": backbone.vocabulary_size,
        "hidden_size": backbone.hidden_dim,
        "num_hidden_layers": backbone.num_layers,
        "num_attention_heads": backbone.num_heads,
        "intermediate_size": backbone.intermediate_dim,
        "max_position_embeddings": backbone.max_sequence_length,
        "type_vocab_size": backbone.num_segments,
        "hidden_act": backbone.activation,
        "layer_norm_eps": backbone.norm_epsilon,
        "hidden_dropout_prob": backbone.dropout,
        "attention_probs_dropout_prob": backbone.attention_dropout,
        "initializer_range": backbone.initializer_range,
        "position_embedding_type": "absolute",
        "pad_token_id": tokenizer.pad_id,
    }


def bert_tensors(backbone):
    """The backbone's tensors under `BertModel`'s names (no model-class prefix)."""
    h = backbone.hidden_dim
    tensors = {
        "embeddings.word_embeddings.weight": _array(backbone.token_embedding.embeddings),
        "embeddings.position_embeddings.weight":
            _array(backbone.position_embedding.position_embeddings),
        "embeddings.token_type_embeddings.weight": _array(backbone.segment_embedding.embeddings),
        **_norm("embeddings.LayerNorm", backbone.embedding_norm_layer),
    }
    for i, block in enumerate(backbone.blocks):
        pre = f"encoder.layer.{i}."
        # tflm's fused [Q | K | V] kernel is BERT's three Linear layers.
        qkv = block.attention.qkv_dense
        kernel, bias = _array(qkv.kernel), _array(qkv.bias)
        for j, name in enumerate(("query", "key", "value")):
            tensors[pre + f"attention.self.{name}.weight"] = kernel[:, j * h:(j + 1) * h].T
            tensors[pre + f"attention.self.{name}.bias"] = bias[j * h:(j + 1) * h]
        tensors.update(_linear(pre + "attention.output.dense", block.attention.output_dense))
        tensors.update(_norm(pre + "attention.output.LayerNorm", block.attention_norm))
        tensors.update(_linear(pre + "intermediate.dense", block.feed_forward.intermediate_dense))
        tensors.update(_linear(pre + "output.dense", block.feed_forward.output_dense))
        tensors.update(_norm(pre + "output.LayerNorm", block.feed_forward_norm))
    if backbone.pooler:
        tensors.update(_linear("pooler.dense", backbone.pooler_dense))
    return tensors


def bert_model_tensors(model, head):
    """`(architectures, tensors, extra config)` of a BERT task model: `BertForMaskedLM` (the
    decoder is the word embeddings, tied, so not saved), `BertForPreTraining` (with the
    next-sentence head) or `BertForSequenceClassification`."""
    tensors = {"bert." + k: v for k, v in bert_tensors(model.backbone).items()}
    if head == MASKED_LM_HEAD:
        tensors.update(_linear("cls.predictions.transform.dense", model.head_dense))
        tensors.update(_norm("cls.predictions.transform.LayerNorm", model.head_norm))
        tensors["cls.predictions.bias"] = _array(model.head_bias)
        if model.next_sentence_prediction:
            tensors.update(_linear("cls.seq_relationship", model.next_sentence_head))
            return "BertForPreTraining", tensors, {}
        return "BertForMaskedLM", tensors, {}
    if head == SEQUENCE_CLASSIFICATION_HEAD and model.pooling == "pooled":
        tensors.update(_linear("classifier", model.head))
        labels = list(model.label_names or [f"LABEL_{i}" for i in range(model.num_classes)])
        return "BertForSequenceClassification", tensors, {
            "id2label": {str(i): name for i, name in enumerate(labels)},
            "label2id": {name: i for i, name in enumerate(labels)},
            "problem_type": "single_label_classification",
            "classifier_dropout": model.dropout,
        }
    raise ExportError(f"{type(model).__name__}: BERT exports a MaskedLM or a SequenceClassifier "
                      "with pooling='pooled' (BertForSequenceClassification reads the pooler).")


def _bert_tokenizer_options(tokenizer):
    cleaner = tokenizer.cleaner
    return {"clean_text": True, "handle_chinese_chars": cleaner.split_cjk,
            "strip_accents": cleaner.strip_accents, "lowercase": cleaner.lowercase}


def write_bert_tokenizer(tokenizer, directory, hf_config):
    """`vocab.txt`, `tokenizer_config.json` (the slow `BertTokenizer`) and `tokenizer.json`
    (the fast tokenizer `AutoTokenizer` prefers; with tflm's NFKC before BERT's normalizer
    when the tokenizer applies it, which the slow tokenizer cannot express)."""
    if not isinstance(tokenizer, WordPieceTokenizer):
        raise ExportError(f"data.tokenizer={tokenizer.kind!r}: Hugging Face BERT reads a "
                          "WordPiece vocab.txt.")
    tokenizer._save_vocabulary(directory)
    options = _bert_tokenizer_options(tokenizer)
    special = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
               "cls_token": "[CLS]", "mask_token": "[MASK]"}
    _write_json(os.path.join(directory, TOKENIZER_CONFIG_FILE), dict(
        tokenizer_class="BertTokenizer", do_lower_case=options["lowercase"],
        tokenize_chinese_chars=options["handle_chinese_chars"],
        strip_accents=options["strip_accents"],
        model_max_length=hf_config["max_position_embeddings"], **special))
    normalizer = dict(type="BertNormalizer", **options)
    if tokenizer.cleaner.nfkc:
        normalizer = {"type": "Sequence", "normalizers": [{"type": "NFKC"}, normalizer]}
    ids = {t: tokenizer.token_to_id(t) for t in ("[CLS]", "[SEP]")}

    def template(*parts):  # "[CLS] A [SEP]" and "[CLS] A [SEP] B [SEP]", as BERT's inputs
        pieces = [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}]
        for i, part in enumerate(parts):
            pieces += [{"Sequence": {"id": part, "type_id": i}},
                       {"SpecialToken": {"id": "[SEP]", "type_id": i}}]
        return pieces

    _write_json(os.path.join(directory, TOKENIZER_JSON_FILE), {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": tokenizer.token_to_id(t), "content": t, "single_word": False,
                          "lstrip": False, "rstrip": False, "normalized": False,
                          "special": True} for t in tokenizer.special_tokens],
        "normalizer": normalizer,
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {
            "type": "TemplateProcessing", "single": template("A"), "pair": template("A", "B"),
            "special_tokens": {t: {"id": t, "ids": [i], "tokens": [t]} for t, i in ids.items()}},
        "decoder": {"type": "WordPiece", "prefix": tokenizer.suffix_indicator, "cleanup": True},
        "model": {"type": "WordPiece", "unk_token": tokenizer.unknown_token,
                  "continuing_subword_prefix": tokenizer.suffix_indicator,
                  "max_input_chars_per_word": tokenizer.max_chars_per_word,
                  "vocab": {t: i for i, t in enumerate(tokenizer.get_vocabulary())}},
    })


# -- GPT-2. -----------------------------------------------------------------------------------
def gpt2_config(backbone, tokenizer):
    h = backbone.hidden_dim
    end_of_text = _token_id(tokenizer, END_OF_TEXT)
    return {
        "model_type": "gpt2",
        "vocab_size": backbone.vocabulary_size,
        "n_embd": h,
        "n_layer": backbone.num_layers,
        "n_head": backbone.num_heads,
        "n_inner": None if backbone.intermediate_dim == 4 * h else backbone.intermediate_dim,
        "n_positions": backbone.max_sequence_length,
        "activation_function": "gelu_new" if backbone.activation == "gelu_tanh"
                               else backbone.activation,
        "layer_norm_epsilon": backbone.norm_epsilon,
        "resid_pdrop": backbone.dropout,
        "embd_pdrop": backbone.dropout,
        "attn_pdrop": backbone.attention_dropout,
        "initializer_range": backbone.initializer_range,
        "tie_word_embeddings": backbone.tie_embeddings,
        "bos_token_id": end_of_text,
        "eos_token_id": end_of_text,
    }


def gpt2_model_tensors(model, head):
    """`(architectures, tensors, extra config)` of a `CausalLM`: `GPT2LMHeadModel`, whose
    `lm_head` is the token embedding (tied, so not saved)."""
    if head != CAUSAL_LM_HEAD:
        raise ExportError(f"{type(model).__name__}: GPT-2 exports a CausalLM.")
    backbone = model.backbone
    tensors = {"wte.weight": _array(backbone.token_embedding.embeddings),
               "wpe.weight": _array(backbone.position_embedding.position_embeddings)}
    for i, block in enumerate(backbone.blocks):
        pre = f"h.{i}."
        tensors.update(_norm(pre + "ln_1", block.attention_norm))
        tensors.update(_conv1d(pre + "attn.c_attn", block.attention.qkv_dense))
        tensors.update(_conv1d(pre + "attn.c_proj", block.attention.output_dense))
        tensors.update(_norm(pre + "ln_2", block.feed_forward_norm))
        tensors.update(_conv1d(pre + "mlp.c_fc", block.feed_forward.intermediate_dense))
        tensors.update(_conv1d(pre + "mlp.c_proj", block.feed_forward.output_dense))
    tensors.update(_norm("ln_f", backbone.final_norm_layer))
    return "GPT2LMHeadModel", {"transformer." + k: v for k, v in tensors.items()}, {}


def write_gpt2_tokenizer(tokenizer, directory, hf_config):
    """`vocab.json` + `merges.txt` and a `tokenizer_config.json` for `GPT2Tokenizer`."""
    if not isinstance(tokenizer, BytePairTokenizer):
        raise ExportError(f"data.tokenizer={tokenizer.kind!r}: Hugging Face GPT-2 reads a "
                          "byte-level BPE vocab.json + merges.txt.")
    tokenizer._save_vocabulary(directory)
    special = {}
    if hf_config["eos_token_id"] is not None:
        special = {k: END_OF_TEXT for k in ("bos_token", "eos_token", "unk_token")}
    _write_json(os.path.join(directory, TOKENIZER_CONFIG_FILE), dict(
        tokenizer_class="GPT2Tokenizer", add_prefix_space=False,
        model_max_length=hf_config["n_positions"], **special))


# -- The Llama family: Llama, Mistral (a sliding window), Qwen2 (query/key/value biases). -----
LLAMA_CLASSES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                 "qwen2": "Qwen2ForCausalLM"}
# The begin and end of text, by the names of Llama 1/2 and Mistral (SentencePiece), Llama 3,
# and GPT-2 and Qwen2 (whose <|endoftext|> is both).
_BOS_TOKENS = ("<s>", "<|begin_of_text|>", END_OF_TEXT)
_EOS_TOKENS = ("</s>", "<|end_of_text|>", END_OF_TEXT)


def _first_token_id(tokenizer, tokens):
    return next((i for i in (_token_id(tokenizer, t) for t in tokens) if i is not None), None)


def llama_config(kind, backbone, tokenizer):
    """The `LlamaConfig`, `MistralConfig` or `Qwen2Config` (`kind`) of `backbone`. The
    activation is always SwiGLU ("silu") and the rotary layout rotate_half: a backbone with
    others differs from what the config expresses, and is named by the comparison."""
    config = {
        "model_type": kind,
        "vocab_size": backbone.vocabulary_size,
        "hidden_size": backbone.hidden_dim,
        "intermediate_size": backbone.intermediate_dim,
        "num_hidden_layers": backbone.num_layers,
        "num_attention_heads": backbone.num_heads,
        "num_key_value_heads": backbone.num_key_value_heads,
        "max_position_embeddings": backbone.max_sequence_length,
        "hidden_act": "silu",
        "rms_norm_eps": backbone.norm_epsilon,
        "rope_theta": backbone.rope_theta,
        "rope_scaling": None,
        "attention_dropout": backbone.attention_dropout,
        "initializer_range": backbone.initializer_range,
        "tie_word_embeddings": backbone.tie_embeddings,
        "bos_token_id": _first_token_id(tokenizer, _BOS_TOKENS),
        "eos_token_id": _first_token_id(tokenizer, _EOS_TOKENS),
    }
    if backbone.get_config()["head_dim"]:  # heads narrower or wider than hidden_size / heads
        config["head_dim"] = backbone.head_dim
    window = backbone.sliding_window
    if kind == "llama":
        config.update(attention_bias=False, mlp_bias=False)
    elif kind == "mistral":
        config["sliding_window"] = window or None
    else:  # Qwen2 windows the layers from max_window_layers up: all of them, or none.
        config.update(use_sliding_window=bool(window), sliding_window=window or None,
                      max_window_layers=0 if window else backbone.num_layers)
    return config


def llama_model_tensors(kind, model, head):
    """`(architectures, tensors, extra config)` of a `CausalLM` as `<kind>ForCausalLM`: the
    fused [Q | K | V] kernel (widths H·d, K·d, K·d) split into q/k/v_proj, the [gate | up]
    SwiGLU kernel into gate_proj and up_proj, torch's `(out, in)` weights; `lm_head.weight`
    unless the embeddings are tied."""
    if head != CAUSAL_LM_HEAD:
        raise ExportError(f"{type(model).__name__}: {LLAMA_CLASSES[kind]} exports a CausalLM.")
    backbone = model.backbone
    q_width = backbone.num_heads * backbone.head_dim
    kv_width = backbone.num_key_value_heads * backbone.head_dim
    columns = {"q": (0, q_width), "k": (q_width, q_width + kv_width),
               "v": (q_width + kv_width, q_width + 2 * kv_width)}
    inter = backbone.intermediate_dim
    tensors = {"model.embed_tokens.weight": _array(backbone.token_embedding.embeddings)}
    for i, block in enumerate(backbone.blocks):
        pre = f"model.layers.{i}."
        qkv = block.attention.qkv_dense
        kernel = _array(qkv.kernel)
        for name, (start, end) in columns.items():
            tensors[f"{pre}self_attn.{name}_proj.weight"] = kernel[:, start:end].T
            if qkv.bias is not None:  # Qwen2
                tensors[f"{pre}self_attn.{name}_proj.bias"] = _array(qkv.bias)[start:end]
        tensors[pre + "self_attn.o_proj.weight"] = _array(block.attention.output_dense.kernel).T
        gate_up = _array(block.feed_forward.intermediate_dense.kernel)
        tensors[pre + "mlp.gate_proj.weight"] = gate_up[:, :inter].T
        tensors[pre + "mlp.up_proj.weight"] = gate_up[:, inter:].T
        tensors[pre + "mlp.down_proj.weight"] = _array(block.feed_forward.output_dense.kernel).T
        tensors[pre + "input_layernorm.weight"] = _array(block.attention_norm.scale)
        tensors[pre + "post_attention_layernorm.weight"] = _array(block.feed_forward_norm.scale)
    tensors["model.norm.weight"] = _array(backbone.final_norm_layer.scale)
    if not backbone.tie_embeddings:
        tensors["lm_head.weight"] = _array(backbone.token_embedding.reverse_embeddings).T
    return LLAMA_CLASSES[kind], tensors, {}


def _post_processor(tokenizer, byte_level):
    """`tokenizers`' post-processing: the byte-level offsets, then, where the tokenizer has a
    start token, the template that puts it before every text (Llama 3's)."""
    if tokenizer.start_token is None:
        return byte_level
    start = tokenizer.start_token
    return {"type": "Sequence", "processors": [byte_level, {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": start, "type_id": 0}},
                   {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": start, "type_id": 0}},
                 {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": start, "type_id": 1}},
                 {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {start: {"id": start, "ids": [tokenizer.start_id],
                                   "tokens": [start]}}}]}


def byte_level_tokenizer_json(tokenizer):
    """The `tokenizers` file of a byte-level BPE: its vocabulary and merges, GPT-2's
    `ByteLevel` split or Llama 3's / Qwen2's `Split` regex before a regex-free `ByteLevel`,
    NFC when the tokenizer applies it, and the special tokens as added tokens."""
    special = list(tokenizer.special_tokens)
    if tokenizer.pre_tokenizer == "gpt2":
        pre_tokenizer = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                         "use_regex": True}
    else:
        pre_tokenizer = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": BYTE_LEVEL_SPLITS[tokenizer.pre_tokenizer]},
             "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
             "use_regex": False}]}
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                  "use_regex": False}
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": tokenizer.token_to_id(t), "content": t, "single_word": False,
                          "lstrip": False, "rstrip": False, "normalized": False,
                          "special": True} for t in special],
        "normalizer": {"type": "NFC"} if tokenizer.nfc else None,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": _post_processor(tokenizer, byte_level),
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": "", "end_of_word_suffix": "", "fuse_unk": False,
                  "byte_fallback": False, "ignore_merges": tokenizer.ignore_merges,
                  "vocab": {t: i for i, t in enumerate(tokenizer.get_vocabulary())
                            if t not in special},
                  "merges": [f"{a} {b}" for a, b in tokenizer.merges]},
    }


def write_llama_tokenizer(tokenizer, directory, hf_config):
    """A SentencePiece `tokenizer.model` with the `tokenizer_config.json` of `LlamaTokenizer`
    (Llama 2, Mistral: <s> prepended, the text segmented as the SentencePiece library does),
    or a byte-level BPE `tokenizer.json` (Llama 3, Qwen2) with a `PreTrainedTokenizerFast`
    one."""
    special = {f"{name}_token": None if i is None else tokenizer.id_to_token(i)
               for name, i in (("bos", hf_config["bos_token_id"]),
                               ("eos", hf_config["eos_token_id"]))}
    common = dict(model_max_length=hf_config["max_position_embeddings"],
                  clean_up_tokenization_spaces=False, **special)
    if isinstance(tokenizer, SentencePieceTokenizer):
        with open(os.path.join(directory, LLAMA_SPIECE_FILE), "wb") as f:
            f.write(tokenizer.model_proto)
        unknown = _first_token_id(tokenizer, ("<unk>",))
        if tokenizer.start_token is not None:  # what LlamaTokenizer puts before every text
            common["bos_token"] = tokenizer.start_token
        _write_json(os.path.join(directory, TOKENIZER_CONFIG_FILE), dict(
            tokenizer_class="LlamaTokenizer", add_bos_token=tokenizer.start_token is not None,
            add_eos_token=False, legacy=True, sp_model_kwargs={}, pad_token=None,
            unk_token=None if unknown is None else "<unk>", **common))
    elif isinstance(tokenizer, BytePairTokenizer):
        _write_json(os.path.join(directory, TOKENIZER_JSON_FILE),
                    byte_level_tokenizer_json(tokenizer))
        _write_json(os.path.join(directory, TOKENIZER_CONFIG_FILE), dict(
            tokenizer_class="PreTrainedTokenizerFast", **common))
    else:
        raise ExportError(f"data.tokenizer={tokenizer.kind!r}: Hugging Face "
                          f"{hf_config['model_type']} reads a SentencePiece tokenizer.model or a "
                          "byte-level BPE tokenizer.json.")


# -- The table. -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Architecture:
    """One Hugging Face architecture tflm exports.

    Attributes:
        kind: the importer's name of it (`huggingface.checkpoint_kind`).
        config: `(backbone, tokenizer) -> config.json` (without `architectures`).
        backbone_kwargs: `(config.json, backbone) -> TransformerBackbone` arguments: the
            importer's reading of that config, which the backbone must equal.
        model_tensors: `(task model, head) -> (architecture class, {name: array}, extra
            config)`; `head` is one of the `*_HEAD`s.
        write_tokenizer: `(tokenizer, directory, config.json)` writes the tokenizer files.
        not_expressed: backbone keys the config has no place for and that do not change
            what the model computes once trained (Llama's residual dropout); not compared.
    """

    kind: str
    config: object
    backbone_kwargs: object
    model_tensors: object
    write_tokenizer: object
    not_expressed: frozenset = frozenset()


def _llama_architecture(kind):
    return Architecture(kind, functools.partial(llama_config, kind),
                        lambda hf, backbone: llama_backbone_kwargs(hf, kind),
                        functools.partial(llama_model_tensors, kind), write_llama_tokenizer,
                        not_expressed=frozenset({"dropout"}))


ARCHITECTURES = {
    "bert": Architecture("bert", bert_config,
                         lambda hf, backbone: bert_backbone_kwargs(hf, pooler=backbone.pooler),
                         bert_model_tensors, write_bert_tokenizer),
    "gpt2": Architecture("gpt2", gpt2_config, lambda hf, backbone: gpt2_backbone_kwargs(hf),
                         gpt2_model_tensors, write_gpt2_tokenizer),
    # In this order: a backbone that two express is the first's (no window, no bias: Llama).
    **{kind: _llama_architecture(kind) for kind in ("llama", "mistral", "qwen2")},
}


def architecture_differences(architecture, backbone, tokenizer):
    """`["key: tflm value != what <kind> expresses", ...]`: where `backbone` differs from the
    backbone the importer builds from the config `architecture` writes for it."""
    try:
        hf_config = architecture.config(backbone, tokenizer)
        expressed = architecture.backbone_kwargs(hf_config, backbone)
    except CheckpointError as e:  # the importer refuses the written config (an activation)
        return [_REFUSED + str(e)]
    defaults = {k: p.default for k, p in
                inspect.signature(TransformerBackbone.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}
    expected = _comparable(dict(defaults, **expressed))
    ignored = set(_NOT_COMPARED) | architecture.not_expressed
    for encoding, keys in _POSITION_KEYS.items():
        if expected["position_encoding"] != encoding:
            ignored.update(keys)
    actual = _comparable(backbone.get_config())
    return [f"model.{key}={actual[key]!r} (Hugging Face {architecture.kind} has "
            f"{expected.get(key)!r})" for key in actual
            if key not in ignored and actual[key] != expected.get(key)]


def _comparable(config):
    """Backbone arguments with the defaults that follow other keys spelled as `get_config`
    spells them: 0 key/value heads (as many as heads), 0 head_dim (hidden_dim / heads), and
    `qkv_bias` None as `use_bias`."""
    config = dict(config)
    heads = config["num_heads"]
    if config["num_key_value_heads"] == heads:
        config["num_key_value_heads"] = 0
    if not config["head_dim"] or config["head_dim"] * heads == config["hidden_dim"]:
        config["head_dim"] = 0
    if config["qkv_bias"] is None:
        config["qkv_bias"] = config["use_bias"]
    return config


def architecture_of(model, tokenizer):
    """The `Architecture` that expresses `model`'s backbone exactly, else an `ExportError`
    naming the keys that differ from the nearest one."""
    found = {kind: architecture_differences(a, model.backbone, tokenizer)
             for kind, a in ARCHITECTURES.items()}
    for kind, differences in found.items():
        if not differences:
            return ARCHITECTURES[kind]
    # The nearest: fewest differing keys (a config the importer refuses, one); of as many, one
    # the importer reads is nearer than one it refuses.
    kind = min(found, key=lambda k: (len(found[k]), found[k][0].startswith(_REFUSED)))
    found[kind] = [d.removeprefix(_REFUSED) for d in found[kind]]
    raise ExportError(f"this model is no Hugging Face architecture tflm exports "
                      f"({', '.join(ARCHITECTURES)}); nearest {kind}, which differs in: "
                      f"{'; '.join(found[kind])}.")


def _token_id(tokenizer, token):
    try:
        return tokenizer.token_to_id(token)
    except KeyError:
        return None


def _write_json(path, value):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2, ensure_ascii=False)
        f.write("\n")


def _check_tokenizer(tokenizer, directory, kind):
    """The importer must read back the same tokenizer; else the option that differs is named."""
    imported = huggingface_tokenizer(directory, kind)
    if tokenizer.get_vocabulary() != imported.get_vocabulary():
        raise ExportError(f"{directory}: the written vocabulary does not read back as the "
                          "tokenizer's.")
    ours = dict(tokenizer.config(), special_tokens=list(tokenizer.special_tokens))
    theirs = dict(imported.config(), special_tokens=list(imported.special_tokens))
    # Both ways: `config()` leaves out some options at their defaults (clean_whitespace).
    keys = list(ours) + [key for key in theirs if key not in ours]
    shown = {key: f"{key}={ours[key]!r}" if key in ours else f"{key} at its default"
             for key in keys}
    differences = [f"{shown[key]} (Hugging Face {kind} reads {theirs.get(key)!r})"
                   for key in keys if ours.get(key) != theirs.get(key)]
    if differences:
        raise ExportError(f"tokenizer: {'; '.join(differences)}: not expressible as a "
                          f"Hugging Face {kind} tokenizer.")


def export_huggingface(model, tokenizer, output_dir, head):
    """Writes `model` (a tflm task model) and `tokenizer` as a Hugging Face checkpoint folder;
    returns the `Architecture` written.

    `head`: the Hugging Face head `model` is (`MASKED_LM_HEAD`, `CAUSAL_LM_HEAD`,
    `SEQUENCE_CLASSIFICATION_HEAD`), as its task declares (`Task.huggingface_head`); None
    for a model of a task with none.

    The folder is written under a temporary name and renamed when complete and checked; an
    existing `output_dir` is never overwritten.

    Raises:
        ExportError: the model or tokenizer is not expressible in the architecture (named key).
        OutputExistsError: `output_dir` exists.
    """
    if os.path.exists(output_dir):
        raise OutputExistsError(f"{output_dir} exists; the export writes a new folder.")
    if has_lora(model):
        raise ExportError("the model has LoRA factors: merge them first "
                          "(tflm.models.lora.merge_lora).")
    if head is None:
        raise ExportError(f"{type(model).__name__}: its task has no Hugging Face head that "
                          "tflm exports (a masked LM, causal LM or classifier).")
    architecture = architecture_of(model, tokenizer)
    class_name, tensors, extra = architecture.model_tensors(model, head)
    hf_config = dict(architecture.config(model.backbone, tokenizer), **extra,
                     architectures=[class_name], torch_dtype="float32")
    partial = output_dir.rstrip("/") + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    try:
        _write_json(os.path.join(partial, CONFIG_FILE), hf_config)
        write_safetensors(os.path.join(partial, WEIGHTS_FILE), tensors, metadata={"format": "pt"})
        architecture.write_tokenizer(tokenizer, partial, hf_config)
        if tokenizer.vocabulary_size > model.backbone.vocabulary_size:
            raise ExportError(f"tokenizer: {tokenizer.vocabulary_size} ids, more than the "
                              f"model's model.vocabulary_size={model.backbone.vocabulary_size}.")
        _check_tokenizer(tokenizer, partial, architecture.kind)
        os.rename(partial, output_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return architecture
