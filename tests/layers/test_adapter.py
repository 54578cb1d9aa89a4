import keras
import numpy as np

from keras_test_case import run_layer_test
from numpy_reference import gelu
from tflm.layers import Adapter, TransformerBlock


def test_layer_contract():
    x = np.random.default_rng(0).standard_normal((2, 5, 16)).astype("float32")
    # A nonzero up-projection, so that one step moves every weight (at zero the
    # down-projection gets no gradient on the first step).
    run_layer_test(Adapter, {"bottleneck_dim": 4, "up_initializer": "glorot_uniform"}, x,
                   (2, 5, 16), expected_num_trainable_weights=4)


def test_starts_as_the_identity_then_matches_numpy():
    x = np.random.default_rng(1).standard_normal((2, 5, 16)).astype("float32")
    keras.utils.set_random_seed(1)  # the initial down-projection
    adapter = Adapter(bottleneck_dim=4)
    np.testing.assert_array_equal(np.asarray(adapter(x)), x)
    rng = np.random.default_rng(2)
    for dense in (adapter.down, adapter.up):
        dense.kernel.assign(rng.standard_normal(dense.kernel.shape).astype("float32"))
        dense.bias.assign(rng.standard_normal(dense.bias.shape).astype("float32"))
    w = [np.asarray(v, np.float64) for v in (adapter.down.kernel, adapter.down.bias,
                                             adapter.up.kernel, adapter.up.bias)]
    expected = x + gelu(x @ w[0] + w[1]) @ w[2] + w[3]
    np.testing.assert_allclose(np.asarray(adapter(x)), expected, atol=1e-5)


def test_a_block_with_fresh_adapters_computes_the_same():
    x = np.random.default_rng(3).standard_normal((2, 6, 16)).astype("float32")
    keras.utils.set_random_seed(3)  # the blocks' initial weights
    for norm_first in (False, True):
        plain = TransformerBlock(num_heads=2, intermediate_dim=32, norm_first=norm_first)
        adapted = TransformerBlock(num_heads=2, intermediate_dim=32, norm_first=norm_first,
                                   adapter_dim=4)
        plain.build(x.shape)
        adapted.build(x.shape)
        for source, target in zip(plain.weights, adapted.weights):  # adapters come last
            target.assign(source)
        assert len(adapted.weights) == len(plain.weights) + 8
        np.testing.assert_allclose(np.asarray(adapted(x)), np.asarray(plain(x)), atol=1e-6)
        assert adapted.get_config()["adapter_dim"] == 4
