"""Seq2SeqLM: an encoder and a cross-attending decoder."""

import keras
import numpy as np
import pytest

from tflm.models import Seq2SeqBackbone, Seq2SeqLM

VOCAB = 16


def _model(norm_first=True, shared_embeddings=True, seed=0):
    keras.utils.set_random_seed(seed)
    return Seq2SeqLM(Seq2SeqBackbone(
        vocabulary_size=VOCAB, num_layers=2, num_decoder_layers=2, num_heads=2, hidden_dim=32,
        intermediate_dim=64, max_sequence_length=16, norm_first=norm_first, dropout=0.0,
        attention_dropout=0.0, shared_embeddings=shared_embeddings))


def _inputs(source, target, source_mask=None):
    source, target = np.asarray(source, np.int32), np.asarray(target, np.int32)
    return {"encoder_token_ids": source,
            "encoder_padding_mask": np.ones_like(source) if source_mask is None else source_mask,
            "decoder_token_ids": target, "decoder_padding_mask": np.ones_like(target)}


def test_shapes_shared_embeddings_and_config_round_trip(tmp_path):
    model = _model()
    rng = np.random.default_rng(0)
    inputs = _inputs(rng.integers(0, VOCAB, (2, 7)), rng.integers(0, VOCAB, (2, 5)))
    logits = model(inputs)
    assert logits.shape == (2, 5, VOCAB) and logits.dtype == "float32"
    backbone = model.backbone
    assert backbone.encoder.token_embedding is backbone.decoder.token_embedding
    # One embedding table, counted once.
    assert len([w for w in model.weights if "token_embedding" in w.path]) == 1
    separate = _model(shared_embeddings=False)
    assert separate.count_params() == model.count_params() + VOCAB * 32

    path = str(tmp_path / "seq2seq.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert restored.backbone.encoder.token_embedding is restored.backbone.decoder.token_embedding
    np.testing.assert_allclose(restored(inputs), logits, atol=1e-6)
    assert restored.backbone.get_config() == backbone.get_config()


def test_no_decoder_position_sees_a_later_target_token():
    model = _model()
    rng = np.random.default_rng(1)
    source, target = rng.integers(0, VOCAB, (1, 6)), rng.integers(0, VOCAB, (1, 6))
    before = model(_inputs(source, target)).numpy()
    changed = target.copy()
    changed[0, 4] = (changed[0, 4] + 1) % VOCAB
    after = model(_inputs(source, changed)).numpy()
    np.testing.assert_allclose(after[:, :4], before[:, :4], atol=1e-6)
    assert not np.allclose(after[:, 4:], before[:, 4:])


def test_source_padding_changes_nothing_and_the_source_matters():
    model = _model(norm_first=False)
    rng = np.random.default_rng(2)
    source, target = rng.integers(1, VOCAB, (1, 5)), rng.integers(0, VOCAB, (1, 4))
    alone = model(_inputs(source, target)).numpy()
    padded = np.concatenate([source, rng.integers(1, VOCAB, (1, 3))], axis=1)
    mask = np.array([[1] * 5 + [0] * 3], np.int32)
    np.testing.assert_allclose(model(_inputs(padded, target, mask)).numpy(), alone, atol=1e-5)
    other = (source + 1) % VOCAB
    assert np.abs(model(_inputs(other, target)).numpy() - alone).max() > 1e-4


@pytest.mark.parametrize("norm_first", [True, False])
def test_cached_decoding_equals_the_full_forward(norm_first):
    model = _model(norm_first=norm_first)
    backbone = model.backbone
    rng = np.random.default_rng(3)
    source = rng.integers(1, VOCAB, (2, 6)).astype(np.int32)
    source_mask = np.array([[1] * 6, [1] * 4 + [0] * 2], np.int32)
    target = rng.integers(0, VOCAB, (2, 5)).astype(np.int32)
    full = model(_inputs(source, target, source_mask)).numpy()

    memory = backbone.encode(source, source_mask)
    cross = backbone.decoder.cross_attention_caches(memory)  # once per request
    cache = backbone.decoder.init_cache(2, 5)
    steps = []
    for t in range(5):
        hidden, cache = backbone.decoder.call_with_cache(
            target[:, t:t + 1], cache, t, cross_attention_caches=cross,
            encoder_padding_mask=source_mask)
        steps.append(backbone.token_embedding(hidden, reverse=True).numpy())
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5)


def test_learns_to_reverse_a_sequence():
    """Reversal needs the source at every step: it fails if cross-attention carries nothing."""
    model = _model()
    rng = np.random.default_rng(4)
    bos, length, n = 1, 5, 2048
    source = rng.integers(2, VOCAB, (n, length)).astype(np.int32)
    target = np.concatenate([np.full((n, 1), bos, np.int32), source[:, ::-1]], axis=1)
    features = _inputs(source, target[:, :-1])
    model.compile(optimizer=keras.optimizers.Adam(5e-3), loss="auto", weighted_metrics="auto")
    model.fit(features, target[:, 1:], batch_size=64, epochs=10, verbose=0)

    test_source = rng.integers(2, VOCAB, (64, length)).astype(np.int32)
    decoded = np.full((64, 1), bos, np.int32)
    for _ in range(length):  # greedy, re-running the decoder on its own output
        logits = model(_inputs(test_source, decoded))
        decoded = np.concatenate([decoded, np.argmax(logits[:, -1], -1)[:, None]], axis=1)
    exact = np.mean(np.all(decoded[:, 1:] == test_source[:, ::-1], axis=1))
    assert exact >= 0.9, exact
