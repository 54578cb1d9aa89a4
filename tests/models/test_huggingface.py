"""Hugging Face BERT and GPT-2 import exactly (NumPy references), folders and tokenizers too."""

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import save_file

from hf_fixtures import write_bert_folder, write_gpt2_folder
from numpy_reference import (
    bert_forward,
    bert_mlm_logits,
    gpt2_forward,
    random_bert_params,
    random_gpt2_params,
)
from tflm.models import MaskedLM
from tflm.models.huggingface import (
    CheckpointError,
    huggingface_tokenizer,
    load_bert,
    load_gpt2,
    load_huggingface,
    set_masked_lm_head,
)
from tflm.models.safetensors_file import read_safetensors

BERT_CONFIG = {
    "vocab_size": 97, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
    "intermediate_size": 64, "max_position_embeddings": 40, "type_vocab_size": 2,
    "layer_norm_eps": 1e-12, "hidden_act": "gelu",
}
GPT2_CONFIG = {
    "vocab_size": 101, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 40,
    "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new",
}


def _bert_inputs():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 97, (2, 11)).astype("int32")
    types = np.zeros_like(ids)
    types[:, 6:] = 1
    mask = np.ones_like(ids)
    mask[1, 8:] = 0
    return ids, types, mask


def test_bert_matches_reference():
    params = random_bert_params(BERT_CONFIG)
    backbone, head = load_bert(BERT_CONFIG, {"bert." + k: v for k, v in params.items()})
    ids, types, mask = _bert_inputs()
    expected_seq, expected_pooled = bert_forward(params, BERT_CONFIG, ids, types, mask)
    outputs = backbone({"token_ids": ids, "segment_ids": types, "padding_mask": mask})
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(outputs["sequence_output"])[real], expected_seq[real], atol=1e-4)
    np.testing.assert_allclose(np.asarray(outputs["pooled_output"]), expected_pooled, atol=1e-4)

    model = MaskedLM(backbone)
    set_masked_lm_head(model, head)
    positions = np.array([[1, 4, 9], [0, 2, 7]], "int32")
    logits = model({"token_ids": ids, "segment_ids": types, "padding_mask": mask,
                    "mask_positions": positions})
    expected_logits = bert_mlm_logits(params, BERT_CONFIG, expected_seq)
    expected_logits = np.take_along_axis(expected_logits, positions[:, :, None], axis=1)
    np.testing.assert_allclose(np.asarray(logits), expected_logits, atol=1e-4)


def test_gpt2_matches_reference():
    params = random_gpt2_params(GPT2_CONFIG)
    backbone = load_gpt2(GPT2_CONFIG, params)
    ids = np.random.default_rng(1).integers(0, 101, (2, 13)).astype("int32")
    mask = np.ones_like(ids)
    mask[0, 10:] = 0
    expected_hidden, expected_logits = gpt2_forward(params, GPT2_CONFIG, ids, mask)
    hidden = backbone({"token_ids": ids, "padding_mask": mask})["sequence_output"]
    logits = backbone.token_embedding(hidden, reverse=True)
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(hidden)[real], expected_hidden[real], atol=1e-4)
    np.testing.assert_allclose(np.asarray(logits)[real], expected_logits[real], atol=1e-4)


def test_gelu_choice_matters():
    # GPT-2 weights run with BERT's erf GELU differ from the reference by more
    # than the parity tolerance (1e-4): the parity tests would catch that mix-up.
    params = random_gpt2_params(GPT2_CONFIG)
    backbone = load_gpt2(GPT2_CONFIG, params)
    for block in backbone.blocks:
        block.feed_forward.activation = "gelu"
    ids = np.arange(12, dtype="int32")[None]
    expected, _ = gpt2_forward(params, GPT2_CONFIG, ids)
    hidden = np.asarray(backbone({"token_ids": ids, "padding_mask": np.ones_like(ids)})["sequence_output"])
    assert np.abs(hidden - expected).max() > 2e-4


def test_wrong_shape_names_tensor():
    params = random_gpt2_params(GPT2_CONFIG)
    params["h.1.mlp.c_fc.weight"] = params["h.1.mlp.c_fc.weight"][:, :10]
    with pytest.raises(CheckpointError, match=r"h\.1\.mlp\.c_fc\.weight.*\(32, 10\)"):
        load_gpt2(GPT2_CONFIG, params, source="model.safetensors")


