import dataclasses
import pathlib

import keras
import numpy as np
import pytest

from tflm.config import load_experiment
from tflm.models import TransformerBackbone
from tflm.models.factory import build_backbone

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]

SMALL = dict(vocabulary_size=64, num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32,
             max_sequence_length=24, dropout=0.0, attention_dropout=0.0)
BERT_LIKE = dict(SMALL, num_segments=2, activation="gelu", norm_epsilon=1e-12,
                 embedding_norm=True, pooler=True)
GPT_LIKE = dict(SMALL, causal=True, norm_first=True, activation="gelu_tanh")
VARIANTS = {
    "bert": BERT_LIKE,
    "gpt": GPT_LIKE,
    "sinusoidal_encoder": dict(SMALL, position_encoding="sinusoidal"),
    "rotary_rms_swiglu_decoder": dict(GPT_LIKE, position_encoding="rotary", normalization="rms_norm",
                                      activation="swiglu", use_bias=False, tie_embeddings=False),
    # T5's decoder stack, alone: the relative position bias of causal buckets.
    "relative_geglu_decoder": dict(GPT_LIKE, position_encoding="relative", normalization="rms_norm",
                                   activation="geglu", use_bias=False),
    # Llama / Mistral: grouped-query (here multi-query: 1 key/value head), a sliding window.
    "llama_gqa_window_decoder": dict(GPT_LIKE, position_encoding="rotary", normalization="rms_norm",
                                     activation="swiglu", use_bias=False, qkv_bias=True,
                                     tie_embeddings=False, num_key_value_heads=1,
                                     sliding_window=4, rope_theta=500.0,
                                     rotary_layout="interleaved"),
}


def _inputs(batch=2, length=10, seed=0, vocab=64):
    rng = np.random.default_rng(seed)
    return {
        "token_ids": rng.integers(0, vocab, (batch, length)).astype("int32"),
        "padding_mask": np.ones((batch, length), "int32"),
        "segment_ids": rng.integers(0, 2, (batch, length)).astype("int32"),
    }


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_config_round_trip_and_shapes(name):
    backbone = TransformerBackbone(**VARIANTS[name])
    config = backbone.get_config()
    restored = TransformerBackbone.from_config(config)
    assert restored.get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(backbone))
    assert restored.get_config() == config
    outputs = backbone(_inputs())
    assert outputs["sequence_output"].shape == (2, 10, 16)
    assert ("pooled_output" in outputs) == backbone.pooler
    # Same number of weights for the same config: the model is fully built at construction.
    assert len(restored.weights) == len(backbone.weights)


def test_weights_exist_at_construction():
    backbone = TransformerBackbone(**BERT_LIKE)
    assert backbone.built
    # token, position, segment, embedding norm (2), 2 blocks x 12, pooler (2)
    assert len(backbone.trainable_weights) == 1 + 1 + 1 + 2 + 2 * 12 + 2


@pytest.mark.parametrize("name", ["gpt", "rotary_rms_swiglu_decoder", "relative_geglu_decoder"])
def test_decoder_has_no_causal_leak(name):
    backbone = TransformerBackbone(**VARIANTS[name])
    inputs = _inputs(batch=1, length=12)
    base = np.asarray(backbone(inputs)["sequence_output"])
    rng = np.random.default_rng(1)
    for t in (0, 4, 10):
        changed = dict(inputs, token_ids=inputs["token_ids"].copy())
        changed["token_ids"][:, t + 1 :] = rng.integers(0, 64, (1, 11 - t))
        out = np.asarray(backbone(changed)["sequence_output"])
        np.testing.assert_array_equal(out[:, : t + 1], base[:, : t + 1])
        assert not np.allclose(out[:, t + 1 :], base[:, t + 1 :])


@pytest.mark.parametrize("name", ["gpt", "sinusoidal_decoder", "rotary_rms_swiglu_decoder",
                                  "relative_geglu_decoder"])
def test_packed_documents_do_not_see_each_other(name):
    """With `document_ids`, document B of a packed row is untouched by document A's tokens
    and equals B run alone (positions from 0)."""
    sinusoidal = dict(GPT_LIKE, position_encoding="sinusoidal")
    backbone = TransformerBackbone(**VARIANTS.get(name, sinusoidal))
    ids = _inputs(batch=1, length=12)["token_ids"]
    packed = {"token_ids": ids, "padding_mask": np.ones((1, 12), "int32"),
              "document_ids": np.array([[0] * 5 + [1] * 7], "int32"),
              "positions": np.array([list(range(5)) + list(range(7))], "int32")}
    out = np.asarray(backbone(packed)["sequence_output"])
    changed = ids.copy()
    changed[:, :5] = (changed[:, :5] + 1) % 64
    out_changed = np.asarray(backbone(dict(packed, token_ids=changed))["sequence_output"])
    np.testing.assert_array_equal(out_changed[:, 5:], out[:, 5:])
    assert not np.allclose(out_changed[:, :5], out[:, :5])
    for start, end in ((0, 5), (5, 12)):
        alone = backbone({"token_ids": ids[:, start:end],
                          "padding_mask": np.ones((1, end - start), "int32")})
        np.testing.assert_allclose(out[:, start:end], alone["sequence_output"], atol=1e-5)


