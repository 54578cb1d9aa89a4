"""Hugging Face T5 (original and v1.1) imports exactly (NumPy reference), decodes with its
cache as without, and converts to a seq2seq model_dir."""

import pathlib

import numpy as np
import pytest
import tensorflow as tf

from hf_fixtures import T5_CONFIG, T5_V1_1_CONFIG, padded_seq2seq_inputs, write_t5_folder
from numpy_reference import random_t5_params, t5_forward
from tflm.config import ENCODER_DECODER_KEYS, architecture_keys
from tflm.experiment import load_experiment
from tflm.generation import Seq2SeqDecoder
from tflm.generation.seq2seq_rows import seq2seq_tokens
from tflm.models import Seq2SeqLM
from tflm.models.huggingface import CheckpointError, load_huggingface, load_t5, t5_backbone_kwargs
from tflm.tasks.pretrained import convert_checkpoint, load_pretrained
from tflm.tasks.registry import architecture_value

VOCAB = 97
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def _inputs(vocab=VOCAB):
    # 20 source tokens: distances past 8 fall in the encoder's log-spaced buckets.
    return padded_seq2seq_inputs(vocab, 20, 13)


def _reference(params, config, inputs):
    return t5_forward(params, config, inputs["encoder_token_ids"], inputs["decoder_token_ids"],
                      inputs["encoder_padding_mask"], inputs["decoder_padding_mask"])


@pytest.mark.parametrize("hf_config", [T5_CONFIG, T5_V1_1_CONFIG], ids=["t5", "t5_v1_1"])
def test_t5_matches_reference(hf_config):
    config = dict(hf_config, vocab_size=VOCAB)
    params = random_t5_params(config)
    model = Seq2SeqLM(load_t5(config, params))
    inputs = _inputs()
    memory, decoded, expected_logits = _reference(params, config, inputs)
    outputs = model.backbone(inputs)
    source, target = (inputs[k].astype(bool) for k in ("encoder_padding_mask",
                                                       "decoder_padding_mask"))
    np.testing.assert_allclose(np.asarray(outputs["encoder_sequence_output"])[source],
                               memory[source], atol=1e-4)
    # With the tied head, T5's d_model ** -0.5 on the decoder output is in its final norm.
    scale = config["d_model"] ** -0.5 if config["tie_word_embeddings"] else 1.0
    np.testing.assert_allclose(np.asarray(outputs["decoder_sequence_output"])[target],
                               decoded[target] * scale, atol=1e-4)
    logits = np.asarray(model(inputs))
    assert np.abs(logits - expected_logits)[target].max() < 1e-4


def test_cached_decoding_equals_the_full_forward():
    # v1.1: d_kv (8) is not d_model / num_heads, so the cache has T5's head width.
    config = dict(T5_V1_1_CONFIG, vocab_size=VOCAB)
    model = Seq2SeqLM(load_t5(config, random_t5_params(config)))
    inputs = _inputs()
    source, mask = inputs["encoder_token_ids"][1:], inputs["encoder_padding_mask"][1:]
    # Step by step through the cache: the queries' relative bias at the cache position.
    backbone, steps = model.backbone, 6
    decoder = backbone.decoder
    cross = decoder.cross_attention_caches(backbone.encode(source, mask))
    cache, tokens, cached = decoder.init_cache(1, steps), [0], []
    for i in range(steps):
        hidden, cache = decoder.call_with_cache(np.array([[tokens[-1]]], "int32"), cache, i,
                                                cross_attention_caches=cross,
                                                encoder_padding_mask=mask)
        cached.append(np.asarray(decoder.token_embedding(hidden, reverse=True))[0, 0])
        tokens.append(int(np.argmax(cached[-1])))
    ids = np.array([tokens[:-1]], "int32")
    full = np.asarray(model({"encoder_token_ids": source, "encoder_padding_mask": mask,
                             "decoder_token_ids": ids, "decoder_padding_mask": np.ones_like(ids)}))
    np.testing.assert_allclose(np.stack(cached), full[0], atol=1e-4)
    # Seq2SeqDecoder's greedy targets, from T5's start token (pad, 0), are the same.
    greedy, _ = Seq2SeqDecoder(model, start_id=0, end_id=VOCAB).sample(
        tf.ragged.constant([source[0, :13].tolist()]), steps)
    assert greedy.numpy()[0].tolist() == tokens[1:]


