"""Bad requests through exported SavedModels: each gets an InvalidArgument error naming the
parameter (what TF Serving returns to the client) or a defined, documented result; none
crashes the process or allocates beyond the model's positions."""

import numpy as np
import pytest
import tensorflow as tf

from tflm.data import ByteTokenizer
from tflm.experiment import export_saved_model
from tflm.models import CausalLM, MaskedLM, SequenceClassifier, TransformerBackbone

SMALL = dict(vocabulary_size=262, num_layers=1, num_heads=2, hidden_dim=16, intermediate_dim=32,
             max_sequence_length=32, dropout=0.0, attention_dropout=0.0)
POSITIONS = SMALL["max_sequence_length"]
INVALID_UTF8 = b"ab\xff\xc3c"  # a stray byte and a cut two-byte character
REPAIRED = "ab\ufffd\ufffdc".encode()


def _export(tmp_path_factory, model, name):
    path = export_saved_model(model, ByteTokenizer(), str(tmp_path_factory.mktemp(name)),
                              warmup=False)
    return tf.saved_model.load(path).signatures


@pytest.fixture(scope="module")
def causal(tmp_path_factory):
    return _export(tmp_path_factory, CausalLM(TransformerBackbone(**SMALL, causal=True)),
                   "causal")


@pytest.fixture(scope="module")
def masked_lm():
    return MaskedLM(TransformerBackbone(**SMALL))


@pytest.fixture(scope="module")
def masked(tmp_path_factory, masked_lm):
    return _export(tmp_path_factory, masked_lm, "masked")


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return _export(tmp_path_factory,
                   SequenceClassifier(TransformerBackbone(**SMALL, pooler=True), 2), "classify")


def _generate(causal, prompts=("It is",), **overrides):
    args = {"prompts": tf.constant(list(prompts), tf.string), "max_new_tokens": tf.constant(4),
            "temperature": tf.constant(0.0), "top_k": tf.constant(0),
            "top_p": tf.constant(1.0), "seed": tf.constant(0, tf.int64)}
    args.update({k: tf.constant(v, args[k].dtype) for k, v in overrides.items()})
    return {k: v.numpy() for k, v in causal["generate"](**args).items()}


def _beams(causal, prompts, max_new_tokens=4, length_penalty=0.6):
    out = causal["beam_search"](prompts=tf.constant(prompts, tf.string),
                                max_new_tokens=tf.constant(max_new_tokens),
                                length_penalty=tf.constant(length_penalty))
    return {k: v.numpy() for k, v in out.items()}


