import keras
import numpy as np
import pytest

from keras_test_case import run_layer_test
from numpy_reference import layer_norm, rms_norm
from tflm.layers import RMSNormalization, make_normalization


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
    for kind, reference in (("layer_norm", lambda v: layer_norm(v, 1.0, 0.0, 1e-5)),
                            ("rms_norm", lambda v: rms_norm(v, 1.0, 1e-5))):
        layer = make_normalization(kind, 1e-5, dtype="mixed_bfloat16")
        out = layer(keras.ops.cast(x, "bfloat16"))
        assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
        x_bf16 = np.asarray(keras.ops.cast(keras.ops.cast(x, "bfloat16"), "float32"))
        np.testing.assert_allclose(
            np.asarray(keras.ops.cast(out, "float32")), reference(x_bf16), atol=0.05
        )


def test_unknown_kind():
    with pytest.raises(ValueError, match="batch_norm"):
        make_normalization("batch_norm", 1e-5)