@pytest.mark.parametrize("change, match", [
    ({"feed_forward_proj": "gated-silu"}, "feed_forward_proj='gated-silu'"),
    ({"is_encoder_decoder": False}, "is_encoder_decoder=False"),
])
def test_unsupported_t5_config_names_the_key(change, match):
    with pytest.raises(CheckpointError, match=match):
        load_t5(dict(T5_CONFIG, vocab_size=VOCAB, **change), {})
    with pytest.raises(CheckpointError, match="no 'd_kv'"):
        load_t5({k: v for k, v in dict(T5_CONFIG, vocab_size=VOCAB).items() if k != "d_kv"}, {})


def test_bad_t5_tensors_are_named():
    config = dict(T5_V1_1_CONFIG, vocab_size=VOCAB)
    params = random_t5_params(config)
    del params["decoder.block.0.layer.1.EncDecAttention.k.weight"]
    with pytest.raises(CheckpointError, match=r"decoder\.block\.0\.layer\.1\.EncDecAttention\.k"):
        load_t5(config, params)
    params = random_t5_params(config)
    params["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = \
        np.zeros((16, 3), np.float32)
    with pytest.raises(CheckpointError, match=r"relative_attention_bias.weight' has shape \(16, 3\)"):
        load_t5(config, params)


def test_t5_folder_converts_and_reloads_exactly(tmp_path):
    config, params = write_t5_folder(str(tmp_path / "hf_t5"))
    imported = load_huggingface(str(tmp_path / "hf_t5"))
    assert imported.kind == "t5" and imported.unused_tensors == [] and imported.head_loaded
    tokenizer = imported.tokenizer
    assert [tokenizer.token_to_id(t) for t in ("<pad>", "</s>", "<unk>")] == [0, 1, 2]
    assert (tokenizer.pad_id, tokenizer.sep_id) == (0, 1)
    # Targets start with <pad> and end with </s>, as T5's decoder_start_token_id says.
    assert seq2seq_tokens(tokenizer) == (config["decoder_start_token_id"], 1)
    ids = np.asarray(tokenizer.tokenize(["It is a truth universally acknowledged"]).to_tensor(),
                     "int32")
    ids = np.concatenate([ids, [[1]]], 1)  # T5's sources end with </s>
    inputs = {"encoder_token_ids": ids, "encoder_padding_mask": np.ones_like(ids),
              "decoder_token_ids": np.concatenate([[[0]], ids[:, :-1]], 1).astype("int32"),
              "decoder_padding_mask": np.ones_like(ids)}
    expected = _reference(params, config, inputs)[2]
    np.testing.assert_allclose(np.asarray(imported.model(inputs)), expected, atol=1e-4)
    lines = []
    convert_checkpoint(str(tmp_path / "hf_t5"), str(tmp_path / "t5"), print_fn=lines.append)
    model, _, experiment = load_pretrained(str(tmp_path / "t5"))
    assert isinstance(model, Seq2SeqLM) and "(t5, 2 layers" in lines[0]
    assert (experiment.model.position_encoding, experiment.model.head_dim,
            experiment.model.num_decoder_layers) == ("relative", 0, 1)
    np.testing.assert_allclose(np.asarray(model(inputs)), expected, atol=1e-4)


def test_t5_small_config_is_t5_small():
    # t5-small's config.json (its architecture keys) through the importer's mapping.
    t5_small = dict(T5_CONFIG, vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6,
                    num_decoder_layers=6, num_heads=8, n_positions=512)
    expected = dict(t5_backbone_kwargs(t5_small), head_dim=0)  # 0: 512 / 8 heads
    model = load_experiment(str(REPO_ROOT / "configs" / "t5_small.yaml")).model
    for key in architecture_keys(model):
        assert architecture_value(model, key) == expected.get(key, architecture_value(model, key)), key
    assert all(getattr(model, key) == expected[key] for key in ENCODER_DECODER_KEYS)
