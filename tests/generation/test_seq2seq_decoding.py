"""Seq2SeqDecoder: cached decoding of a Seq2SeqLM against full forward passes."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tflm.generation import Seq2SeqDecoder, right_pad
from tflm.models import Seq2SeqBackbone, Seq2SeqLM

VOCAB, LENGTH, START, END = 16, 12, 1, 14
# The second source is padded in a batch with the first.
SOURCES = [[3, 4, 5, 6, 7, 8, 9], [10, 11, 12]]


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    model = Seq2SeqLM(Seq2SeqBackbone(
        vocabulary_size=VOCAB, num_layers=2, num_heads=2, hidden_dim=32, intermediate_dim=64,
        max_sequence_length=LENGTH, norm_first=True, dropout=0.0, attention_dropout=0.0,
        tie_embeddings=False))
    # (A tied random model repeats its input token; this one's greedy targets differ by
    # source, and the second ends with END before the decoder's positions do.)
    return model


def _log_probs(model, source, target):
    """Full forward pass: `(len(target), VOCAB)` log-probabilities of each target position
    (the decoder reads START and all target tokens but the last)."""
    source, decoder_ids = np.array([source], np.int32), np.array([[START] + target[:-1]], np.int32)
    logits = model({"encoder_token_ids": source, "encoder_padding_mask": np.ones_like(source),
                    "decoder_token_ids": decoder_ids,
                    "decoder_padding_mask": np.ones_like(decoder_ids)})[0]
    return tf.nn.log_softmax(logits).numpy()


def _uncached_greedy(model, source, steps):
    """The full model on the growing target for every new token."""
    new = []
    for _ in range(steps):
        # The placeholder's position: the next token given START and `new`.
        token = int(np.argmax(_log_probs(model, source, new + [0])[-1]))
        new.append(token)
        if token == END:
            break
    return new


def _rows(tokens, lengths):
    return [row[:n].tolist() for row, n in zip(tokens.numpy(), lengths.numpy())]


def test_cached_greedy_equals_uncached_greedy_alone_or_batched(model):
    decoder = Seq2SeqDecoder(model, start_id=START, end_id=END)
    # More than the decoder's positions hold: each row stops at its last position.
    tokens, lengths = decoder.sample(tf.ragged.constant(SOURCES), LENGTH + 3)
    assert tokens.shape == (2, LENGTH + 3)
    expected = [_uncached_greedy(model, source, LENGTH) for source in SOURCES]
    assert _rows(tokens, lengths) == expected
    assert [len(row) for row in expected] == [LENGTH, 8]  # out of positions; END
    compiled = tf.function(decoder.sample_padded, jit_compile=True)
    xla_tokens, xla_lengths = compiled(*right_pad(tf.ragged.constant(SOURCES), 0), LENGTH)
    assert _rows(xla_tokens, xla_lengths) == expected


def test_beam_search_scores_are_the_models_and_one_beam_is_greedy(model):
    decoder = Seq2SeqDecoder(model, start_id=START, end_id=END)
    sources = tf.ragged.constant(SOURCES)
    greedy, greedy_lengths = decoder.sample(sources, 8)
    beam, beam_lengths = decoder.beam_search(sources, 8, num_beams=1)
    np.testing.assert_array_equal(beam.numpy(), greedy.numpy())
    np.testing.assert_array_equal(beam_lengths.numpy(), greedy_lengths.numpy())

    penalty = 0.8
    tokens, lengths, scores = decoder.beam_search(sources, 8, num_beams=3, length_penalty=penalty,
                                                  return_scores=True)
    for source, target, score in zip(SOURCES, _rows(tokens, lengths), scores.numpy()):
        log_p = _log_probs(model, source, target)[np.arange(len(target)), target].sum()
        np.testing.assert_allclose(score, log_p / ((5 + len(target)) / 6) ** penalty, rtol=1e-4)


def test_sampling_is_seeded_per_source_and_top_k_one_is_greedy(model):
    decoder = Seq2SeqDecoder(model, start_id=START, end_id=END)
    sources = tf.ragged.constant(SOURCES)
    settings = dict(temperature=1.5, top_p=0.95, seed=7)
    a, _ = decoder.sample(sources, 8, **settings)
    b, _ = decoder.sample(sources, 8, **settings)
    c, _ = decoder.sample(sources, 8, **{**settings, "seed": 8})
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not np.array_equal(a.numpy(), c.numpy())
    alone, _ = decoder.sample(tf.ragged.constant(SOURCES[1:]), 8, **settings)
    np.testing.assert_array_equal(alone.numpy()[0], a.numpy()[1])

    greedy, _ = decoder.sample(sources, 8)
    top_one, _ = decoder.sample(sources, 8, temperature=2.0, top_k=1, seed=3)
    np.testing.assert_array_equal(top_one.numpy(), greedy.numpy())


def test_generate_reads_sources_as_training_does_and_returns_the_decoders_text():
    from tflm.data import ByteTokenizer
    from tflm.generation import generate
    from tflm.tasks.seq2seq import encode_seq2seq

    tokenizer = ByteTokenizer()
    keras.utils.set_random_seed(1)
    byte_model = Seq2SeqLM(Seq2SeqBackbone(
        vocabulary_size=tokenizer.vocabulary_size, num_layers=1, num_heads=2, hidden_dim=16,
        intermediate_dim=32, max_sequence_length=8, dropout=0.0, attention_dropout=0.0))
    sources = ["abc", "a longer source than eight", ""]
    texts = generate(byte_model, sources, max_new_tokens=5, tokenizer=tokenizer,
                     jit_compile=False, num_beams=2, stop_strings=["\x00"])
    # The encoder rows of training (cut to 8 with [end] kept), decoded by the decoder.
    features, _, _ = encode_seq2seq(tokenizer, tf.constant(sources), tf.constant(["", "", ""]),
                                    8, 2)
    rows = tf.RaggedTensor.from_tensor(features["encoder_token_ids"],
                                       lengths=tf.reduce_sum(features["encoder_padding_mask"], 1))
    start, end = tokenizer.cls_id, tokenizer.end_of_text_id
    decoder = Seq2SeqDecoder(byte_model, start_id=start if start is not None else end,
                             end_id=end)
    tokens, lengths = decoder.beam_search(rows, max_new_tokens=5, num_beams=2)
    expected = tokenizer.detokenize(tf.RaggedTensor.from_tensor(tokens, lengths=lengths))
    expected = [t.split(b"\x00")[0].decode("utf-8", "replace") for t in expected.numpy()]
    assert texts == expected and len(texts) == 3
