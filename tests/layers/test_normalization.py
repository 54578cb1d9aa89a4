import keras
import ml_dtypes
import numpy as np
import pytest

from keras_test_case import run_layer_test
from numpy_reference import layer_norm, rms_norm
from tflm.layers import RMSNormalization, make_normalization

_U32 = 2.0**-24  # unit roundoff of float32 (24 significant bits)
_U_BF16 = 2.0**-8  # and of bfloat16 (8)


def test_layer_contract():
    x = np.random.default_rng(0).standard_normal((2, 5, 16)).astype("float32")
    run_layer_test(RMSNormalization, {"epsilon": 1e-6}, x, (2, 5, 16), expected_num_trainable_weights=1)


def test_rms_norm_matches_numpy():
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((3, 7, 32)) * 4 + 1).astype("float32")
    layer = RMSNormalization(epsilon=1e-6)
    layer.build(x.shape)
    scale = rng.standard_normal(32).astype("float32")
    layer.scale.assign(scale)
    np.testing.assert_allclose(np.asarray(layer(x)), rms_norm(x, scale, 1e-6), atol=1e-5)


@pytest.mark.parametrize("epsilon", [1e-12, 1e-5])
def test_layer_norm_matches_numpy(epsilon):
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((3, 7, 32)) * 3 - 2).astype("float32")
    layer = make_normalization("layer_norm", epsilon)
    layer.build(x.shape)
    gamma, beta = rng.standard_normal(32).astype("float32"), rng.standard_normal(32).astype("float32")
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)
    np.testing.assert_allclose(np.asarray(layer(x)), layer_norm(x, gamma, beta, epsilon), atol=1e-5)


def test_statistics_in_float32_under_bfloat16():
    # Large offset: a bfloat16 variance would lose the signal entirely.
    x = (np.random.default_rng(3).standard_normal((2, 4, 64)) + 100).astype("float32")
    x_bf16 = x.astype(ml_dtypes.bfloat16).astype(np.float64)  # what the layer sees
    n = x.shape[-1]
    for kind, reference, scale in (
        ("layer_norm", lambda v: layer_norm(v, 1.0, 0.0, 1e-5), np.sqrt(x_bf16.var(-1) + 1e-5)),
        ("rms_norm", lambda v: rms_norm(v, 1.0, 1e-5), np.sqrt((x_bf16**2).mean(-1) + 1e-5)),
    ):
        layer = make_normalization(kind, 1e-5, dtype="mixed_bfloat16")
        out = layer(keras.ops.cast(x, "bfloat16"))
        assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
        expected = reference(x_bf16)
        # In float32, the mean (or mean square) of n terms is off by at most n u32 times
        # the mean of their magnitudes, and the variance, rsqrt and the affine map add a
        # few u32 of the terms they combine: the float32 result is within
        # (n + 8) u32 (|x| + mean |x|) / scale of the exact one (scale: the standard
        # deviation, or the root mean square). Rounding it to bfloat16 adds u |y|, with
        # u = 2**-8 (8 significant bits).
        # Measured: error up to 0.76 of the bound for layer_norm (0.0074, bound 0.014)
        # and 0.98 for rms_norm (0.0039, bound 0.0041). Statistics in bfloat16 instead
        # are off by 127 times the bound for layer_norm (0.32) and 1.5 times for rms_norm
        # (0.0060, which the earlier fixed atol=0.05 let through).
        f32_error = (n + 8) * _U32 * (
            np.abs(x_bf16) + np.abs(x_bf16).mean(-1, keepdims=True)) / scale[..., None]
        bound = f32_error + _U_BF16 * (np.abs(expected) + f32_error)
        error = np.abs(np.asarray(keras.ops.cast(out, "float32"), np.float64) - expected)
        assert np.all(error <= bound), (kind, error.max(), (error / bound).max())


def test_unknown_kind():
    with pytest.raises(ValueError, match="batch_norm"):
        make_normalization("batch_norm", 1e-5)
