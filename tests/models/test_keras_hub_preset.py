"""keras-hub presets (as `save_to_preset` writes them) convert into tflm model_dirs that
compute what keras-hub's own models compute, with the same token ids."""

import importlib.util
import io
import json
import shutil

import keras_hub
import numpy as np
import pytest

from hf_fixtures import corpus_paragraphs
from tflm.data.byte_pair import bytes_to_unicode
from tflm.models import CausalLM, MaskedLM
from tflm.models.huggingface import CheckpointError
from tflm.models.keras_hub_preset import load_keras_hub
from tflm.tasks import convert_checkpoint, load_pretrained

QUIET = dict(print_fn=lambda line: None)
TEXTS = ["The other day, the brown fox said hello!", "Hello world.", "Ünïcode and naïve?"]
GPT2_MERGES = ["Ġ t", "h e", "Ġt he", "Ġ a", "i n", "e r", "o r", "l l", "Ġ w", "Ġw or"]
BERT_WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "hello", "world", "other",
              "day", "brown", "fox", "said", "and", "##s", "nai", "##ve", ",", ".", "!", "?",
              "un", "##ic", "##ode"]


def _gpt2_vocabulary():
    """Every byte (so any text tokenizes), the merges' results, and <|endoftext|>."""
    vocabulary = {}
    for token in list(bytes_to_unicode().values()) + [m.replace(" ", "") for m in GPT2_MERGES]:
        vocabulary.setdefault(token, len(vocabulary))
    vocabulary["<|endoftext|>"] = len(vocabulary)
    return vocabulary


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    """A random GPT2CausalLM, a BertTextClassifier and a BertBackbone (with its tokenizer),
    each saved as a preset; `{name: (folder, keras-hub model, keras-hub tokenizer)}`."""
    root = tmp_path_factory.mktemp("keras_hub")
    gpt2_tokenizer = keras_hub.models.GPT2Tokenizer(vocabulary=_gpt2_vocabulary(),
                                                    merges=GPT2_MERGES)
    gpt2 = keras_hub.models.GPT2CausalLM(
        keras_hub.models.GPT2Backbone(vocabulary_size=300, num_layers=2, num_heads=4,
                                      hidden_dim=32, intermediate_dim=64,
                                      max_sequence_length=64),
        keras_hub.models.GPT2CausalLMPreprocessor(gpt2_tokenizer, sequence_length=16))
    bert_tokenizer = keras_hub.models.BertTokenizer(vocabulary=BERT_WORDS, lowercase=True)
    bert_backbone = keras_hub.models.BertBackbone(vocabulary_size=30, num_layers=2, num_heads=4,
                                                  hidden_dim=32, intermediate_dim=64,
                                                  max_sequence_length=32)
    classifier = keras_hub.models.BertTextClassifier(
        bert_backbone, num_classes=3,
        preprocessor=keras_hub.models.BertTextClassifierPreprocessor(bert_tokenizer))
    rng = np.random.default_rng(0)
    for model in (gpt2, classifier):  # nonzero biases and norms, so a misplaced one shows
        for weight in model.weights:
            weight.assign(rng.normal(0, 0.2, weight.shape).astype("float32")
                          + (1.0 if weight.path.endswith("gamma") else 0.0))
    gpt2.save_to_preset(str(root / "gpt2"))
    classifier.save_to_preset(str(root / "bert"))
    bert_backbone.save_to_preset(str(root / "bert_backbone"))
    bert_tokenizer.save_to_preset(str(root / "bert_backbone"))
    return {"gpt2": (root / "gpt2", gpt2, gpt2_tokenizer),
            "bert": (root / "bert", classifier, bert_tokenizer),
            "bert_backbone": (root / "bert_backbone", bert_backbone, bert_tokenizer)}


