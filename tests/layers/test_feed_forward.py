import numpy as np
import pytest

from keras_test_case import run_layer_test
from numpy_reference import feed_forward
from tflm.layers import FeedForward


@pytest.mark.parametrize("activation", ["relu", "gelu", "gelu_tanh", "swiglu"])
def test_layer_contract(activation):
    x = np.random.default_rng(0).standard_normal((2, 5, 16)).astype("float32")
    run_layer_test(
        FeedForward,
        {"intermediate_dim": 24, "activation": activation},
        x,
        (2, 5, 16),
        expected_num_trainable_weights=4,
    )


@pytest.mark.parametrize("activation", ["relu", "gelu", "gelu_tanh", "swiglu", "geglu"])
def test_matches_numpy(activation):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 6, 16)).astype("float32")
    layer = FeedForward(intermediate_dim=32, activation=activation)
    layer(x)
    for weight in layer.weights:
        weight.assign(rng.standard_normal(weight.shape).astype("float32") * 0.5)
    w1, b1 = np.asarray(layer.intermediate_dense.kernel), np.asarray(layer.intermediate_dense.bias)
    w2, b2 = np.asarray(layer.output_dense.kernel), np.asarray(layer.output_dense.bias)
    expected = feed_forward(x.astype(np.float64), w1, b1, w2, b2, activation)
    np.testing.assert_allclose(np.asarray(layer(x)), expected, atol=1e-5, rtol=1e-5)


def test_gelu_variants_differ():
    # erf GELU (BERT) and tanh GELU (GPT-2) are different functions; importing
    # either model needs the right one.
    x = np.linspace(-3, 3, 16, dtype="float32").reshape(1, 1, 16)
    outputs = {}
    for activation in ("gelu", "gelu_tanh"):
        layer = FeedForward(intermediate_dim=16, activation=activation)
        layer(x)
        layer.intermediate_dense.kernel.assign(np.eye(16, dtype="float32"))
        layer.output_dense.kernel.assign(np.eye(16, dtype="float32"))
        outputs[activation] = np.asarray(layer(x))
    assert 1e-5 < np.abs(outputs["gelu"] - outputs["gelu_tanh"]).max() < 1e-2


def test_unknown_activation():
    with pytest.raises(ValueError, match="swish"):
        FeedForward(intermediate_dim=8, activation="swish")
