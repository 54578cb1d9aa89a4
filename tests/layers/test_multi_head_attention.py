import keras
import numpy as np
import pytest

from keras_test_case import run_layer_test
from numpy_reference import multi_head_attention
from tflm.layers import MultiHeadAttention


def _randomize(layer, seed=0, scale=0.3):
    rng = np.random.default_rng(seed)
    for weight in layer.weights:
        weight.assign((rng.standard_normal(weight.shape) * scale).astype("float32"))


def _weights(layer):
    return (
        np.asarray(layer.qkv_dense.kernel),
        np.asarray(layer.qkv_dense.bias),
        np.asarray(layer.output_dense.kernel),
        np.asarray(layer.output_dense.bias),
    )


@pytest.mark.parametrize("call_kwargs", [{}, {"use_causal_mask": True}])
def test_layer_contract(call_kwargs):
    x = np.random.default_rng(0).standard_normal((2, 6, 16)).astype("float32")
    run_layer_test(
        MultiHeadAttention,
        {"num_heads": 4, "head_dim": 4, "dropout": 0.1},
        x,
        (2, 6, 16),
        call_kwargs=call_kwargs,
        expected_num_trainable_weights=4,
    )


def test_layer_contract_rotary():
    x = np.random.default_rng(0).standard_normal((2, 6, 16)).astype("float32")
    run_layer_test(
        MultiHeadAttention,
        {"num_heads": 2, "head_dim": 8, "rotary_max_wavelength": 10000},
        x,
        (2, 6, 16),
        call_kwargs={"use_causal_mask": True},
    )


@pytest.mark.parametrize("causal", [False, True])
def test_matches_numpy(causal):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 7, 16)).astype("float32")
    padding = np.ones((3, 7), "int32")
    padding[1, 5:] = 0
    padding[2, 2:] = 0
    layer = MultiHeadAttention(num_heads=4, head_dim=4)
    layer(x)
    _randomize(layer)
    mask = padding.astype(bool)[:, None, :].repeat(7, axis=1)
    if causal:
        mask &= np.tril(np.ones((7, 7), bool))[None]
    expected = multi_head_attention(x.astype(np.float64), *_weights(layer), num_heads=4, mask=mask)
    actual = layer(x, padding_mask=padding, use_causal_mask=causal)
    np.testing.assert_allclose(np.asarray(actual), expected, atol=1e-5, rtol=1e-5)


def test_matches_keras_multi_head_attention():
    rng = np.random.default_rng(2)
    heads, head_dim, width = 4, 8, 24
    x = rng.standard_normal((2, 9, width)).astype("float32")
    padding = np.ones((2, 9), bool)
    padding[0, 6:] = False
    ours = MultiHeadAttention(num_heads=heads, head_dim=head_dim)
    ours(x)
    _randomize(ours, seed=3)
    reference = keras.layers.MultiHeadAttention(num_heads=heads, key_dim=head_dim)
    reference(x, x)
    w_qkv, b_qkv, w_o, b_o = _weights(ours)
    inner = heads * head_dim
    for i, dense in enumerate((reference._query_dense, reference._key_dense, reference._value_dense)):
        dense.kernel.assign(w_qkv[:, i * inner : (i + 1) * inner].reshape(width, heads, head_dim))
        dense.bias.assign(b_qkv[i * inner : (i + 1) * inner].reshape(heads, head_dim))
    reference._output_dense.kernel.assign(w_o.reshape(heads, head_dim, width))
    reference._output_dense.bias.assign(b_o)
    mask = padding[:, None, :] & np.tril(np.ones((9, 9), bool))[None]
    expected = reference(x, x, attention_mask=mask)
    actual = ours(x, padding_mask=padding, use_causal_mask=True)
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), atol=1e-5)


def test_explicit_attention_mask_combines_with_padding_and_causal():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 5, 8)).astype("float32")
    layer = MultiHeadAttention(num_heads=2, head_dim=4)
    layer(x)
    _randomize(layer, seed=5)
    explicit = rng.random((2, 5, 5)) > 0.3
    explicit[:, :, 0] = True  # every query keeps at least one key
    padding = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    combined = explicit & padding.astype(bool)[:, None, :] & np.tril(np.ones((5, 5), bool))[None]
    expected = multi_head_attention(x.astype(np.float64), *_weights(layer), num_heads=2, mask=combined)
    actual = layer(x, padding_mask=padding, attention_mask=explicit, use_causal_mask=True)
    np.testing.assert_allclose(np.asarray(actual), expected, atol=1e-5, rtol=1e-5)