@pytest.fixture(scope="module")
def llama_presets(tmp_path_factory):
    """Random Llama-family presets sharing one SentencePiece vocabulary (BPE with byte
    fallback, no normalization, as Llama 2's): a LlamaCausalLM with grouped-query attention
    (4 query heads, 2 key/value heads), a non-default rope_max_wavelength and an untied output;
    a bare tied LlamaBackbone; a MistralCausalLM with a sliding window of 3 and a head_dim
    that is not hidden_dim / heads. `{name: (folder, keras-hub model, keras-hub tokenizer)}`."""
    import sentencepiece as spm

    root = tmp_path_factory.mktemp("keras_hub_llama")
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus_paragraphs()), model_writer=proto, vocab_size=400,
        model_type="bpe", byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        normalization_rule_name="identity", remove_extra_whitespaces=False, minloglevel=2)
    common = dict(vocabulary_size=410, num_layers=2, num_query_heads=4, num_key_value_heads=2,
                  hidden_dim=16, intermediate_dim=24, layer_norm_epsilon=1e-5)
    llama_tokenizer = keras_hub.models.LlamaTokenizer(proto=proto.getvalue())
    llama = keras_hub.models.LlamaCausalLM(
        keras_hub.models.LlamaBackbone(**common, rope_max_wavelength=500),
        keras_hub.models.LlamaCausalLMPreprocessor(llama_tokenizer, sequence_length=16))
    tied = keras_hub.models.LlamaBackbone(**common, tie_word_embeddings=True)
    mistral_tokenizer = keras_hub.models.MistralTokenizer(proto=proto.getvalue())
    mistral = keras_hub.models.MistralCausalLM(
        keras_hub.models.MistralBackbone(**common, sliding_window=3, head_dim=6,
                                         rope_max_wavelength=20000),
        keras_hub.models.MistralCausalLMPreprocessor(mistral_tokenizer, sequence_length=16))
    rng = np.random.default_rng(0)
    for model in (llama, tied, mistral):  # norms away from 1, so a misplaced one shows
        for weight in model.weights:
            weight.assign(rng.normal(1.0 if weight.path.endswith("scale") else 0.0, 0.3,
                                     weight.shape).astype("float32"))
    llama.save_to_preset(str(root / "llama"))
    mistral.save_to_preset(str(root / "mistral"))
    tied.save_to_preset(str(root / "tied"))
    llama_tokenizer.save_to_preset(str(root / "tied"))
    # keras-hub 0.32's LlamaBackbone.get_config leaves tie_word_embeddings out (its tied
    # presets spell it out in config.json, or they could not load their weights).
    config = json.loads((root / "tied" / "config.json").read_text())
    config["config"]["tie_word_embeddings"] = True
    (root / "tied" / "config.json").write_text(json.dumps(config))
    return {"llama": (root / "llama", llama, llama_tokenizer),
            "tied": (root / "tied", keras_hub.models.LlamaCausalLM(tied), llama_tokenizer),
            "mistral": (root / "mistral", mistral, mistral_tokenizer)}


def _batch(tokenizer, texts):
    rows = [np.asarray(tokenizer(text)).tolist() for text in texts]
    width = max(map(len, rows))
    ids = np.array([r + [0] * (width - len(r)) for r in rows], "int32")
    mask = np.array([[1] * len(r) + [0] * (width - len(r)) for r in rows], "int32")
    return rows, ids, mask


def _assert_same_ids(ours, rows):
    assert ours.tokenize(TEXTS).to_list() == rows


