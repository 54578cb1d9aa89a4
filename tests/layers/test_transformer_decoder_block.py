import keras
import numpy as np
import pytest

from keras_test_case import run_layer_test
from numpy_reference import cross_attention, feed_forward, layer_norm, multi_head_attention
from tflm.layers import TransformerDecoderBlock

CONFIGS = {
    "post_ln": {"norm_first": False, "activation": "gelu"},
    "pre_rms_swiglu_rotary": {
        "norm_first": True,
        "activation": "swiglu",
        "normalization": "rms_norm",
        "rotary_max_wavelength": 10000,
    },
}

# The encoder padding mask of every test: row 1's last three source tokens are padding.
ENCODER_PADDING = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], "int32")


def _inputs(seed, target_len=5, width=16, encoder_width=12):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((2, target_len, width)).astype("float32"),
            rng.standard_normal((2, ENCODER_PADDING.shape[1], encoder_width)).astype("float32"))


def _block(seed, **kwargs):
    """A built block whose weights (norms and biases included) are all random."""
    x, encoder_outputs = _inputs(seed)
    keras.utils.set_random_seed(seed)
    block = TransformerDecoderBlock(num_heads=2, intermediate_dim=32, norm_epsilon=1e-6, **kwargs)
    block(x, encoder_outputs)
    rng = np.random.default_rng(seed + 100)
    for weight in block.weights:
        weight.assign(weight + rng.standard_normal(weight.shape).astype("float32") * 0.2)
    return block


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_layer_contract(name):
    x, encoder_outputs = _inputs(0)
    run_layer_test(
        TransformerDecoderBlock,
        {"num_heads": 2, "intermediate_dim": 32, "dropout": 0.1, **CONFIGS[name]},
        {"inputs": x, "encoder_outputs": encoder_outputs,
         "encoder_padding_mask": ENCODER_PADDING},
        (2, 5, 16),
    )


def _numpy_decoder_block(block, x, encoder_outputs, self_mask, cross_mask):
    """The block's forward in NumPy (layer norms, GELU), read from its weights."""

    def values(*variables):
        return [np.asarray(v, np.float64) for v in variables]

    a, c, f = block.attention, block.cross_attention, block.feed_forward
    self_weights = values(a.qkv_dense.kernel, a.qkv_dense.bias, a.output_dense.kernel,
                          a.output_dense.bias)
    cross_weights = values(c.query_dense.kernel, c.query_dense.bias, c.key_value_dense.kernel,
                           c.key_value_dense.bias, c.output_dense.kernel, c.output_dense.bias)
    ffn_weights = values(f.intermediate_dense.kernel, f.intermediate_dense.bias,
                         f.output_dense.kernel, f.output_dense.bias)

    def norm(layer, v):
        return layer_norm(v, *values(layer.gamma, layer.beta), block.norm_epsilon)

    sublayers = [
        (block.attention_norm,
         lambda v: multi_head_attention(v, *self_weights, num_heads=2, mask=self_mask)),
        (block.cross_attention_norm,
         lambda v: cross_attention(v, encoder_outputs, *cross_weights, num_heads=2,
                                   mask=cross_mask)),
        (block.feed_forward_norm, lambda v: feed_forward(v, *ffn_weights, "gelu")),
    ]
    for norm_layer, sublayer in sublayers:
        if block.norm_first:
            x = x + sublayer(norm(norm_layer, x))
        else:
            x = norm(norm_layer, x + sublayer(x))
    return x


@pytest.mark.parametrize("norm_first", [False, True])
def test_matches_numpy(norm_first):
    # A decoder 16 wide over an encoder 12 wide, decoder padding in row 1 too.
    block = _block(1, norm_first=norm_first, activation="gelu")
    x, encoder_outputs = _inputs(2)
    padding = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
    self_mask = padding.astype(bool)[:, None, :] & np.tril(np.ones((5, 5), bool))[None]
    cross_mask = ENCODER_PADDING.astype(bool)[:, None, :].repeat(5, axis=1)
    expected = _numpy_decoder_block(block, x.astype(np.float64), encoder_outputs.astype(np.float64),
                                    self_mask, cross_mask)
    actual = block(x, encoder_outputs, padding_mask=padding, encoder_padding_mask=ENCODER_PADDING)
    np.testing.assert_allclose(np.asarray(actual), expected, atol=1e-5, rtol=1e-5)


def test_causal_and_encoder_padding():
    block = _block(3, norm_first=True)
    x, encoder_outputs = _inputs(4)
    rng = np.random.default_rng(5)

    def run(x, encoder_outputs):
        return np.asarray(block(x, encoder_outputs, encoder_padding_mask=ENCODER_PADDING))

    base = run(x, encoder_outputs)
    # No target position depends on a later target token.
    for t in range(4):
        changed = x.copy()
        changed[:, t + 1 :] = rng.standard_normal(changed[:, t + 1 :].shape)
        out = run(changed, encoder_outputs)
        np.testing.assert_array_equal(out[:, : t + 1], base[:, : t + 1])
        assert not np.allclose(out[:, t + 1 :], base[:, t + 1 :])
    # Encoder outputs at padded source positions change nothing; at real ones they do.
    padded = ~ENCODER_PADDING.astype(bool)
    changed = np.where(padded[..., None], 100.0, encoder_outputs).astype("float32")
    np.testing.assert_array_equal(run(x, changed), base)
    changed = encoder_outputs.copy()
    changed[1, 0] += 1.0
    assert not np.allclose(run(x, changed)[1], base[1])


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_cached_decoding_matches_full_pass(name):
    block = _block(6, **CONFIGS[name])
    x, encoder_outputs = _inputs(7)
    full = np.asarray(block(x, encoder_outputs, encoder_padding_mask=ENCODER_PADDING))
    # Encoder keys and values once per request; then a 2-token prompt and one token at a time,
    # without the encoder outputs.
    cross_cache = block.compute_cross_attention_cache(encoder_outputs)
    cache = np.zeros((2, 2, 5, 2, 8), "float32")
    pieces = []
    for start, end in [(0, 2), (2, 3), (3, 4), (4, 5)]:
        out, cache = block(x[:, start:end], encoder_padding_mask=ENCODER_PADDING, cache=cache,
                           cache_update_index=start, cross_attention_cache=cross_cache)
        pieces.append(np.asarray(out))
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, atol=1e-5)


def test_save_and_load(tmp_path):
    x, encoder_outputs = _inputs(8)
    decoder_in = keras.Input((5, 16))
    encoder_in = keras.Input((6, 12))
    mask_in = keras.Input((6,), dtype="int32")
    block = TransformerDecoderBlock(num_heads=2, intermediate_dim=32, norm_first=True,
                                    adapter_dim=4)
    outputs = block(decoder_in, encoder_in, encoder_padding_mask=mask_in)
    model = keras.Model([decoder_in, encoder_in, mask_in], outputs)
    for weight in model.weights:  # adapters start as the identity; make them count
        weight.assign(np.random.default_rng(9).standard_normal(weight.shape) * 0.2)
    expected = np.asarray(model([x, encoder_outputs, ENCODER_PADDING]))
    model.save(tmp_path / "decoder.keras")
    restored = keras.models.load_model(tmp_path / "decoder.keras")
    restored_block = restored.layers[-1]
    assert type(restored_block) is TransformerDecoderBlock
    assert restored_block.cross_attention_adapter is not None
    np.testing.assert_allclose(
        np.asarray(restored([x, encoder_outputs, ENCODER_PADDING])), expected, atol=1e-6)
