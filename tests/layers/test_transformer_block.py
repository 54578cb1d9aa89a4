import keras
import numpy as np
import pytest

from keras_test_case import run_layer_test
from numpy_reference import feed_forward, layer_norm, multi_head_attention, rms_norm
from tflm.layers import TransformerBlock

CONFIGS = {
    "post_ln_bert": {"norm_first": False, "activation": "gelu", "norm_epsilon": 1e-12},
    "pre_ln_gpt2": {"norm_first": True, "activation": "gelu_tanh"},
    "pre_rms_swiglu_rotary": {
        "norm_first": True,
        "activation": "swiglu",
        "normalization": "rms_norm",
        "rotary_max_wavelength": 10000,
    },
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_layer_contract(name):
    x = np.random.default_rng(0).standard_normal((2, 6, 16)).astype("float32")
    run_layer_test(
        TransformerBlock,
        {"num_heads": 2, "intermediate_dim": 32, "dropout": 0.1, **CONFIGS[name]},
        x,
        (2, 6, 16),
        call_kwargs={"use_causal_mask": True},
    )


def _numpy_block(block, x, mask, norm_first, activation, normalization, eps):
    attention = block.attention
    w = [np.asarray(v) for v in (attention.qkv_dense.kernel, attention.qkv_dense.bias,
                                 attention.output_dense.kernel, attention.output_dense.bias)]
    ffn = block.feed_forward
    f = [np.asarray(v) for v in (ffn.intermediate_dense.kernel, ffn.intermediate_dense.bias,
                                 ffn.output_dense.kernel, ffn.output_dense.bias)]

    def norm(layer, v):
        if normalization == "rms_norm":
            return rms_norm(v, np.asarray(layer.scale), eps)
        return layer_norm(v, np.asarray(layer.gamma), np.asarray(layer.beta), eps)

    def attn(v):
        return multi_head_attention(v, *w, num_heads=block.num_heads, mask=mask)

    def mlp(v):
        return feed_forward(v, *f, activation)

    if norm_first:
        x = x + attn(norm(block.attention_norm, x))
        return x + mlp(norm(block.feed_forward_norm, x))
    x = norm(block.attention_norm, x + attn(x))
    return norm(block.feed_forward_norm, x + mlp(x))


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("normalization", ["layer_norm", "rms_norm"])
def test_matches_numpy(norm_first, normalization):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 5, 16)).astype("float32")
    keras.utils.set_random_seed(1)  # the initial weights, which the noise below perturbs
    block = TransformerBlock(
        num_heads=4, intermediate_dim=32, norm_first=norm_first, activation="gelu",
        normalization=normalization, norm_epsilon=1e-6,
    )
    block(x)
    for weight in block.weights:
        weight.assign(weight + rng.standard_normal(weight.shape).astype("float32") * 0.2)
    padding = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    mask = padding.astype(bool)[:, None, :] & np.tril(np.ones((5, 5), bool))[None]
    expected = _numpy_block(block, x.astype(np.float64), mask, norm_first, "gelu", normalization, 1e-6)
    actual = block(x, padding_mask=padding, use_causal_mask=True)
    np.testing.assert_allclose(np.asarray(actual), expected, atol=1e-5, rtol=1e-5)


def test_head_dim_must_divide():
    with pytest.raises(ValueError, match="divisible"):
        TransformerBlock(num_heads=3, intermediate_dim=8)(np.zeros((1, 2, 16), "float32"))


def test_explicit_head_dim():
    block = TransformerBlock(num_heads=3, intermediate_dim=8, head_dim=5)
    assert block(np.zeros((1, 2, 16), "float32")).shape == (1, 2, 16)
    assert block.attention.qkv_dense.kernel.shape == (16, 45)