@pytest.mark.parametrize("parameter, value, message", [
    ("temperature", -1.0, r"temperature: -1; must be finite and >= 0"),
    ("temperature", float("nan"), r"temperature: nan; must be finite"),
    ("top_k", -1, r"top_k: -1; must be >= 0 \(0: no limit\)"),
    ("top_p", 0.0, r"top_p: 0; must be in \(0, 1\]"),
    ("top_p", 1.5, r"top_p: 1.5; must be in \(0, 1\]"),
    ("max_new_tokens", 0, r"max_new_tokens: 0; must be at least 1"),
    ("max_new_tokens", -1, r"max_new_tokens: -1; must be at least 1"),
])
def test_generate_names_the_bad_parameter_and_its_value(causal, parameter, value, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        _generate(causal, **{parameter: value})


def test_beam_search_and_fill_mask_name_their_bad_parameters(causal, masked):
    with pytest.raises(tf.errors.InvalidArgumentError, match="length_penalty: nan; must be"):
        _beams(causal, ["a"], length_penalty=float("nan"))
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_new_tokens: -1; must be"):
        _beams(causal, ["a"], max_new_tokens=-1)
    for top_k, message in ((0, "top_k: 0; must be at least 1"),
                           (10**9, "top_k: 1000000000; must be at most the vocabulary size "
                                   r"\(262\)")):
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            masked["fill_mask"](text=tf.constant(["a[MASK]"]), top_k=tf.constant(top_k))


def test_max_new_tokens_is_capped_at_the_models_positions(causal):
    """Each row gets at most the positions its prompt leaves: prompt + new tokens <= 32; a huge
    request allocates only that and answers as a request of exactly that many."""
    prompts = ["", "ab", "x" * 29]  # 1 (end-of-text), 2 and 29 prompt tokens
    huge = _generate(causal, prompts, max_new_tokens=10**9)
    exact = _generate(causal, prompts, max_new_tokens=POSITIONS - 1)
    for key in ("text", "num_tokens"):
        np.testing.assert_array_equal(huge[key], exact[key])
    assert np.all(huge["num_tokens"] <= [31, 30, 3]) and huge["num_tokens"][2] >= 1
    # A row's result does not depend on the cap of the other rows of its batch.
    alone = _generate(causal, ["ab"], max_new_tokens=10**9)
    assert alone["text"][0] == huge["text"][1]
    beams = _beams(causal, prompts, max_new_tokens=10**9)
    assert np.all(beams["num_tokens"] <= [31, 30, 3])


def test_a_long_prompt_keeps_its_last_tokens(causal):
    """100k characters: the prompt keeps its last 31 tokens (room for one new one)."""
    rng = np.random.default_rng(0)
    long = "".join(rng.choice(list("abcdefgh "), 100_000))
    out = _generate(causal, [long, long[-31:]], max_new_tokens=5)
    assert out["prompt_truncated"].tolist() == [True, False]
    assert out["num_tokens"].tolist() == [1, 1]
    assert out["text"][0] == out["text"][1]
    scored = causal["score"](text=tf.constant([long]))
    assert scored["truncated"].numpy().tolist() == [True]
    assert scored["num_tokens"].numpy().tolist() == [POSITIONS - 1]


def test_defined_sampling_settings(causal):
    prompts = ["It is", "a"]
    greedy = _generate(causal, prompts, max_new_tokens=6)
    # temperature 0 is greedy whatever top_k, top_p and seed; top_k 1 is greedy at any
    # temperature; top_k beyond the vocabulary is no limit.
    for settings in ({"top_k": 5, "top_p": 0.5, "seed": 9}, {"temperature": 2.0, "top_k": 1}):
        np.testing.assert_array_equal(_generate(causal, prompts, max_new_tokens=6,
                                                **settings)["text"], greedy["text"])
    sampled = dict(max_new_tokens=6, temperature=1.0, seed=3)
    np.testing.assert_array_equal(_generate(causal, prompts, top_k=10**6, **sampled)["text"],
                                  _generate(causal, prompts, top_k=0, **sampled)["text"])
    # Seeds are any int64: a negative one is a seed like the others, reproducibly.
    first = _generate(causal, prompts, max_new_tokens=6, temperature=1.0, seed=-5)
    again = _generate(causal, prompts, max_new_tokens=6, temperature=1.0, seed=-5)
    np.testing.assert_array_equal(first["text"], again["text"])


def test_empty_prompts_and_empty_batches(causal, masked, classifier):
    out = _generate(causal, ["", "a"])
    assert out["num_tokens"].tolist()[0] >= 1 and out["prompt_truncated"].tolist() == [False] * 2
    assert _generate(causal, [])["text"].shape == (0,)
    assert _beams(causal, [""])["num_tokens"][0] >= 1
    assert _beams(causal, [])["text"].shape == (0,)
    empty = tf.constant([], tf.string)
    assert causal["score"](text=empty)["perplexity"].shape == (0,)
    filled = masked["fill_mask"](text=tf.constant(["", "[MASK]"]), top_k=tf.constant(2))
    assert filled["has_mask"].numpy().tolist() == [False, True]
    assert masked["fill_mask"](text=empty, top_k=tf.constant(2))["tokens"].shape == (0, 2)
    assert masked["encode"](text=tf.constant([""]))["pooled_output"].shape == (1, 16)
    assert masked["encode"](text=empty)["pooled_output"].shape == (0, 16)
    probabilities = classifier["classify"](text=tf.constant([""]))["probabilities"].numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)
    assert classifier["classify"](text=empty)["probabilities"].shape == (0, 2)


