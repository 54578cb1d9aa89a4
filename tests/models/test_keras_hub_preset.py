"""keras-hub presets (as `save_to_preset` writes them) convert into tflm model_dirs that
compute what keras-hub's own models compute, with the same token ids."""

import importlib.util
import json

import keras_hub
import numpy as np
import pytest

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


def test_unsupported_preset_architecture_is_named(tmp_path):
    config = {"module": "keras_hub.src.models.llama.llama_backbone", "class_name": "LlamaBackbone",
              "config": {}, "registered_name": "keras_hub>LlamaBackbone"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="keras-hub LlamaBackbone preset; tflm converts "
                                              "BertBackbone, GPT2Backbone"):
        convert_checkpoint(str(tmp_path), str(tmp_path / "out"), **QUIET)
    assert not (tmp_path / "out").exists()
