"""Hugging Face Llama, Mistral and Qwen2 import exactly (NumPy reference of their forward),
decode with the cache as without, convert to a causal_lm model_dir with their SentencePiece
tokenizer, and bad checkpoints stop with the tensor or config key named."""

import json

import numpy as np
import pytest
import tensorflow as tf
from safetensors.numpy import save_file

from hf_fixtures import (LLAMA_CONFIG, MISTRAL_CONFIG, QWEN2_CONFIG, _corpus_lines,
                         corpus_paragraphs, write_byte_level_tokenizer_json, write_llama_folder)
from numpy_reference import llama_forward, random_llama_params
from tflm.data.pipeline import causal_lm_batches
from tflm.data.tokenize import tokenize_documents
from tflm.errors import MissingFileError
from tflm.experiment import load_experiment, run_experiment
from tflm.export.serving import CausalLMServing
from tflm.generation.generate import _prompts
from tflm.models import CausalLM
from tflm.models.huggingface import (CheckpointError, byte_level_bpe_of_tokenizer_json,
                                     load_huggingface, load_llama)
from tflm.models.safetensors_file import SafetensorsError
from tflm.tasks.pretrained import convert_checkpoint, load_pretrained

VOCAB = 97
# Real text, and where the splits differ: runs of spaces and newlines, digits, contractions in
# capitals, characters that NFC composes, and ones outside the trained pieces.
TEXTS = _corpus_lines()[:20] + corpus_paragraphs()[20:23] + [
    "  two  spaces,\ttab", "a \nb.\nx\n\n  y  ", "12345 abc678", "I'M don't WE'LL",
    "naïve cafe\u0301 — 東京 🙂", "(word) [x]\r\n\r\nz", "!!!\n\n\n   ok",
    "In 1811, 2,500 pounds;\n  in 1812, 10,000 pounds a year.\n"]
CONFIGS = {"llama": LLAMA_CONFIG, "mistral": MISTRAL_CONFIG, "qwen2": QWEN2_CONFIG}


def _fed_ids(model, tokenizer, texts):
    """The ids tflm feeds `model` for each text: as a `generate` prompt, as a prompt of the
    exported generate signature, and as the first row of causal LM training on that text."""
    end = tokenizer.sep_id if tokenizer.end_of_text_id is None else tokenizer.end_of_text_id
    prompts = _prompts(texts, tokenizer, end_id=end).to_list()
    served = CausalLMServing(model, tokenizer)._prompts(tf.constant(texts), tf.constant(8))[0].to_list()
    trained = []
    for text, prompt in zip(texts, prompts):
        documents = tokenize_documents(tf.data.Dataset.from_tensors([text]).unbatch(), tokenizer)
        features, labels, _ = next(iter(causal_lm_batches(
            documents, tokenizer, len(prompt), 1, shuffle_buffer_size=0)))
        assert labels[0, -1] == end  # the document ends with end-of-text
        trained.append(features["token_ids"][0].numpy().tolist())
    return prompts, served, trained


def _ids(length=12):
    # 12 positions: past Mistral's window of 5.
    return np.random.default_rng(1).integers(0, VOCAB, (2, length)).astype("int32")


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_matches_reference_and_decodes_with_its_cache(kind):
    config = dict(CONFIGS[kind], vocab_size=VOCAB)
    params = random_llama_params(config)
    saved = {("model." + k if k != "lm_head.weight" else k): v for k, v in params.items()}
    model = CausalLM(load_llama(config, saved, kind=kind))
    backbone = model.backbone
    assert (backbone.num_key_value_heads, backbone.tie_embeddings) == (
        config["num_key_value_heads"], config["tie_word_embeddings"])
    ids = _ids()
    _, expected = llama_forward(params, config, ids)
    logits = np.asarray(model({"token_ids": ids, "padding_mask": np.ones_like(ids)}))
    np.testing.assert_allclose(logits, expected, atol=2e-5, rtol=1e-5)
    # KV-cached decoding (only the key/value heads cached) equals the full pass.
    cache = backbone.init_cache(batch_size=2, max_length=ids.shape[1])
    hidden, cache = backbone.call_with_cache(ids[:, :3], cache, 0)
    pieces = [np.asarray(hidden)]
    for t in range(3, ids.shape[1]):
        hidden, cache = backbone.call_with_cache(ids[:, t:t + 1], cache, t)
        pieces.append(np.asarray(hidden))
    cached = np.asarray(backbone.token_embedding(np.concatenate(pieces, 1), reverse=True))
    np.testing.assert_allclose(cached, logits, atol=2e-5, rtol=1e-5)