def test_missing_tensor_names_tensor():
    params = random_bert_params(BERT_CONFIG)
    del params["encoder.layer.1.attention.self.key.bias"]
    with pytest.raises(CheckpointError, match=r"encoder\.layer\.1\.attention\.self\.key\.bias"):
        load_bert(BERT_CONFIG, params)


def test_unsupported_activation():
    with pytest.raises(CheckpointError, match="relu"):
        load_gpt2(dict(GPT2_CONFIG, activation_function="relu"), {})


# -- Checkpoint folders, as transformers writes them. --------------------------------------


def _real_lines(limit=400):
    from tflm.data import default_corpus_path

    with open(default_corpus_path(), encoding="utf-8") as f:
        lines = [line for line in f.read().splitlines() if line.strip()]
    return lines[:: max(1, len(lines) // limit)][:limit]


def _jsonl_texts(path, limit):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line, _ in zip(f, range(limit))]


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf") / "bert"
    config, params = write_bert_folder(str(folder))
    return folder, config, params


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf") / "gpt2"
    config, params = write_gpt2_folder(str(folder), shards=2)
    return folder, config, params


def _encoder_batch(tokenizer, texts):
    rows = [[tokenizer.cls_id] + r + [tokenizer.sep_id]
            for r in tokenizer.tokenize(texts).to_list()]
    width = max(map(len, rows))
    ids = np.array([r + [0] * (width - len(r)) for r in rows], "int32")
    mask = np.array([[1] * len(r) + [0] * (width - len(r)) for r in rows], "int32")
    return ids, mask


def test_bert_folder_imports_exactly(bert_folder):
    folder, config, params = bert_folder
    imported = load_huggingface(str(folder))
    assert imported.kind == "bert" and imported.head_loaded
    assert isinstance(imported.model, MaskedLM)
    # The NSP head is not part of a MaskedLM; position_ids is a buffer, not a weight.
    assert imported.unused_tensors == ["cls.seq_relationship.weight"]
    tokenizer = imported.tokenizer
    ids, mask = _encoder_batch(tokenizer, ["It is a truth universally acknowledged, that a single "
                                           "man in possession of a good fortune", "Mr. Darcy!"])
    types = np.zeros_like(ids)
    expected_seq, expected_pooled = bert_forward(params, config, ids, types, mask)
    outputs = imported.model.backbone({"token_ids": ids, "segment_ids": types,
                                       "padding_mask": mask})
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(outputs["sequence_output"])[real], expected_seq[real],
                               atol=1e-4)
    np.testing.assert_allclose(np.asarray(outputs["pooled_output"]), expected_pooled, atol=1e-4)
    positions = np.array([[1, 3], [2, 4]], "int32")
    logits = imported.model({"token_ids": ids, "segment_ids": types, "padding_mask": mask,
                             "mask_positions": positions})
    expected = np.take_along_axis(bert_mlm_logits(params, config, expected_seq),
                                  positions[:, :, None], axis=1)
    np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-4)


def test_gpt2_sharded_folder_imports_exactly(gpt2_folder):
    folder, config, params = gpt2_folder
    imported = load_huggingface(str(folder))
    assert imported.kind == "gpt2" and imported.unused_tensors == []
    ids = imported.tokenizer.tokenize(["It is a truth universally acknowledged"]).to_tensor()
    ids = np.asarray(ids, "int32")
    mask = np.ones_like(ids)
    expected_hidden, expected_logits = gpt2_forward(params, config, ids, mask)
    hidden = imported.model.backbone({"token_ids": ids, "padding_mask": mask})["sequence_output"]
    np.testing.assert_allclose(np.asarray(hidden), expected_hidden, atol=1e-4)
    np.testing.assert_allclose(np.asarray(imported.model({"token_ids": ids, "padding_mask": mask})),
                               expected_logits, atol=1e-4)


def _reference_wordpiece(folder):
    from tokenizers import Tokenizer

    reference = Tokenizer.from_file(str(folder / "tokenizer.json"))
    reference.no_padding()
    reference.no_truncation()
    return reference


def _assert_same_ids(tokenizer, reference, texts):
    ours = tokenizer.tokenize(texts).to_list()
    theirs = [e.ids for e in reference.encode_batch(texts, add_special_tokens=False)]
    mismatched = [t for t, a, b in zip(texts, ours, theirs) if a != b]
    assert not mismatched, f"{len(mismatched)} of {len(texts)} differ, e.g. {mismatched[0]!r}"


