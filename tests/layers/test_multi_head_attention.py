import keras
import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf

from keras_test_case import run_layer_test
from numpy_reference import (multi_head_attention, repeat_key_value_heads,
                             sliding_window_causal_mask)
from tflm.layers import MultiHeadAttention
from tflm.layers.masks import causal_mask


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
    keras.utils.set_random_seed(6)  # the layer's initial weights
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
    keras.utils.set_random_seed(7)  # the layer's initial weights
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
    keras.utils.set_random_seed(8)  # the layer's initial weights
    out = MultiHeadAttention(num_heads=2, head_dim=4)(x, padding_mask=np.zeros((1, 4)))
    assert np.all(np.isfinite(np.asarray(out)))


def test_cache_decoding_matches_full_pass():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 8, 16)).astype("float32")
    keras.utils.set_random_seed(9)  # the layers' initial weights
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


# Unit roundoff u of the half types: the largest relative error of a rounding to
# nearest, half the gap above 1 (bfloat16 has 8 significant bits, u = 2**-8; float16
# 11, u = 2**-11). Below the normal range the error is at most half the subnormal gap.
_HALF_TYPES = {"mixed_bfloat16": ml_dtypes.bfloat16, "mixed_float16": np.float16}
_U32 = 2.0**-24  # float32's unit roundoff


def _probability_readout(scores):
    """A layer input and weights under which the layer's output is its attention probabilities.

    `scores` is `(batch, T, T)`. Two heads of size `T` on a model of width `2 T`:
    token `t` of a row is `[one_hot(t), scores[row, t]]`. Head 0's query is the
    score half (head 1's its negation), every key `s` is `sqrt(head_dim) * one_hot(s)`
    and every value `one_hot(s)`: so head 0's score of key `s` for query `t` is
    `scores[row, t, s]`, its output is its row of probabilities, and the identity
    output projection gives `[probabilities of head 0 | probabilities of head 1]`.
    """
    batch, length, _ = scores.shape
    eye = np.eye(length, dtype="float32")
    x = np.concatenate([np.broadcast_to(eye, (batch, length, length)), scores], axis=-1)
    w_qkv = np.zeros((2 * length, 6 * length), "float32")
    w_qkv[length:, :length] = eye  # queries of head 0
    w_qkv[length:, length : 2 * length] = -eye  # queries of head 1
    w_qkv[:length, 2 * length : 4 * length] = np.sqrt(length) * np.tile(eye, 2)  # keys
    w_qkv[:length, 4 * length :] = np.tile(eye, 2)  # values
    weights = [
        w_qkv,
        np.zeros(6 * length, "float32"),
        np.eye(2 * length, dtype="float32"),
        np.zeros(2 * length, "float32"),
    ]
    return x.astype("float32"), weights


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("policy", sorted(_HALF_TYPES))
def test_softmax_in_float32_under_mixed_precision(policy, jit_compile):
    # The probabilities of a half-precision softmax of large scores lose their
    # precision (and in float16 the -1e9 of masked keys is -inf: a row with every key
    # masked gives NaN); the layer's float32 softmax gives probabilities within one
    # half-type rounding of the exact ones. The layer's output here is its
    # probabilities (see `_probability_readout`), checked against a float64 reference
    # with a bound derived from the roundings.
    #
    # Measured: the largest error is 0.93 of the bound in bfloat16 (0.0020 at most,
    # absolute) and 0.997 in float16 (0.00024), eager and under XLA alike. With the
    # softmax in the half type instead (no float32 cast of the scores), bfloat16 under
    # XLA is off by 34 times the bound (the score minus the row's max is rounded to
    # bfloat16), and float16 gives NaN in the fully masked rows, eager and under XLA
    # (under XLA also 1.6 times the bound elsewhere).
    # (Eager TensorFlow on CPU computes a half softmax in float32 internally, bit for
    # bit like the cast, so only the XLA case can see the bfloat16 softmax.)
    length = 16
    rng = np.random.default_rng(10)
    # Large scores (sd 8), multiples of 1/32 rounded to bfloat16: exactly
    # representable in both half types, and a quarter of each is still a normal float16.
    scores = np.round(rng.standard_normal((2, length, length)) * 8 * 32) / 32
    scores = scores.astype(ml_dtypes.bfloat16).astype("float32")
    x, weights = _probability_readout(scores)
    padding = np.ones((2, length), "int32")
    padding[1, :3] = 0  # left padding: row 1's first three queries see no key at all
    mask = padding.astype(bool)[:, None, :] & np.tril(np.ones((length, length), bool))[None]
    expected = multi_head_attention(x.astype(np.float64), *weights, num_heads=2, mask=mask)

    half = _HALF_TYPES[policy]
    # Everything before the softmax is exact in the half type: the inputs and weights
    # are representable, and so are the projections and scores (each output a single
    # product of an input by 0, 1, -1, 4 or the query scale 1/4).
    for values in (x, x / np.sqrt(length), *weights):
        np.testing.assert_array_equal(values.astype(half).astype("float32"), values)
    layer = MultiHeadAttention(num_heads=2, head_dim=length, dtype=policy)
    layer(x)
    for variable, value in zip(layer.weights, weights):
        variable.assign(value)

    def call(inputs):
        return layer(inputs, padding_mask=padding, use_causal_mask=True)

    if jit_compile:
        call = tf.function(call, jit_compile=True)
    out = call(x)
    assert keras.backend.standardize_dtype(out.dtype) == keras.DTypePolicy(policy).compute_dtype
    actual = np.asarray(keras.ops.cast(out, "float32"), np.float64)

    # The output is the probabilities p, and the only inexact steps are the float32
    # softmax and the rounding of its result to the half type: the value and output
    # products then multiply by 1 and add zeros. A float32 softmax of n scores is within
    # (n + 4) u32 p of p (the differences to the max are exact, exp is good to a few
    # ulp, then n - 1 additions and a division), and the rounding adds u p, or half the
    # subnormal gap below the normal range.
    u = float(ml_dtypes.finfo(half).eps) / 2
    subnormal_error = float(ml_dtypes.finfo(half).smallest_subnormal) / 2
    bound = (u + (length + 4) * _U32 * (1 + u)) * np.abs(expected) + subnormal_error
    error = np.abs(actual - expected)
    assert np.all(error <= bound), (
        f"{policy}: error up to {np.nanmax(error):.3g}, {np.nanmax(error / bound):.3g} times "
        f"the bound ({np.isnan(error).sum()} NaN)"
    )