def test_converts_to_a_model_dir_with_its_tokenizer(tmp_path):
    import sentencepiece as spm

    folder = tmp_path / "hf_llama"
    config, params = write_llama_folder(str(folder), dtype="float16")
    lines = []
    convert_checkpoint(str(folder), str(tmp_path / "llama"), print_fn=lines.append)
    model, tokenizer, experiment = load_pretrained(str(tmp_path / "llama"))
    assert "(llama, 2 layers" in lines[0]
    assert (experiment.model.num_key_value_heads, experiment.model.rope_theta,
            experiment.model.rotary_layout) == (2, 500000.0, "half")
    ids = _ids()
    _, expected = llama_forward(params, config, ids)
    logits = np.asarray(model({"token_ids": ids, "padding_mask": np.ones_like(ids)}))
    np.testing.assert_allclose(logits, expected, atol=2e-5, rtol=1e-5)
    # The ids of the SentencePiece library (Hugging Face's LlamaTokenizer, less its <s>), on
    # real text, runs of spaces, and characters outside the pieces (byte fallback).
    reference = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    got = tokenizer.tokenize(TEXTS).to_list()
    assert got == [reference.encode(t) for t in TEXTS]
    assert any(reference.id_to_piece(i).startswith("<0x") for i in got[-1])
    # What the model reads starts with <s>, as tokenizer(text).input_ids of Hugging Face's
    # LlamaTokenizer (add_bos_token): prompts of generate and of the export, training rows.
    assert (tokenizer.start_token, tokenizer.start_id) == ("<s>", 1)
    texts = TEXTS[:2] + [""]
    expected = [[1] + reference.encode(t) for t in texts]
    assert _fed_ids(model, tokenizer, texts[:2]) == (expected[:2],) * 3
    assert _prompts([""], tokenizer, end_id=2).to_list() == [[1]]
    # The exported score reads a text after <s>: the log-likelihood of the reference's logits.
    row = np.array([expected[0][:10]], "int32")
    _, reference_logits = llama_forward(params, config, row)
    log_probs = reference_logits - np.log(np.exp(reference_logits).sum(-1, keepdims=True))
    expected_score = log_probs[0, np.arange(9), row[0, 1:]].sum()
    text = reference.decode(expected[0][1:10])
    assert reference.encode(text) == expected[0][1:10]
    score = CausalLMServing(model, tokenizer).score(tf.constant([text]))
    np.testing.assert_allclose(score["log_likelihood"].numpy(), [expected_score], rtol=1e-4)

    # It fine-tunes with LoRA as the causal LM task trains any model_dir.
    config = load_experiment(None, (
        f"model.task=causal_lm,model.init_checkpoint={tmp_path / 'llama'},model.finetune=lora,"
        "data.sequence_length=16,data.global_batch_size=4,trainer.train_steps=2,"
        "trainer.log_every=1,trainer.warmup_steps=0,trainer.jit_compile=false,"
        "trainer.learning_rate=1e-2"))
    run = run_experiment(config, str(tmp_path / "tuned"), print_fn=lambda line: None)
    assert run.status == "completed"
    assert any(np.any(np.array(v)) for v in run.model.weights if "lora_b" in v.path)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_sharded_half_precision_checkpoints_import_exactly(tmp_path, dtype):
    # Two shards and their index, as save_pretrained(max_shard_size=...) writes them; the
    # reference runs on the same rounded weights, so only float32 arithmetic differs.
    folder = tmp_path / "hf"
    config, params = write_llama_folder(str(folder), dtype=dtype, shards=2)
    assert not (folder / "model.safetensors").exists()
    model = load_huggingface(str(folder)).model
    ids = _ids()
    _, expected = llama_forward(params, config, ids)
    logits = np.asarray(model({"token_ids": ids, "padding_mask": np.ones_like(ids)}))
    np.testing.assert_allclose(logits, expected, atol=2e-5, rtol=1e-5)
    if dtype != "bfloat16":
        return
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    holder = index["weight_map"]["model.norm.weight"]
    other = next(f for f in sorted(set(index["weight_map"].values())) if f != holder)
    # A tensor the index puts in a shard that does not hold it.
    moved = dict(index, weight_map=dict(index["weight_map"], **{"model.norm.weight": other}))
    index_path.write_text(json.dumps(moved))
    with pytest.raises(SafetensorsError, match=f"'model.norm.weight' is listed in {other}"):
        load_huggingface(str(folder))
    # A tensor the index does not list at all.
    del moved["weight_map"]["model.norm.weight"]
    index_path.write_text(json.dumps(moved))
    with pytest.raises(CheckpointError, match=r"index.json: tensor 'norm.weight' is missing"):
        load_huggingface(str(folder))
    # A shard the index lists that is not there.
    index_path.write_text(json.dumps(index))
    (folder / other).unlink()
    with pytest.raises(MissingFileError, match=f"index.json: shard {other} .* does not exist"):
        load_huggingface(str(folder))


