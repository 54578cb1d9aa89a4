"""Weight-only int8 and float16 exports (`tflm.export.quantize`)."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tflm.data import ByteTokenizer
from tflm.experiment import export_saved_model, load_experiment, serving_module
from tflm.export.quantize import QuantizeError, quantize_model
from tflm.models import CausalLM, SequenceClassifier, TransformerBackbone
from tflm.tasks import build_task, make_dataset
from tflm.training.optimizer import make_optimizer

SMALL = dict(vocabulary_size=262, num_layers=1, num_heads=2, hidden_dim=16, intermediate_dim=32,
             max_sequence_length=32, dropout=0.0, attention_dropout=0.0)

TEXT = ("It is a truth universally acknowledged, that a single man in possession of a good "
        "fortune, must be in want of a wife.\n\nHowever little known the feelings or views of "
        "such a man may be on his first entering a neighbourhood, this truth is so well fixed in "
        "the minds of the surrounding families, that he is considered the rightful property of "
        "some one or other of their daughters.\n\n")
PROMPTS = ["It is", "However", "a single man", "the minds", "must be in", "some one", "such a",
           "this truth", "fortune", "the surrounding", "their", "property", "he is",
           "on his first", "views of", "in want", "neighbourhood", "well fixed", "It", "man"]


def _weights(model):
    return {v.path: np.asarray(v) for v in model.weights}


def test_kernels_are_within_half_a_step_and_the_float_model_is_left_alone():
    keras.utils.set_random_seed(0)
    model = CausalLM(TransformerBackbone(**SMALL, causal=True, tie_embeddings=False))
    before = _weights(model)
    int8, float16 = _weights(quantize_model(model, "int8")), _weights(quantize_model(model, "float16"))
    for path, value in _weights(model).items():  # the float model keeps its float32 weights
        assert value.dtype == np.float32
        np.testing.assert_array_equal(value, before[path])

    quantized = [path for path, value in int8.items() if value.dtype == np.int8]
    kernels = [path for path in before if path.endswith("/kernel") or "token_embedding/" in path]
    assert sorted(quantized) == sorted(kernels)
    # The backbone's name has a counter when other models were built in this process.
    positions = [path for path in int8 if path.endswith("/position_embedding/embeddings")]
    assert len(positions) == 1 and int8[positions[0]].dtype == np.float32
    for path in quantized:
        w, q, scale = before[path], int8[path].astype(np.float32), int8[path + "_scale"]
        # A token table has a scale per row (token); a kernel, per output channel (column).
        scale = scale[:, None] if path.endswith("token_embedding/embeddings") else scale[None, :]
        assert np.all(np.abs(w - q / scale) <= 0.5 / scale * (1 + 1e-6)), path
        assert np.abs(q).max() == 127  # the largest weight of a channel takes the full range
        assert float16[path].dtype == np.float16
        np.testing.assert_array_equal(float16[path], w.astype(np.float16))
    assert sorted(float16) == sorted(before)  # float16 rounds the same kernels, adds nothing


def test_an_unknown_mode_is_an_error_naming_the_modes():
    model = CausalLM(TransformerBackbone(**SMALL, causal=True))
    assert quantize_model(model, "none") is model and quantize_model(model, None) is model
    with pytest.raises(QuantizeError, match="quantize='int4': expected one of none, int8, float16"):
        quantize_model(model, "int4")


@pytest.fixture(scope="module")
def trained_lm(tmp_path_factory):
    """A 2-layer byte GPT trained for 200 steps (seconds) on one repeated paragraph."""
    text = tmp_path_factory.mktemp("text") / "text.txt"
    text.write_text(TEXT * 20)
    config = load_experiment("configs/tiny_gpt.yaml", ",".join([
        f"data.input_path={text}", "data.sequence_length=32", "data.global_batch_size=32",
        "data.eval_every_nth_document=0", "model.max_sequence_length=48", "model.hidden_dim=64",
        "model.intermediate_dim=128", "model.num_heads=2", "trainer.learning_rate=5e-3",
        "trainer.train_steps=200", "trainer.warmup_steps=10"]))
    keras.utils.set_random_seed(0)
    model = build_task(config.model)
    model.compile(optimizer=make_optimizer(config.trainer, model))
    model.fit(make_dataset(config), steps_per_epoch=200, epochs=1, verbose=0)
    return model


def _variables_bytes(export_path):
    folder = os.path.join(export_path, "variables")
    return sum(os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder))


def test_int8_export_generates_and_scores_as_the_float_one(tmp_path, trained_lm):
    """The int8 export (XLA decoding, op-checked at export) against the float export's
    signatures (the same serving module, unsaved). Measured: 20/20 prompts with the same
    12 greedy bytes (16 distinct continuations), log-likelihoods within 0.003 nats per
    byte, variables 0.35 of the float32 bytes; asserted: 18/20, 0.01, 0.4."""
    tokenizer = ByteTokenizer()
    path = export_saved_model(trained_lm, tokenizer, str(tmp_path), quantize="int8",
                              warmup=False, jit_compile=True)
    served = tf.saved_model.load(path).signatures
    float_module = serving_module(trained_lm, tokenizer)
    args = {"prompts": tf.constant(PROMPTS), "max_new_tokens": tf.constant(12),
            "temperature": tf.constant(0.0), "top_k": tf.constant(0), "top_p": tf.constant(1.0),
            "seed": tf.constant(0, tf.int64)}
    got = served["generate"](**args)["text"].numpy()
    expected = float_module.generate(**args)["text"].numpy()
    assert len(set(expected)) > 5  # trained: the continuations depend on the prompt
    assert np.mean(got == expected) >= 0.9

    texts = tf.constant([TEXT[:40], TEXT[100:160], "Some text it has not seen."])
    got, expected = served["score"](text=texts), float_module.score(texts)
    per_byte = np.abs(got["log_likelihood"].numpy() - expected["log_likelihood"].numpy()) / \
        expected["num_tokens"].numpy()
    assert per_byte.max() < 0.01

    # A quarter of the kernels' float32 bytes, with the float biases, norms, position table
    # and scales: 0.35 of the float32 bytes for this tiny model (0.27 for 4 x 256).
    float_bytes = sum(np.asarray(v).nbytes for v in trained_lm.weights)
    assert _variables_bytes(path) < 0.4 * float_bytes


def test_a_classifier_exported_int8_or_float16_answers_close_to_float(tmp_path):
    keras.utils.set_random_seed(0)
    model = SequenceClassifier(TransformerBackbone(**SMALL, pooler=True), 3,
                               label_names=["a", "b", "c"])
    texts = tf.constant(["A man sleeps.", "It rains all day", ""])
    float_module = serving_module(model, ByteTokenizer())
    expected = float_module.classify(texts)["probabilities"]
    for mode, tolerance in (("int8", 1e-2), ("float16", 1e-3)):
        path = export_saved_model(model, ByteTokenizer(), str(tmp_path / mode), quantize=mode,
                                  warmup=False)
        got = tf.saved_model.load(path).signatures["classify"](text=texts)["probabilities"]
        np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=tolerance)