def test_dropout_only_in_training():
    x = np.random.default_rng(11).standard_normal((2, 6, 16)).astype("float32")
    keras.utils.set_random_seed(11)  # the initial weights and the dropout masks
    layer = MultiHeadAttention(num_heads=2, head_dim=8, dropout=0.5)
    a = np.asarray(layer(x, training=False))
    np.testing.assert_array_equal(a, np.asarray(layer(x, training=False)))
    assert not np.allclose(a, np.asarray(layer(x, training=True)))


# Grouped-query attention and sliding windows.


def _grouped_weights(layer):
    """The layer's weights; a missing bias (`use_bias=False`) reads zeros."""
    bias = layer.qkv_dense.bias
    return (np.asarray(layer.qkv_dense.kernel),
            np.zeros(layer.qkv_dense.units) if bias is None else np.asarray(bias),
            np.asarray(layer.output_dense.kernel), np.asarray(layer.output_dense.bias))


@pytest.mark.parametrize("kv_heads", [2, 1])  # grouped-query, multi-query
def test_grouped_query_matches_numpy(kv_heads):
    rng = np.random.default_rng(10)
    x = rng.standard_normal((2, 7, 16)).astype("float32")
    padding = np.ones((2, 7), "int32")
    padding[1, 4:] = 0
    layer = MultiHeadAttention(num_heads=4, head_dim=4, num_key_value_heads=kv_heads,
                               use_bias=False, qkv_bias=True)
    layer(x)
    _randomize(layer, seed=11)
    assert layer.qkv_dense.kernel.shape == (16, (4 + 2 * kv_heads) * 4)
    assert layer.output_dense.bias is None  # Qwen2: biases on q/k/v only
    mask = padding.astype(bool)[:, None, :] & np.tril(np.ones((7, 7), bool))[None]
    w_qkv, b_qkv, w_o, _ = _grouped_weights(layer)
    expected = multi_head_attention(x.astype(np.float64), w_qkv, b_qkv, w_o, 0.0, num_heads=4,
                                    mask=mask, num_key_value_heads=kv_heads)
    actual = layer(x, padding_mask=padding, use_causal_mask=True)
    np.testing.assert_allclose(np.asarray(actual), expected, atol=1e-5, rtol=1e-5)