def test_causal_no_leak():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((1, 10, 16)).astype("float32")
    layer = MultiHeadAttention(num_heads=2, head_dim=8)
    base = np.asarray(layer(x, use_causal_mask=True))
    for t in range(9):
        changed = x.copy()
        changed[:, t + 1 :] = rng.standard_normal(changed[:, t + 1 :].shape)
        out = np.asarray(layer(changed, use_causal_mask=True))
        np.testing.assert_array_equal(out[:, : t + 1], base[:, : t + 1])
        assert not np.allclose(out[:, t + 1 :], base[:, t + 1 :])


def test_padding_invariance():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 6, 16)).astype("float32")
    layer = MultiHeadAttention(num_heads=4, head_dim=4)
    short = np.asarray(layer(x, padding_mask=np.ones((2, 6))))
    padded_x = np.concatenate([x, rng.standard_normal((2, 5, 16)).astype("float32")], axis=1)
    padding = np.concatenate([np.ones((2, 6)), np.zeros((2, 5))], axis=1)
    for causal in (False, True):
        short = np.asarray(layer(x, padding_mask=np.ones((2, 6)), use_causal_mask=causal))
        long = np.asarray(layer(padded_x, padding_mask=padding, use_causal_mask=causal))
        np.testing.assert_allclose(long[:, :6], short, atol=1e-6)


def test_fully_masked_row_is_finite():
    x = np.random.default_rng(8).standard_normal((1, 4, 8)).astype("float32")
    out = MultiHeadAttention(num_heads=2, head_dim=4)(x, padding_mask=np.zeros((1, 4)))
    assert np.all(np.isfinite(np.asarray(out)))


def test_cache_decoding_matches_full_pass():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 8, 16)).astype("float32")
    for rotary in (None, 10000):
        layer = MultiHeadAttention(num_heads=2, head_dim=8, rotary_max_wavelength=rotary)
        full = np.asarray(layer(x, use_causal_mask=True))
        cache = np.zeros((2, 2, 8, 2, 8), "float32")
        # A 3-token prompt, then one token at a time.
        out, cache = layer(x[:, :3], use_causal_mask=True, cache=cache, cache_update_index=0)
        pieces = [np.asarray(out)]
        for t in range(3, 8):
            out, cache = layer(x[:, t : t + 1], use_causal_mask=True, cache=cache, cache_update_index=t)
            pieces.append(np.asarray(out))
        np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, atol=1e-5)
        # The cache holds exactly the keys and values of the full sequence.
        qkv = np.asarray(layer.qkv_dense(x)).reshape(2, 8, 3, 2, 8)
        np.testing.assert_allclose(np.asarray(cache)[:, 1], qkv[:, :, 2], atol=1e-5)


def test_cache_requires_index():
    layer = MultiHeadAttention(num_heads=2, head_dim=4)
    with pytest.raises(ValueError, match="cache_update_index"):
        layer(np.zeros((1, 1, 8), "float32"), cache=np.zeros((1, 2, 4, 2, 4), "float32"))


def test_softmax_in_float32_under_mixed_precision():
    # Probabilities from a float16 softmax of large scores would saturate;
    # the float32 softmax matches the float32 layer closely.
    rng = np.random.default_rng(10)
    x = (rng.standard_normal((2, 16, 32)) * 3).astype("float32")
    full = MultiHeadAttention(num_heads=4, head_dim=8)
    reference = np.asarray(full(x, use_causal_mask=True))
    for policy in ("mixed_float16", "mixed_bfloat16"):
        mixed = MultiHeadAttention(num_heads=4, head_dim=8, dtype=policy)
        mixed(x)
        for src, dst in zip(full.weights, mixed.weights):
            dst.assign(src)
        out = mixed(x, use_causal_mask=True)
        assert keras.backend.standardize_dtype(out.dtype) == keras.DTypePolicy(policy).compute_dtype
        tolerance = 0.02 if policy == "mixed_float16" else 0.1
        np.testing.assert_allclose(
            np.asarray(keras.ops.cast(out, "float32")), reference, atol=tolerance
        )


def test_dropout_only_in_training():
    x = np.random.default_rng(11).standard_normal((2, 6, 16)).astype("float32")
    layer = MultiHeadAttention(num_heads=2, head_dim=8, dropout=0.5)
    a = np.asarray(layer(x, training=False))
    np.testing.assert_array_equal(a, np.asarray(layer(x, training=False)))
    assert not np.allclose(a, np.asarray(layer(x, training=True)))
