import keras
import numpy as np
import pytest

from keras_test_case import run_layer_test
from tflm.layers import TokenEmbedding


def test_layer_contract():
    ids = np.random.default_rng(0).integers(0, 50, (2, 7)).astype("int32")
    run_layer_test(
        TokenEmbedding,
        {"vocabulary_size": 50, "embedding_dim": 8},
        ids,
        (2, 7, 8),
        expected_num_trainable_weights=1,
        input_dtype="int32",
    )


def test_lookup_and_tied_reverse():
    keras.utils.set_random_seed(1)  # the initial table
    layer = TokenEmbedding(vocabulary_size=11, embedding_dim=4)
    ids = np.array([[3, 0, 10]])
    layer(ids)
    table = np.asarray(layer.embeddings)
    np.testing.assert_array_equal(np.asarray(layer(ids))[0], table[[3, 0, 10]])
    hidden = np.random.default_rng(1).standard_normal((2, 3, 4)).astype("float32")
    logits = layer(hidden, reverse=True)
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    np.testing.assert_allclose(np.asarray(logits), hidden @ table.T, atol=1e-5)


def test_untied_reverse_uses_own_kernel():
    keras.utils.set_random_seed(2)  # the initial table and reverse kernel
    layer = TokenEmbedding(vocabulary_size=11, embedding_dim=4, tie_weights=False)
    layer(np.array([[1]]))
    assert len(layer.trainable_weights) == 2
    hidden = np.ones((1, 1, 4), "float32")
    np.testing.assert_allclose(
        np.asarray(layer(hidden, reverse=True))[0, 0],
        np.asarray(layer.reverse_embeddings).sum(0),
        atol=1e-5,
    )


def test_reverse_logits_float32_under_mixed_precision():
    for policy in ("mixed_float16", "mixed_bfloat16"):
        layer = TokenEmbedding(vocabulary_size=11, embedding_dim=4, dtype=policy)
        hidden = layer(np.array([[1, 2]]))
        assert keras.backend.standardize_dtype(hidden.dtype) == keras.DTypePolicy(policy).compute_dtype
        assert keras.backend.standardize_dtype(layer(hidden, reverse=True).dtype) == "float32"


@pytest.mark.parametrize("tie_weights", [True, False])
def test_int8_lookup_and_reverse_read_the_dequantized_weights(tie_weights):
    keras.utils.set_random_seed(3)
    layer = TokenEmbedding(vocabulary_size=11, embedding_dim=4, tie_weights=tie_weights)
    ids = np.array([[3, 0, 10]])
    layer(ids)
    table = np.asarray(layer.embeddings)
    layer.quantize("int8")
    assert keras.backend.standardize_dtype(layer.embeddings.dtype) == "int8"
    assert layer.trainable_weights == []
    # One scale per row (token); the served table is `q / scale`, half a step from the float.
    scale = np.asarray(layer.embeddings_scale)[:, None]
    served = np.asarray(layer.embeddings).astype("float32") / scale
    assert np.all(np.abs(served - table) <= 0.5 / scale * (1 + 1e-6))
    np.testing.assert_allclose(np.asarray(layer(ids))[0], served[[3, 0, 10]], rtol=1e-6)
    if not tie_weights:  # one scale per output channel (vocabulary column)
        served = (np.asarray(layer.reverse_embeddings).astype("float32")
                  / np.asarray(layer.reverse_embeddings_scale)[None, :]).T
    hidden = np.random.default_rng(3).standard_normal((2, 3, 4)).astype("float32")
    np.testing.assert_allclose(np.asarray(layer(hidden, reverse=True)), hidden @ served.T,
                               rtol=1e-5, atol=1e-6)