def test_grouped_query_equals_multi_head_with_repeated_heads_and_caches_only_its_heads():
    """GQA (4 query heads, 2 key/value heads; rotary, a window of 3) is MHA whose key and
    value kernels repeat each head for its group; cached decoding equals the full pass."""
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 8, 16)).astype("float32")
    common = dict(num_heads=4, head_dim=4, rotary_max_wavelength=500.0, sliding_window=3)
    grouped = MultiHeadAttention(num_key_value_heads=2, **common)
    grouped(x)
    _randomize(grouped, seed=13)
    full = MultiHeadAttention(**common)
    full(x)
    w_qkv, b_qkv, w_o, b_o = _weights(grouped)
    q, k, v = np.split(w_qkv, [16, 24], axis=1)
    bq, bk, bv = np.split(b_qkv, [16, 24])
    def repeat(t):  # kernel columns or bias entries of 2 heads -> of 4, each head twice
        return repeat_key_value_heads(t.reshape(-1, 1, t.shape[-1]), 2, 4).reshape(
            t.shape[:-1] + (-1,))

    full.qkv_dense.kernel.assign(np.concatenate([q, repeat(k), repeat(v)], axis=1))
    full.qkv_dense.bias.assign(np.concatenate([bq, repeat(bk), repeat(bv)]))
    full.output_dense.kernel.assign(w_o)
    full.output_dense.bias.assign(b_o)
    expected = np.asarray(full(x, use_causal_mask=True))
    np.testing.assert_allclose(np.asarray(grouped(x, use_causal_mask=True)), expected,
                               atol=1e-5)
    cache = np.zeros((2, 2, 8, 2, 4), "float32")  # only the 2 key/value heads
    out, cache = grouped(x[:, :3], use_causal_mask=True, cache=cache, cache_update_index=0)
    pieces = [np.asarray(out)]
    for t in range(3, 8):
        out, cache = grouped(x[:, t:t + 1], use_causal_mask=True, cache=cache,
                             cache_update_index=t)
        pieces.append(np.asarray(out))
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), expected, atol=1e-5)


@pytest.mark.parametrize("start_index", [0, 5])
def test_sliding_window_mask_matches_numpy(start_index):
    window, length = 3, 9
    expected = sliding_window_causal_mask(length, window)[start_index:]
    actual = causal_mask(length - start_index, length, start_index, sliding_window=window)
    np.testing.assert_array_equal(np.asarray(actual), expected)


def test_sliding_window_attention_matches_numpy():
    rng = np.random.default_rng(14)
    x = rng.standard_normal((2, 9, 16)).astype("float32")
    layer = MultiHeadAttention(num_heads=4, head_dim=4, num_key_value_heads=2, sliding_window=3)
    layer(x)
    _randomize(layer, seed=15)
    mask = np.broadcast_to(sliding_window_causal_mask(9, 3), (2, 9, 9))
    expected = multi_head_attention(x.astype(np.float64), *_weights(layer), num_heads=4,
                                    mask=mask, num_key_value_heads=2)
    actual = layer(x, use_causal_mask=True)
    np.testing.assert_allclose(np.asarray(actual), expected, atol=1e-5, rtol=1e-5)


def test_key_value_heads_must_divide_the_heads():
    with pytest.raises(ValueError, match="num_key_value_heads=3 must divide num_heads=4"):
        MultiHeadAttention(num_heads=4, head_dim=4, num_key_value_heads=3)