def test_imported_tokenizers_match_the_reference_on_the_embedded_corpus(bert_folder, gpt2_folder):
    from tokenizers import ByteLevelBPETokenizer

    texts = _real_lines()
    _assert_same_ids(huggingface_tokenizer(str(bert_folder[0]), "bert"),
                     _reference_wordpiece(bert_folder[0]), texts)
    gpt2 = gpt2_folder[0]
    reference = ByteLevelBPETokenizer(str(gpt2 / "vocab.json"), str(gpt2 / "merges.txt"))
    _assert_same_ids(huggingface_tokenizer(str(gpt2), "gpt2"), reference, texts)


def test_imported_tokenizers_match_the_reference_on_tweets_and_chinese(shared_data, bert_folder,
                                                                        gpt2_folder):
    from tokenizers import ByteLevelBPETokenizer

    texts = (_jsonl_texts(shared_data / "en_tweet_sentiment.jsonl", 1500)
             + _jsonl_texts(shared_data / "zh_review_sentiment.jsonl", 500))
    _assert_same_ids(huggingface_tokenizer(str(bert_folder[0]), "bert"),
                     _reference_wordpiece(bert_folder[0]), texts)
    gpt2 = gpt2_folder[0]
    reference = ByteLevelBPETokenizer(str(gpt2 / "vocab.json"), str(gpt2 / "merges.txt"))
    _assert_same_ids(huggingface_tokenizer(str(gpt2), "gpt2"), reference, texts)


def test_sentence_transformers_layout_without_pooler_or_head(tmp_path):
    config, params = write_bert_folder(str(tmp_path / "st"), prefix="", head=False)
    weights = read_safetensors(str(tmp_path / "st" / "model.safetensors"))
    weights = {k: v for k, v in weights.items() if not k.startswith("pooler.")}
    save_file(weights, str(tmp_path / "st" / "model.safetensors"))
    imported = load_huggingface(str(tmp_path / "st"))
    assert not imported.head_loaded and not imported.model.backbone.pooler
    ids = np.arange(1, 9, dtype="int32")[None]
    expected, _ = bert_forward(params, config, ids)
    hidden = imported.model.backbone({"token_ids": ids, "padding_mask": np.ones_like(ids)})
    np.testing.assert_allclose(np.asarray(hidden["sequence_output"]), expected, atol=1e-4)


def test_wrong_architecture_is_named(gpt2_folder, tmp_path):
    folder = tmp_path / "mislabelled"
    shutil.copytree(gpt2_folder[0], folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="bert", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=64)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"is missing.*config.json says 'bert'.*'gpt2'"):
        load_huggingface(str(folder))
    config["model_type"] = "mixtral"
    config.pop("architectures")
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="model_type='mixtral'"):
        load_huggingface(str(folder))


def test_missing_files_are_named(bert_folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_huggingface(str(tmp_path))
    folder = tmp_path / "novocab"
    shutil.copytree(bert_folder[0], folder)
    (folder / "vocab.txt").unlink()
    with pytest.raises(FileNotFoundError, match="no vocab.txt"):
        load_huggingface(str(folder))


def test_real_bert_checkpoint_imports_exactly(real_bert_dir):
    """all-MiniLM-L6-v2 (6 layers, 384 wide, 30522 WordPiece ids), a published checkpoint."""
    imported = load_huggingface(str(real_bert_dir))
    assert imported.model.backbone.num_layers == 6 and imported.model.backbone.hidden_dim == 384
    texts = _real_lines(200) + ["Café naïve — 東京 ümlaut!!! #hashtag http://x.co/abc"]
    _assert_same_ids(imported.tokenizer, _reference_wordpiece(real_bert_dir), texts)
    hf_config = json.loads((real_bert_dir / "config.json").read_text())
    params = read_safetensors(str(real_bert_dir / "model.safetensors"))
    ids, mask = _encoder_batch(imported.tokenizer, texts[:3] + texts[-1:])
    expected_seq, expected_pooled = bert_forward(params, hf_config, ids, None, mask)
    outputs = imported.model.backbone({"token_ids": ids, "padding_mask": mask,
                                       "segment_ids": np.zeros_like(ids)})
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(outputs["sequence_output"])[real], expected_seq[real],
                               atol=1e-4)
    np.testing.assert_allclose(np.asarray(outputs["pooled_output"]), expected_pooled, atol=1e-4)
