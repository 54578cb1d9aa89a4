import keras
import numpy as np
import pytest

from keras_test_case import run_layer_test
from numpy_reference import cross_attention
from tflm.layers import CrossAttention


def _weights(layer):
    return [np.asarray(v) for v in (layer.query_dense.kernel, layer.query_dense.bias,
                                    layer.key_value_dense.kernel, layer.key_value_dense.bias,
                                    layer.output_dense.kernel, layer.output_dense.bias)]


def test_layer_contract():
    rng = np.random.default_rng(0)
    inputs = {
        "inputs": rng.standard_normal((2, 3, 16)).astype("float32"),
        "context": rng.standard_normal((2, 5, 12)).astype("float32"),
        "padding_mask": np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], "int32"),
    }
    run_layer_test(
        CrossAttention,
        {"num_heads": 2, "head_dim": 4, "dropout": 0.1},
        inputs,
        (2, 3, 16),
        expected_num_trainable_weights=6,
    )


def test_matches_numpy_and_cache():
    # Queries of width 16 over a context of width 12, the encoder's padding mask
    # spread over every query: (batch, S) -> (batch, T, S).
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 4, 16)).astype("float32")
    context = rng.standard_normal((2, 6, 12)).astype("float32")
    padding = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    keras.utils.set_random_seed(1)
    layer = CrossAttention(num_heads=2, head_dim=4, bias_initializer="random_normal")
    actual = np.asarray(layer(x, context, padding_mask=padding))
    mask = padding.astype(bool)[:, None, :].repeat(4, axis=1)
    expected = cross_attention(x.astype(np.float64), context.astype(np.float64), *_weights(layer),
                               num_heads=2, mask=mask)
    np.testing.assert_allclose(actual, expected, atol=1e-5, rtol=1e-5)

    # The precomputed keys and values give the same output, one query at a time.
    cache = layer.compute_key_value_cache(context)
    assert tuple(cache.shape) == (2, 2, 6, 2, 4)
    steps = [np.asarray(layer(x[:, t : t + 1], padding_mask=padding, cache=cache))
             for t in range(4)]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), actual, atol=1e-6)


def test_padded_context_positions_are_ignored():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 8)).astype("float32")
    context = rng.standard_normal((2, 5, 8)).astype("float32")
    padding = np.array([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]])
    keras.utils.set_random_seed(2)
    layer = CrossAttention(num_heads=2, head_dim=4)
    base = np.asarray(layer(x, context, padding_mask=padding))
    changed = np.where(padding[..., None].astype(bool), context, 100.0).astype("float32")
    np.testing.assert_array_equal(np.asarray(layer(x, changed, padding_mask=padding)), base)


def test_needs_context_or_cache():
    layer = CrossAttention(num_heads=2, head_dim=4)
    with pytest.raises(ValueError, match="context"):
        layer(np.zeros((1, 2, 8), "float32"))
    with pytest.raises(ValueError, match="not built"):
        CrossAttention(num_heads=2, head_dim=4).compute_key_value_cache(np.zeros((1, 2, 8)))