def test_encoder_is_bidirectional():
    backbone = TransformerBackbone(**BERT_LIKE)
    inputs = _inputs(batch=1, length=8)
    base = np.asarray(backbone(inputs)["sequence_output"])
    changed = dict(inputs, token_ids=inputs["token_ids"].copy())
    changed["token_ids"][0, -1] = (changed["token_ids"][0, -1] + 1) % 64
    assert not np.allclose(np.asarray(backbone(changed)["sequence_output"])[:, 0], base[:, 0])


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_padding_invariance(name):
    backbone = TransformerBackbone(**VARIANTS[name])
    inputs = _inputs(batch=2, length=7)
    short = backbone(inputs)
    rng = np.random.default_rng(2)
    padded = {
        "token_ids": np.concatenate([inputs["token_ids"], rng.integers(0, 64, (2, 5))], 1).astype("int32"),
        "padding_mask": np.concatenate([inputs["padding_mask"], np.zeros((2, 5), "int32")], 1),
        "segment_ids": np.concatenate([inputs["segment_ids"], np.ones((2, 5), "int32")], 1),
    }
    long = backbone(padded)
    np.testing.assert_allclose(
        np.asarray(long["sequence_output"])[:, :7], np.asarray(short["sequence_output"]), atol=1e-5
    )
    if backbone.pooler:
        np.testing.assert_allclose(
            np.asarray(long["pooled_output"]), np.asarray(short["pooled_output"]), atol=1e-5
        )


@pytest.mark.parametrize("name", ["gpt", "rotary_rms_swiglu_decoder", "relative_geglu_decoder",
                                  "llama_gqa_window_decoder"])
def test_cached_decoding_matches_full_pass(name):
    backbone = TransformerBackbone(**VARIANTS[name])
    inputs = _inputs(batch=2, length=9)
    full = np.asarray(backbone(inputs)["sequence_output"])
    cache = backbone.init_cache(batch_size=2, max_length=12)
    # (batch, layers, key and value, positions, key/value heads, head size)
    assert cache.shape == (2, 2, 2, 12, VARIANTS[name].get("num_key_value_heads", 2), 8)
    hidden, cache = backbone.call_with_cache(inputs["token_ids"][:, :4], cache, 0)
    pieces = [np.asarray(hidden)]
    for t in range(4, 9):
        hidden, cache = backbone.call_with_cache(inputs["token_ids"][:, t : t + 1], cache, t)
        pieces.append(np.asarray(hidden))
    np.testing.assert_allclose(np.concatenate(pieces, 1), full, atol=1e-5)


def test_models_saved_before_rope_theta_load():
    config = TransformerBackbone(**VARIANTS["rotary_rms_swiglu_decoder"]).get_config()
    config["rotary_max_wavelength"] = config.pop("rope_theta")
    for key in ("rotary_layout", "num_key_value_heads", "qkv_bias", "sliding_window"):
        del config[key]
    restored = TransformerBackbone.from_config(config)
    assert (restored.rope_theta, restored.num_key_value_heads) == (10000.0, 2)


@pytest.mark.parametrize("config, published", [("tinyllama_1b.yaml", 1_100_048_384),
                                               ("qwen2_0_5b.yaml", 494_032_768)])
def test_published_shapes_have_the_published_parameter_counts(config, published):
    """One block of the real shape is built (not the whole model, nor its vocabulary):
    parameters are linear in the blocks and in the vocabulary."""
    model = load_experiment(str(REPO_ROOT / "configs" / config)).model
    small = dataclasses.replace(model, num_layers=1, vocabulary_size=2)
    backbone = build_backbone(small, causal=True)
    count = (backbone.count_params() + (model.num_layers - 1) * backbone.blocks[0].count_params()
             + (model.vocabulary_size - 2) * model.hidden_dim * (1 + (not model.tie_embeddings)))
    assert count == published


def test_call_with_cache_needs_decoder():
    backbone = TransformerBackbone(**BERT_LIKE)
    with pytest.raises(ValueError, match="causal"):
        backbone.call_with_cache(np.ones((1, 1), "int32"), None, 0)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_dtypes_and_finite_gradients(policy):
    backbone = TransformerBackbone(**GPT_LIKE, dtype=policy)
    compute = keras.DTypePolicy(policy).compute_dtype
    for layer in backbone._flatten_layers(include_self=True):
        assert layer.compute_dtype == compute, layer.name
    for weight in backbone.weights:
        assert keras.backend.standardize_dtype(weight.dtype) == "float32", weight.path
    inputs = _inputs()
    import tensorflow as tf

    with tf.GradientTape() as tape:
        hidden = backbone(inputs, training=True)["sequence_output"]
        logits = backbone.token_embedding(hidden, reverse=True)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=inputs["token_ids"], logits=logits))
    assert keras.backend.standardize_dtype(hidden.dtype) == compute
    assert logits.dtype == tf.float32
    grads = tape.gradient(loss, backbone.trainable_variables)
    assert all(g is not None and np.all(np.isfinite(np.asarray(tf.convert_to_tensor(g)))) for g in grads)


def test_bad_arguments():
    with pytest.raises(ValueError, match="alibi"):
        TransformerBackbone(**dict(SMALL, position_encoding="alibi"))
    with pytest.raises(ValueError, match="divisible"):
        TransformerBackbone(**dict(SMALL, num_heads=3))


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_tensorflow_checkpoint_holds_every_weight(name, tmp_path):
    """tf.train.Checkpoint (the trainer's format) saves and restores all weights, blocks included."""
    import tensorflow as tf

    source = TransformerBackbone(**VARIANTS[name])
    for weight in source.weights:
        weight.assign(np.random.default_rng(0).standard_normal(weight.shape).astype("float32"))
    path = tf.train.Checkpoint(model=source).save(str(tmp_path / "ckpt"))
    saved = [n for n, _ in tf.train.list_variables(path) if n.startswith("model/")]
    assert len(saved) == len(source.weights)
    target = TransformerBackbone(**VARIANTS[name])
    tf.train.Checkpoint(model=target).restore(path).assert_existing_objects_matched()
    for a, b in zip(source.weights, target.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
