import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_test_case import assert_chunked_fit_equals_whole, fit_and_measure
from tflm.data import ByteTokenizer, default_corpus_path, masked_lm_dataset
from tflm.models import MaskedLM, TransformerBackbone

TINY_BERT = dict(vocabulary_size=262, num_layers=2, num_heads=2, hidden_dim=32, intermediate_dim=64,
                 max_sequence_length=64, num_segments=2, activation="gelu", norm_epsilon=1e-12,
                 embedding_norm=True, pooler=True, dropout=0.0, attention_dropout=0.0)


def _train_and_measure(path, steps=40):
    keras.utils.set_random_seed(0)
    dataset = masked_lm_dataset([path], ByteTokenizer(), sequence_length=48, batch_size=8,
                                max_predictions=8, seed=0)
    return fit_and_measure(MaskedLM(TransformerBackbone(**TINY_BERT)), dataset, steps, 300)


def test_trains_on_embedded_corpus():
    before, after = _train_and_measure(default_corpus_path())
    assert after < before - 1.0


def test_trains_on_chinese_poems(shared_data):
    before, after = _train_and_measure(str(shared_data / "zh_tang_song_poems.txt"))
    assert after < before - 0.5


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    x = {
        "token_ids": rng.integers(6, 262, (3, 12)).astype("int32"),
        "padding_mask": np.ones((3, 12), "int32"),
        "segment_ids": np.zeros((3, 12), "int32"),
        "mask_positions": np.sort(rng.integers(1, 11, (3, 4)), axis=1).astype("int32"),
    }
    return x, rng.integers(6, 262, (3, 4)).astype("int32"), np.array(
        [[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], "float32")


def test_predicts_only_masked_positions():
    model = MaskedLM(TransformerBackbone(**TINY_BERT))
    x, _, _ = _batch()
    logits = model(x)
    assert logits.shape == (3, 4, 262)
    assert logits.dtype == "float32"
    # Logits at position p equal the head applied to the backbone's hidden state at p.
    hidden = model.backbone(x)["sequence_output"]
    from tflm.layers.feed_forward import activate

    p = x["mask_positions"][1, 2]
    h = model.head_norm(activate(model.head_dense(hidden[1:2, p : p + 1]), "gelu"))
    expected = model.backbone.token_embedding(h, reverse=True) + model.head_bias
    np.testing.assert_allclose(np.asarray(logits)[1, 2], np.asarray(expected)[0, 0], atol=1e-5)


def test_save_and_load_reproduce_outputs(tmp_path):
    model = MaskedLM(TransformerBackbone(**TINY_BERT))
    x, y, w = _batch()
    model.fit(x, y, sample_weight=w, epochs=2, verbose=0)
    path = str(tmp_path / "bert.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert isinstance(restored, MaskedLM)
    np.testing.assert_array_equal(np.asarray(restored(x)), np.asarray(model(x)))


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_logits_float32_under_mixed_precision(policy):
    model = MaskedLM(TransformerBackbone(**TINY_BERT, dtype=policy))
    x, y, w = _batch()
    assert model(x).dtype == "float32"
    history = model.fit(x, y, sample_weight=w, epochs=2, verbose=0)
    assert all(np.isfinite(history.history["loss"]))


def test_rejects_decoder_backbone():
    with pytest.raises(ValueError, match="bidirectional"):
        MaskedLM(TransformerBackbone(**dict(TINY_BERT, causal=True)))



def test_fit_with_a_chunked_loss_equals_the_whole_logits():
    """`loss_chunk_size` (5 does not divide the 3 x 4 masked positions, some of weight 0):
    the same losses, accuracies and weights (the head's bias included) after two steps of
    `fit` with XLA."""
    x, y, w = _batch()
    assert_chunked_fit_equals_whole(
        lambda chunk: MaskedLM(TransformerBackbone(**TINY_BERT), loss_chunk_size=chunk), 5,
        x, y, w, jit_compile=True)


def test_chunked_loss_sums_with_next_sentence_prediction():
    """Both terms and every gradient equal `loss_sums` of the whole logits."""
    x, y, w = _batch()
    y = {"masked_lm": y, "next_sentence": np.array([0, 1, 1], "int32")}
    w = {"masked_lm": w, "next_sentence": np.ones(3, "float32")}
    model = MaskedLM(TransformerBackbone(**TINY_BERT), next_sentence_prediction=True,
                     next_sentence_weight=0.5, loss_chunk_size=5)
    results = []
    for chunked in (False, True):
        with tf.GradientTape() as tape:
            if chunked:
                sums, weights = model.chunked_loss_sums(x, y, w, label_smoothing=0.1)
            else:
                sums, weights = model.loss_sums(y, model(x, training=True), w, 0.1)
            loss = tf.reduce_sum(sums / weights)
        grads = tape.gradient(loss, model.trainable_variables)
        results.append([sums, weights] + [g for g in grads if g is not None])
    assert len(results[0]) == len(results[1])
    for a, b in zip(*results):
        np.testing.assert_allclose(tf.convert_to_tensor(b), tf.convert_to_tensor(a),
                                   rtol=1e-5, atol=1e-7)
