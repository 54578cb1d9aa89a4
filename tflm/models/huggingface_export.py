"""tflm models → Hugging Face checkpoint folders (BERT, GPT-2): the inverse of `huggingface`.

`export_huggingface(model, tokenizer, output_dir)` writes the folder `transformers` and
tflm's own importer read: `config.json`, `model.safetensors` (float32) and the tokenizer
files (BERT: `vocab.txt`, `tokenizer_config.json` and `tokenizer.json`; GPT-2:
`vocab.json`, `merges.txt` and `tokenizer_config.json`).

Each architecture is one `Architecture` entry of `ARCHITECTURES`: the Hugging Face config
that expresses a backbone, the tensors under Hugging Face's names, the tokenizer files.
What a model is must be exactly what the importer would rebuild from that config: the
backbone's config is compared, key by key, with the importer's own `*_backbone_kwargs` of
the written config (the rest with `TransformerBackbone`'s defaults), so the two directions
cannot drift and a model the architecture cannot express (rotary positions in a "GPT-2",
pre-LN BERT, an untied output) is an error naming the key. The tokenizer is read back
with the importer's `huggingface_tokenizer` before the folder is published, and must be the
same tokenizer (same vocabulary, options and special tokens).

Example:
>>> export_huggingface(model, tokenizer, "hf/my-bert")   # model: a MaskedLM on a BERT backbone
>>> load_huggingface("hf/my-bert").model                 # the same weights, bit for bit
"""

import dataclasses
import inspect
import json
import os
import shutil

import numpy as np

from tflm.data.byte_pair import END_OF_TEXT, BytePairTokenizer
from tflm.data.wordpiece import WordPieceTokenizer
from tflm.errors import OutputExistsError
from tflm.models.backbone import TransformerBackbone
from tflm.models.causal_lm import CausalLM
from tflm.models.huggingface import (
    CONFIG_FILE,
    CheckpointError,
    bert_backbone_kwargs,
    gpt2_backbone_kwargs,
    huggingface_tokenizer,
)
from tflm.models.lora import has_lora
from tflm.models.masked_lm import MaskedLM
from tflm.models.safetensors_file import WEIGHTS_FILE, write_safetensors
from tflm.models.sequence_classifier import SequenceClassifier

TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
TOKENIZER_JSON_FILE = "tokenizer.json"
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


def bert_model_tensors(model):
    """`(architectures, tensors, extra config)` of a BERT task model: `BertForMaskedLM` (the
    decoder is the word embeddings, tied, so not saved), `BertForPreTraining` (with the
    next-sentence head) or `BertForSequenceClassification`."""
    tensors = {"bert." + k: v for k, v in bert_tensors(model.backbone).items()}
    if isinstance(model, MaskedLM):
        tensors.update(_linear("cls.predictions.transform.dense", model.head_dense))
        tensors.update(_norm("cls.predictions.transform.LayerNorm", model.head_norm))
        tensors["cls.predictions.bias"] = _array(model.head_bias)
        if model.next_sentence_prediction:
            tensors.update(_linear("cls.seq_relationship", model.next_sentence_head))
            return "BertForPreTraining", tensors, {}
        return "BertForMaskedLM", tensors, {}
    if type(model) is SequenceClassifier and model.pooling == "pooled":
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


def gpt2_model_tensors(model):
    """`(architectures, tensors, extra config)` of a `CausalLM`: `GPT2LMHeadModel`, whose
    `lm_head` is the token embedding (tied, so not saved)."""
    if not isinstance(model, CausalLM):
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


# -- The table. -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Architecture:
    """One Hugging Face architecture tflm exports.

    Attributes:
        kind: the importer's name of it (`huggingface.checkpoint_kind`).
        config: `(backbone, tokenizer) -> config.json` (without `architectures`).
        backbone_kwargs: `(config.json, backbone) -> TransformerBackbone` arguments: the
            importer's reading of that config, which the backbone must equal.
        model_tensors: `task model -> (architecture class, {name: array}, extra config)`.
        write_tokenizer: `(tokenizer, directory, config.json)` writes the tokenizer files.
    """

    kind: str
    config: object
    backbone_kwargs: object
    model_tensors: object
    write_tokenizer: object


ARCHITECTURES = {
    "bert": Architecture("bert", bert_config,
                         lambda hf, backbone: bert_backbone_kwargs(hf, pooler=backbone.pooler),
                         bert_model_tensors, write_bert_tokenizer),
    "gpt2": Architecture("gpt2", gpt2_config, lambda hf, backbone: gpt2_backbone_kwargs(hf),
                         gpt2_model_tensors, write_gpt2_tokenizer),
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
    expected = dict(defaults, **expressed)
    expected["head_dim"] = expected["head_dim"] or 0  # get_config's 0: the default width
    ignored = set(_NOT_COMPARED)
    for encoding, keys in _POSITION_KEYS.items():
        if expected["position_encoding"] != encoding:
            ignored.update(keys)
    actual = backbone.get_config()
    return [f"model.{key}={actual[key]!r} (Hugging Face {architecture.kind} has "
            f"{expected.get(key)!r})" for key in actual
            if key not in ignored and actual[key] != expected.get(key)]


def architecture_of(model, tokenizer):
    """The `Architecture` that expresses `model`'s backbone exactly, else an `ExportError`
    naming the keys that differ from the nearest one."""
    found = {kind: architecture_differences(a, model.backbone, tokenizer)
             for kind, a in ARCHITECTURES.items()}
    for kind, differences in found.items():
        if not differences:
            return ARCHITECTURES[kind]
    # The nearest: fewest differing keys; a config the importer refuses outright is farther.
    kind = min(found, key=lambda k: (found[k][0].startswith(_REFUSED), len(found[k])))
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
    differences = [f"{key}={ours[key]!r} (Hugging Face {kind} reads {theirs.get(key)!r})"
                   for key in ours if ours[key] != theirs.get(key)]
    if differences:
        raise ExportError(f"tokenizer: {'; '.join(differences)}: not expressible as a "
                          f"Hugging Face {kind} tokenizer.")


def export_huggingface(model, tokenizer, output_dir):
    """Writes `model` (a tflm task model) and `tokenizer` as a Hugging Face checkpoint folder;
    returns the `Architecture` written.

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
    architecture = architecture_of(model, tokenizer)
    class_name, tensors, extra = architecture.model_tensors(model)
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
