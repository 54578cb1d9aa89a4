"""Decoding controls (repetition penalty, no-repeat n-grams, minimum new tokens, stop ids,
several sequences per prompt) of both decoders, against NumPy references of the rules."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tflm.data import ByteTokenizer
from tflm.experiment import serving_module
from tflm.generation import CausalDecoder, Seq2SeqDecoder, control_logits, generate
from tflm.models import CausalLM, Seq2SeqBackbone, Seq2SeqLM, TransformerBackbone

VOCAB, END, START, STEPS = 24, 5, 1, 16


def _numpy_controls(logits, sequence, step, penalty=1.0, ngram=0, min_new=0, stop=(), end=END):
    """The rules of `control_logits` on one row, written out: `sequence` is the context."""
    logits = np.array(logits, np.float64)
    if penalty != 1.0:
        for t in set(sequence):
            logits[t] = logits[t] / penalty if logits[t] > 0 else logits[t] * penalty
    if ngram:
        tail = sequence[len(sequence) - ngram + 1:] if ngram > 1 else []
        for s in range(len(sequence) - ngram + 1):
            if sequence[s:s + ngram - 1] == tail:
                logits[sequence[s + ngram - 1]] = -np.inf
    if step < min_new:
        logits[[end, *stop]] = -np.inf
    return logits


def test_control_logits_follow_the_rules():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, VOCAB)).astype(np.float32)
    # Row 0 (left-padded) ends with "3 4", which came before 9 and 7: with trigrams, those two
    # are banned. Row 1's last column is not part of the sequence yet.
    rows = [[-1, -1, 3, 4, 9, 3, 4, 7, 3, 4], [2, 2, 2, 6, 6, 8, 6, 2, 8, -1]]
    for penalty, ngram, min_new, stop in ((1.3, 0, 0, ()), (1.0, 3, 0, ()), (1.0, 1, 0, ()),
                                          (0.7, 2, 3, (7, 8)), (1.0, 0, 0, ())):
        got = control_logits(tf.constant(logits), tf.constant(rows, tf.int32), 9, 2, END,
                             penalty, ngram, min_new, tf.constant(stop, tf.int32)).numpy()
        for r, row in enumerate(rows):
            context = [t for t in row[:9] if t >= 0]
            expected = _numpy_controls(logits[r], context, 2, penalty, ngram, min_new, stop)
            np.testing.assert_allclose(got[r], expected, rtol=1e-6)
    banned = control_logits(tf.constant(logits), tf.constant(rows, tf.int32), 10, 0, END,
                            no_repeat_ngram_size=3).numpy()[0]
    assert np.isneginf(banned[[9, 7]]).all() and np.isfinite(np.delete(banned, [9, 7])).all()


def _causal():
    keras.utils.set_random_seed(0)
    model = CausalLM(TransformerBackbone(
        vocabulary_size=VOCAB, num_layers=1, num_heads=2, hidden_dim=16, intermediate_dim=32,
        max_sequence_length=40, causal=True, norm_first=True, dropout=0.0,
        attention_dropout=0.0))
    embeddings = model.backbone.token_embedding.embeddings
    embeddings.assign(embeddings * 20.0)  # clear-cut greedy paths (and loops)
    return model


def _seq2seq():
    keras.utils.set_random_seed(0)
    return Seq2SeqLM(Seq2SeqBackbone(
        vocabulary_size=VOCAB, num_layers=1, num_heads=2, hidden_dim=32, intermediate_dim=64,
        max_sequence_length=STEPS + 4, norm_first=True, dropout=0.0, attention_dropout=0.0,
        tie_embeddings=False))


@pytest.fixture(scope="module", params=["causal", "seq2seq"])
def case(request):
    """`(decoder_for(end_id), inputs, next_logits(row, new), context(row))` of one model."""
    if request.param == "causal":
        model, inputs = _causal(), [[7, 8, 9], [10, 11]]

        def next_logits(row, new):
            ids = tf.constant([inputs[row] + new])
            return model({"token_ids": ids, "padding_mask": tf.ones_like(ids)})[0, -1].numpy()

        return (lambda end: CausalDecoder(model, end_id=end), inputs, next_logits,
                lambda row: list(inputs[row]))
    model, inputs = _seq2seq(), [[3, 4, 5, 6], [10, 11, 12]]

    def next_logits(row, new):
        source, target = np.array([inputs[row]]), np.array([[START] + new])
        return model({"encoder_token_ids": source, "encoder_padding_mask": np.ones_like(source),
                      "decoder_token_ids": target,
                      "decoder_padding_mask": np.ones_like(target)})[0, -1].numpy()

    return (lambda end: Seq2SeqDecoder(model, start_id=START, end_id=end), inputs, next_logits,
            lambda row: [])


def _reference(next_logits, context, row, end, steps=STEPS, **rules):
    """Greedy decoding on full forward passes, with `_numpy_controls`."""
    new = []
    for step in range(steps):
        token = int(np.argmax(_numpy_controls(next_logits(row, new), context(row) + new, step,
                                              end=end, **rules)))
        new.append(token)
        if token == end or token in rules.get("stop", ()):
            break
    return new[:-1] if new and new[-1] in rules.get("stop", ()) else new


def _rows(tokens, lengths):
    return [row[:n].tolist() for row, n in zip(tokens.numpy(), lengths.numpy())]


def _ngrams(row, n):
    return [tuple(row[s:s + n]) for s in range(len(row) - n + 1)]


def test_each_control_against_full_forward_passes(case):
    decoder_for, inputs, next_logits, context = case
    ragged = tf.ragged.constant(inputs)
    # A random model loops: greedy repeats a bigram (what no_repeat_ngram_size=2 prevents).
    plain = _rows(*decoder_for(-1).sample(ragged, STEPS))
    assert any(len(set(_ngrams(r, 2))) < len(_ngrams(r, 2)) for r in plain)
    # End-of-text: the first token of row 0, so that it ends at once without a minimum.
    end = plain[0][0]
    decoder = decoder_for(end)
    # A stop id: a token a row emits first at step `index` (>= the minimum of 3 new tokens,
    # before any end-of-text) without repeated bigrams.
    varying = {"no_repeat_ngram_size": 2, "min_new_tokens": 3}
    varied = _rows(*decoder.sample(ragged, STEPS, **varying))
    row, index = next((r, j) for r in range(2) for j in range(3, len(varied[r]))
                      if varied[r][j] not in varied[r][:j] and end not in varied[r][:j + 1])
    stop = varied[row][index]
    for controls, rules in (
            ({}, {}),
            ({"repetition_penalty": 1.8}, {"penalty": 1.8}),
            ({"no_repeat_ngram_size": 2}, {"ngram": 2}),
            ({"min_new_tokens": 4}, {"min_new": 4}),
            (dict(varying, stop_token_ids=[stop]), {"ngram": 2, "min_new": 3, "stop": (stop,)}),
            ({"repetition_penalty": 0.5, "no_repeat_ngram_size": 3, "min_new_tokens": 2,
              "stop_token_ids": [stop, 0]}, {"penalty": 0.5, "ngram": 3, "min_new": 2,
                                             "stop": (stop, 0)})):
        got = _rows(*decoder.sample(ragged, STEPS, **controls))
        expected = [_reference(next_logits, context, r, end, **rules) for r in range(2)]
        assert got == expected, controls
        beam = _rows(*decoder.beam_search(ragged, STEPS, num_beams=1, **controls))
        assert beam == got, controls  # one beam is greedy, controls included
        if rules == {}:
            assert got[0] == [end]
        if rules == {"ngram": 2}:
            for r in range(2):
                sequence = context(r) + got[r]
                assert len(set(_ngrams(sequence, 2))) == len(_ngrams(sequence, 2))
        if "min_new" in rules:
            assert all(end not in r[:rules["min_new"]] and len(r) >= rules["min_new"]
                       for r in got)
        if "stop" in rules and "penalty" not in rules:  # ends there; the stop id not returned
            assert got[row] == varied[row][:index]


def test_several_sequences_per_prompt(case):
    decoder_for, inputs, _, _ = case
    decoder, ragged = decoder_for(END), tf.ragged.constant(inputs)
    alone = decoder.sample(ragged, 6, temperature=1.5, seed=3)[0].numpy()
    tokens = decoder.sample(ragged, 6, temperature=1.5, seed=3, num_return_sequences=3)[0]
    tokens = tokens.numpy().reshape(2, 3, 6)
    np.testing.assert_array_equal(tokens[:, 0], alone)  # copy 0 draws as the prompt alone
    for row in tokens:
        assert len({tuple(t) for t in row}) == 3
    again = decoder.sample(ragged, 6, temperature=1.5, seed=3, num_return_sequences=3)[0]
    np.testing.assert_array_equal(again.numpy().reshape(2, 3, 6), tokens)
    # Beam search: the best beams, best first; the first is the one-sequence answer.
    one = decoder.beam_search(ragged, 6, num_beams=4, return_scores=True)
    top = decoder.beam_search(ragged, 6, num_beams=4, return_scores=True,
                              num_return_sequences=3)
    scores = top[2].numpy().reshape(2, 3)
    assert np.all(np.diff(scores, axis=1) <= 0)
    np.testing.assert_array_equal(top[0].numpy().reshape(2, 3, 6)[:, 0], one[0].numpy())
    np.testing.assert_array_equal(scores[:, 0], one[2].numpy())
    assert all(len({tuple(t) for t in row}) == 3 for row in top[0].numpy().reshape(2, 3, 6))


def test_generate_and_the_export_take_the_controls():
    model, tokenizer = _causal_bytes(), ByteTokenizer()
    kwargs = dict(max_new_tokens=6, tokenizer=tokenizer, jit_compile=False)
    prompts = ["It is", "a"]
    expected = generate(model, prompts, repetition_penalty=1.5, no_repeat_ngram_size=2,
                        num_return_sequences=2, temperature=1.0, seed=2, **kwargs)
    assert len(expected) == 4
    module = serving_module(model, tokenizer)
    args = {"prompts": tf.constant(prompts), "max_new_tokens": tf.constant(6),
            "temperature": tf.constant(1.0), "top_k": tf.constant(0),
            "top_p": tf.constant(1.0), "seed": tf.constant(2, tf.int64)}
    controls = {"repetition_penalty": tf.constant(1.5), "no_repeat_ngram_size": tf.constant(2),
                "min_new_tokens": tf.constant(0), "stop_token_ids": tf.constant([], tf.int32),
                "num_return_sequences": tf.constant(2), "stop_strings": tf.constant([], tf.string)}
    out = module.generate_with_controls(**args, **controls)
    texts = [t.decode() for t in out["text"].numpy()]
    assert texts == expected
    assert out["prompt_truncated"].shape == (4,)
    assert out["stopped"].numpy().tolist() == [False] * 4
    # A stop string ends each text holding it, before it; the tokens were all decoded. One
    # longer than any text (6 bytes) changes nothing.
    assert len(texts[0]) >= 3, texts
    stop = texts[0][1:3]
    cut = module.generate_with_controls(
        **args, **dict(controls, stop_strings=tf.constant([stop, "not in 6 bytes"])))
    assert [t.decode() for t in cut["text"].numpy()] == [
        t[:t.find(stop)] if stop in t else t for t in texts]
    assert cut["stopped"].numpy().tolist() == [stop in t for t in texts]
    assert cut["stopped"].numpy()[0] and cut["text"].numpy()[0].decode() == texts[0][:1]
    np.testing.assert_array_equal(cut["num_tokens"], out["num_tokens"])
    absent = module.generate_with_controls(
        **args, **dict(controls, stop_strings=tf.constant(["not in 6 bytes"])))
    np.testing.assert_array_equal(absent["text"], out["text"])
    assert absent["stopped"].numpy().tolist() == [False] * 4
    # The defaults answer as `generate`.
    off = dict(controls, repetition_penalty=tf.constant(1.0),
               no_repeat_ngram_size=tf.constant(0), num_return_sequences=tf.constant(1))
    np.testing.assert_array_equal(module.generate_with_controls(**args, **off)["text"],
                                  module.generate(**args)["text"])
    for name, value, message in (
            ("repetition_penalty", 0.0, r"repetition_penalty: 0; must be finite and > 0"),
            ("no_repeat_ngram_size", -1, r"no_repeat_ngram_size: -1; must be >= 0"),
            ("min_new_tokens", -2, r"min_new_tokens: -2; must be >= 0"),
            ("stop_token_ids", [3, 999], r"stop_token_ids: \[3 999\]; must be token ids in "
                                         r"\[0, 262\)"),
            ("num_return_sequences", 0, r"num_return_sequences: 0; must be at least 1")):
        bad = dict(controls, **{name: tf.constant(value, controls[name].dtype)})
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            module.generate_with_controls(**args, **bad)


def _causal_bytes():
    keras.utils.set_random_seed(0)
    return CausalLM(TransformerBackbone(
        vocabulary_size=262, num_layers=1, num_heads=2, hidden_dim=16, intermediate_dim=32,
        max_sequence_length=32, causal=True, dropout=0.0, attention_dropout=0.0))