@pytest.mark.parametrize("split", ["llama3", "qwen2"])
def test_tokenizer_json_byte_level_bpe_gives_the_ids_of_tokenizers(tmp_path, split):
    reference = write_byte_level_tokenizer_json(str(tmp_path), split)
    tokenizer = byte_level_bpe_of_tokenizer_json(str(tmp_path / "tokenizer.json"))
    assert tokenizer.config()["pre_tokenizer"] == split
    assert tokenizer.tokenize(TEXTS).to_list() == [
        reference.encode(t, add_special_tokens=False).ids for t in TEXTS]


@pytest.mark.parametrize("kind", ["llama3", "qwen2"])
def test_byte_level_checkpoints_convert_with_their_tokenizer_json(tmp_path, kind):
    from tokenizers import Tokenizer

    folder = tmp_path / "hf"
    hf_config = QWEN2_CONFIG if kind == "qwen2" else LLAMA_CONFIG
    config, params = write_llama_folder(str(folder), hf_config, tokenizer=kind)
    convert_checkpoint(str(folder), str(tmp_path / "out"), print_fn=lambda line: None)
    model, tokenizer, _ = load_pretrained(str(tmp_path / "out"))
    reference = Tokenizer.from_file(str(folder / "tokenizer.json"))
    assert tokenizer.tokenize(TEXTS).to_list() == [
        reference.encode(t, add_special_tokens=False).ids for t in TEXTS]
    assert tokenizer.token_to_id("<|im_end|>") == reference.token_to_id("<|im_end|>")
    # What the model reads is Hugging Face's input_ids: Llama 3's post_processor puts
    # <|begin_of_text|> first, Qwen2's nothing.
    ids = [reference.encode(t).ids for t in TEXTS[:2]]
    assert (ids[0][0] == reference.token_to_id("<|begin_of_text|>")) == (kind == "llama3")
    assert _fed_ids(model, tokenizer, TEXTS[:2]) == (ids,) * 3
    row = np.array([ids[0][:12]], "int32")
    _, expected = llama_forward(params, config, row)
    logits = np.asarray(model({"token_ids": row, "padding_mask": np.ones_like(row)}))
    np.testing.assert_allclose(logits, expected, atol=2e-5, rtol=1e-5)


def _write(folder, config, params):
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    save_file(params, str(folder / "model.safetensors"))


@pytest.mark.parametrize("change, named", [
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope_scaling"),
    ({"attention_bias": True}, "attention_bias"),
    ({"num_local_experts": 8}, "num_local_experts"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"model_type": "qwen2", "use_sliding_window": True, "max_window_layers": 1},
     "max_window_layers"),
])
def test_unsupported_config_keys_are_named(change, named):
    config = dict(LLAMA_CONFIG, vocab_size=VOCAB, **change)
    with pytest.raises(CheckpointError, match=f"config.json: {named}="):
        load_llama(config, random_llama_params(config), kind=config["model_type"])


def test_bad_tensors_and_tokenizers_are_named(tmp_path):
    folder = tmp_path / "hf"
    config, params = write_llama_folder(str(folder))
    saved = {("model." + k if k != "lm_head.weight" else k): v for k, v in params.items()}
    missing = dict(saved)
    del missing["model.layers.1.self_attn.k_proj.weight"]
    _write(folder, config, missing)
    with pytest.raises(CheckpointError, match=r"'layers.1.self_attn.k_proj.weight' is missing"):
        load_huggingface(str(folder))
    # k_proj as wide as q_proj: a checkpoint without grouped-query attention, or another config.
    wrong = dict(saved, **{"model.layers.0.self_attn.k_proj.weight": np.zeros((32, 32), "f4")})
    _write(folder, config, wrong)
    with pytest.raises(CheckpointError, match=r"'layers.0.self_attn.k_proj.weight' has shape "
                                              r"\(32, 32\), expected \(8, 32\)"):
        load_huggingface(str(folder))
    # A tokenizer.json whose split tflm does not reproduce is refused, not approximated.
    _write(folder, config, saved)
    (folder / "tokenizer.model").unlink()
    (folder / "tokenizer.json").write_text(json.dumps({
        "model": {"type": "BPE", "vocab": {}, "merges": []},
        "pre_tokenizer": {"type": "Metaspace", "replacement": "▁"}}))
    with pytest.raises(CheckpointError, match="tokenizer.json: pre_tokenizer="):
        load_huggingface(str(folder))
