"""Stop strings cut the text where the earliest of them starts, as a Python reference does,
whatever regular-expression characters they hold; none (or only empty ones) cut nothing;
`generate` returns the text before the stop string."""

import random

import numpy as np
import tensorflow as tf

from tflm.generation.stop_strings import cut_at_stop_strings


def _reference(text, stop_strings):
    starts = [text.find(s) for s in stop_strings if s and s in text]
    return (text[:min(starts)], True) if starts else (text, False)


def test_the_earliest_stop_string_cuts_as_the_reference_does():
    rng = random.Random(0)
    alphabet = "ab.*+?()[]{}|^$\\\n é中"
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
             for _ in range(300)]
    for _ in range(20):
        stops = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 3)))
                 for _ in range(rng.randint(1, 3))]
        cut, stopped = cut_at_stop_strings(tf.constant(texts), tf.constant(stops))
        expected = [_reference(t, stops) for t in texts]
        assert [t.decode("utf-8") for t in cut.numpy()] == [t for t, _ in expected], stops
        np.testing.assert_array_equal(stopped.numpy(), [s for _, s in expected])


def test_no_stop_strings_cut_nothing_in_a_graph():
    texts = tf.constant(["a\nb", ""])
    cut = tf.function(cut_at_stop_strings)
    for stops in ([], [""]):
        text, stopped = cut(texts, tf.constant(stops, tf.string))
        assert text.numpy().tolist() == [b"a\nb", b""] and not stopped.numpy().any()
    text, stopped = cut(texts, tf.constant(["\n"]))
    assert text.numpy().tolist() == [b"a", b""] and stopped.numpy().tolist() == [True, False]


def test_generate_returns_the_text_before_the_stop_string():
    import keras

    from tflm.data import ByteTokenizer
    from tflm.generation import generate
    from tflm.models import CausalLM, TransformerBackbone

    keras.utils.set_random_seed(0)
    model = CausalLM(TransformerBackbone(
        vocabulary_size=262, num_layers=1, num_heads=2, hidden_dim=16, intermediate_dim=32,
        max_sequence_length=32, causal=True, dropout=0.0, attention_dropout=0.0))
    options = dict(max_new_tokens=8, tokenizer=ByteTokenizer(), jit_compile=False,
                   min_new_tokens=8)
    full = generate(model, ["It is", "a truth"], **options)
    stop = full[1][1:3]  # ASCII (the random model's first text is not all valid UTF-8)
    assert stop.isascii() and stop.isprintable() and stop not in full[0]
    cut = generate(model, ["It is", "a truth"], stop_strings=[stop], **options)
    assert cut == [full[0], full[1][:1]]