def test_gpt2_preset_converts_exactly(presets, repo_root, tmp_path, capsys):
    folder, keras_model, keras_tokenizer = presets["gpt2"]
    # Through the tool users run on Hugging Face folders, which tells the two apart.
    spec = importlib.util.spec_from_file_location("convert_checkpoint",
                                                  repo_root / "tools" / "convert_checkpoint.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main([f"--input_dir={folder}", f"--output_dir={tmp_path / 'gpt2'}"]) == 0
    assert "(gpt2, 2 layers, width 32" in capsys.readouterr().out
    model, tokenizer, config = load_pretrained(str(tmp_path / "gpt2"))
    assert isinstance(model, CausalLM) and config.data.tokenizer == tokenizer.kind
    rows, ids, mask = _batch(keras_tokenizer, TEXTS)
    _assert_same_ids(tokenizer, rows)
    features = {"token_ids": ids, "padding_mask": mask}
    real = mask.astype(bool)
    np.testing.assert_allclose(
        np.asarray(model.backbone(features)["sequence_output"])[real],
        np.asarray(keras_model.backbone(features))[real], atol=1e-5)
    np.testing.assert_allclose(np.asarray(model(features))[real],
                               np.asarray(keras_model(features))[real], atol=1e-5)


def test_bert_presets_convert_exactly(presets, tmp_path):
    folder, keras_model, keras_tokenizer = presets["bert"]
    imported = convert_checkpoint(str(folder), str(tmp_path / "bert"), **QUIET)
    # The classifier's head is left out, as a Hugging Face classifier's is.
    assert not imported.head_loaded and imported.unused_tensors == ["logits/bias", "logits/kernel"]
    model, tokenizer, config = load_pretrained(str(tmp_path / "bert"))
    assert isinstance(model, MaskedLM) and config.model.activation == "gelu_tanh"
    rows, ids, mask = _batch(keras_tokenizer, TEXTS)
    _assert_same_ids(tokenizer, rows)
    assert rows[2] == [1, 13, 1, 20]  # [UNK] and [UNK] ?: keras-hub keeps the accents
    segments = np.zeros_like(ids)
    segments[:, 3:] = 1
    features = {"token_ids": ids, "segment_ids": segments, "padding_mask": mask}
    expected = keras_model.backbone(features)
    outputs = model.backbone(features)
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(outputs["sequence_output"])[real],
                               np.asarray(expected["sequence_output"])[real], atol=1e-5)
    np.testing.assert_allclose(np.asarray(outputs["pooled_output"]),
                               np.asarray(expected["pooled_output"]), atol=1e-5)

    # A bare backbone (saved with its tokenizer) converts the same.
    imported = load_keras_hub(str(presets["bert_backbone"][0]))
    assert isinstance(imported.model, MaskedLM) and imported.unused_tensors == []
    np.testing.assert_allclose(
        np.asarray(imported.model.backbone(features)["pooled_output"]),
        np.asarray(expected["pooled_output"]), atol=1e-5)


# Runs of spaces, tabs and newlines, and characters outside the pieces (byte fallback).
LLAMA_TEXTS = TEXTS + ["  two  spaces,\ttab", "a \nb.\nx\n\n  y  ", "東京 🙂 cafe\u0301"]


@pytest.mark.parametrize("name", ["llama", "tied", "mistral"])
def test_llama_family_presets_convert_exactly(llama_presets, name, tmp_path):
    folder, keras_model, keras_tokenizer = llama_presets[name]
    imported = convert_checkpoint(str(folder), str(tmp_path / name), **QUIET)
    assert imported.head_loaded and imported.unused_tensors == []
    model, tokenizer, config = load_pretrained(str(tmp_path / name))
    assert isinstance(model, CausalLM) and config.model.num_key_value_heads == 2
    assert config.model.tie_embeddings == (name == "tied")
    rows, ids, mask = _batch(keras_tokenizer, LLAMA_TEXTS)
    assert tokenizer.tokenize(LLAMA_TEXTS).to_list() == rows
    assert tokenizer.start_id == keras_tokenizer.start_token_id  # the preprocessor's <s>
    assert min(map(len, rows)) > 3  # past Mistral's window
    features = {"token_ids": ids, "padding_mask": mask}
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(model(features))[real],
                               np.asarray(keras_model(features))[real], atol=1e-5)


def test_llama_preset_rope_scaling_is_refused(llama_presets, tmp_path):
    folder = tmp_path / "scaled"
    shutil.copytree(llama_presets["tied"][0], folder)
    config = json.loads((folder / "config.json").read_text())
    config["config"]["rope_position_scaling_factor"] = 8.0
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config.json: rope_position_scaling_factor=8.0: "
                                              "tflm's rotary positions have no scaling"):
        load_keras_hub(str(folder))


def test_unsupported_preset_architecture_is_named(tmp_path):
    config = {"module": "keras_hub.src.models.gemma.gemma_backbone", "class_name": "GemmaBackbone",
              "config": {}, "registered_name": "keras_hub>GemmaBackbone"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="keras-hub GemmaBackbone preset; tflm converts "
                                              "BertBackbone, GPT2Backbone, LlamaBackbone, "
                                              "MistralBackbone"):
        convert_checkpoint(str(tmp_path), str(tmp_path / "out"), **QUIET)
    assert not (tmp_path / "out").exists()
