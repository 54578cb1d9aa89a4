import keras
import numpy as np
import pytest

from keras_test_case import assert_chunked_fit_equals_whole, fit_and_measure
from tflm.data import ByteTokenizer, causal_lm_dataset, default_corpus_path
from tflm.models import CausalLM, TransformerBackbone

TINY_GPT = dict(vocabulary_size=262, num_layers=2, num_heads=2, hidden_dim=32, intermediate_dim=64,
                max_sequence_length=64, causal=True, norm_first=True, activation="gelu_tanh",
                dropout=0.0, attention_dropout=0.0)


def _train_and_measure(path, steps=40):
    keras.utils.set_random_seed(0)
    dataset = causal_lm_dataset([path], ByteTokenizer(), sequence_length=48, batch_size=8, seed=0)
    return fit_and_measure(CausalLM(TransformerBackbone(**TINY_GPT)), dataset, steps, 500)


def test_trains_on_embedded_corpus():
    before, after = _train_and_measure(default_corpus_path())
    assert before > 5.0  # about ln(262) = 5.57 at initialization
    assert after < before - 1.0


def test_trains_on_shakespeare(shared_data):
    before, after = _train_and_measure(str(shared_data / "shakespeare.txt"))
    assert after < before - 1.0


def test_default_loss_is_token_mean_over_weighted_positions():
    model = CausalLM(TransformerBackbone(**TINY_GPT))
    rng = np.random.default_rng(0)
    ids = rng.integers(6, 262, (3, 9)).astype("int32")
    weights = np.ones((3, 8), "float32")
    weights[1, 5:] = 0
    weights[2, 2:] = 0
    x = {"token_ids": ids[:, :-1], "padding_mask": weights.astype("int32")}
    logits = np.asarray(model(x), np.float64)
    log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
    nll = -np.take_along_axis(log_probs, ids[:, 1:, None], -1)[..., 0]
    expected = (nll * weights).sum() / weights.sum()
    loss = model.evaluate(x, ids[:, 1:], sample_weight=weights, verbose=0, return_dict=True)["loss"]
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_save_and_load_reproduce_outputs(tmp_path):
    model = CausalLM(TransformerBackbone(**TINY_GPT))
    ids = np.random.default_rng(1).integers(6, 262, (2, 17)).astype("int32")
    x = {"token_ids": ids[:, :-1], "padding_mask": np.ones((2, 16), "int32")}
    model.fit(x, ids[:, 1:], epochs=2, verbose=0)
    path = str(tmp_path / "gpt.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert isinstance(restored, CausalLM)
    np.testing.assert_array_equal(np.asarray(restored(x)), np.asarray(model(x)))
    # Optimizer state comes back too: one more identical step gives identical weights.
    model.fit(x, ids[:, 1:], epochs=1, verbose=0, shuffle=False)
    restored.fit(x, ids[:, 1:], epochs=1, verbose=0, shuffle=False)
    for a, b in zip(model.weights, restored.weights):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_logits_float32_and_fit_under_mixed_precision(policy):
    # With a chunked loss (the masked LM's test fits from the whole logits).
    model = CausalLM(TransformerBackbone(**TINY_GPT, dtype=policy), loss_chunk_size=20)
    ids = np.random.default_rng(2).integers(6, 262, (4, 13)).astype("int32")
    x = {"token_ids": ids[:, :-1], "padding_mask": np.ones((4, 12), "int32")}
    assert model(x).dtype == "float32"
    history = model.fit(x, ids[:, 1:], epochs=2, verbose=0)
    assert all(np.isfinite(history.history["loss"]))
    if policy == "mixed_float16":
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)


def test_rejects_encoder_backbone():
    with pytest.raises(ValueError, match="causal"):
        CausalLM(TransformerBackbone(**dict(TINY_GPT, causal=False)))


@pytest.mark.parametrize("jit_compile", [False, True])
def test_fit_with_a_chunked_loss_equals_the_whole_logits(jit_compile):
    """`loss_chunk_size` (5 does not divide the 2 x 8 positions): the same losses,
    accuracies and weights after two steps of `fit`; the outputs are still the logits."""
    ids = np.random.default_rng(3).integers(6, 262, (2, 9)).astype("int32")
    x = {"token_ids": ids[:, :-1], "padding_mask": np.ones((2, 8), "int32")}
    weights = np.ones((2, 8), "float32")
    weights[1, 5:] = 0.0
    model = assert_chunked_fit_equals_whole(
        lambda chunk: CausalLM(TransformerBackbone(**TINY_GPT), loss_chunk_size=chunk), 5,
        x, ids[:, 1:], weights, jit_compile)
    assert model(x).shape == (2, 8, 262)
    assert CausalLM.from_config(model.get_config()).loss_chunk_size == 5