def test_invalid_utf8_is_repaired_as_in_training(causal, masked, classifier):
    """Each invalid sequence is read as U+FFFD, as the data pipeline reads training text."""
    texts = tf.constant([INVALID_UTF8, REPAIRED])
    out = _generate(causal, [INVALID_UTF8, REPAIRED], max_new_tokens=5)
    assert out["text"][0] == out["text"][1]
    # Rows of one batch may differ in the last bit of a float.
    scored = causal["score"](text=texts)["log_likelihood"].numpy()
    np.testing.assert_allclose(scored[0], scored[1], rtol=1e-6)
    probabilities = classifier["classify"](text=texts)["probabilities"].numpy()
    np.testing.assert_allclose(probabilities[0], probabilities[1], atol=1e-6)
    encoded = masked["encode"](text=texts)["sequence_output"].numpy()
    np.testing.assert_allclose(encoded[0], encoded[1], atol=1e-5)
    filled = masked["fill_mask"](text=tf.constant([INVALID_UTF8 + b"[MASK]",
                                                   REPAIRED + b"[MASK]"]), top_k=tf.constant(3))
    np.testing.assert_allclose(filled["scores"].numpy()[0], filled["scores"].numpy()[1],
                               atol=1e-6)


def _stop_at(causal, stop_strings, prompts=("It is", "", INVALID_UTF8)):
    """generate_with_controls, greedy with the controls off, stopping at `stop_strings`."""
    args = {"prompts": tf.constant(list(prompts), tf.string), "max_new_tokens": tf.constant(8),
            "temperature": tf.constant(0.0), "top_k": tf.constant(0), "top_p": tf.constant(1.0),
            "seed": tf.constant(0, tf.int64), "repetition_penalty": tf.constant(1.0),
            "no_repeat_ngram_size": tf.constant(0), "min_new_tokens": tf.constant(0),
            "stop_token_ids": tf.zeros([0], tf.int32), "num_return_sequences": tf.constant(1),
            "stop_strings": tf.constant(stop_strings, tf.string, shape=[len(stop_strings)])}
    return {k: v.numpy() for k, v in causal["generate_with_controls"](**args).items()}


def test_stop_strings_are_plain_text(causal):
    """An empty stop string is ignored; RE2's special characters match themselves; an invalid
    UTF-8 stop string reads as U+FFFD, as request text does."""
    plain = _stop_at(causal, [])
    np.testing.assert_array_equal(_stop_at(causal, [""])["text"], plain["text"])
    assert _stop_at(causal, [""])["stopped"].tolist() == [False] * 3
    texts = [t.decode() for t in plain["text"]]
    special = [".", "(", "\\", "a|b", "^"]
    starts = [[t.find(s) for s in special if s in t] for t in texts]
    got = _stop_at(causal, special)
    assert [t.decode() for t in got["text"]] == [
        t[:min(s)] if s else t for t, s in zip(texts, starts)]
    assert got["stopped"].tolist() == [bool(s) for s in starts]
    for key, value in _stop_at(causal, [b"\xff"]).items():
        np.testing.assert_array_equal(value, _stop_at(causal, ["\ufffd"])[key], err_msg=key)


def test_fill_mask_without_a_mask_and_with_several(masked, masked_lm):
    """No [MASK]: empty candidates with score 0. Several: the first is predicted, the others
    stay [MASK] tokens of its context."""
    tokenizer = ByteTokenizer()
    out = masked["fill_mask"](text=tf.constant(["no mask here", "ab[MASK]d[MASK]"]),
                              top_k=tf.constant(3))
    assert out["has_mask"].numpy().tolist() == [False, True]
    assert out["tokens"].numpy()[0].tolist() == [b""] * 3
    assert out["scores"].numpy()[0].tolist() == [0.0] * 3
    ids = tokenizer.tokenize(tf.constant(["ab", "d"])).to_list()
    row = ([tokenizer.cls_id] + ids[0] + [tokenizer.mask_id] + ids[1] + [tokenizer.mask_id]
           + [tokenizer.sep_id])
    logits = masked_lm({"token_ids": tf.constant([row]), "padding_mask": tf.ones([1, len(row)]),
                        "segment_ids": tf.zeros([1, len(row)], tf.int32),
                        "mask_positions": tf.constant([[3]])})
    expected = tf.math.top_k(tf.nn.softmax(logits[0, 0]), k=3)
    np.testing.assert_allclose(out["scores"].numpy()[1], expected.values.numpy(), rtol=1e-5)
    # Single bytes that are not UTF-8 are answered as U+FFFD.
    words = [tokenizer.id_to_token(i).decode("utf-8", "replace").encode()
             for i in expected.indices.numpy()]
    assert out["tokens"].numpy()[1].tolist() == words
