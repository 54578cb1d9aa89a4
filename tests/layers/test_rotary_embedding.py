import numpy as np
import pytest

from keras_test_case import run_layer_test
from numpy_reference import rotary
from tflm.layers import RotaryEmbedding


def test_layer_contract():
    x = np.random.default_rng(0).standard_normal((2, 12, 3, 8)).astype("float32")
    run_layer_test(RotaryEmbedding, {}, x, (2, 12, 3, 8), expected_num_trainable_weights=0)


def test_preserves_norms():
    x = np.random.default_rng(1).standard_normal((2, 64, 4, 16)).astype("float32")
    y = np.asarray(RotaryEmbedding()(x))
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5)
    assert not np.allclose(y[:, 1:], x[:, 1:])  # positions > 0 are really rotated
    np.testing.assert_allclose(y[:, 0], x[:, 0], atol=1e-6)  # position 0: angle 0


def test_scores_depend_only_on_relative_position():
    rng = np.random.default_rng(2)
    q = rng.standard_normal(16).astype("float32")
    k = rng.standard_normal(16).astype("float32")
    rope = RotaryEmbedding()
    length = 40
    # The same query and key at every position.
    qs = np.asarray(rope(np.tile(q, (1, length, 1, 1))))[0, :, 0]
    ks = np.asarray(rope(np.tile(k, (1, length, 1, 1))))[0, :, 0]
    scores = qs @ ks.T  # scores[m, n] = <R_m q, R_n k>
    for offset in (0, 3, -7):
        diagonal = np.diagonal(scores, offset=offset)
        np.testing.assert_allclose(diagonal, diagonal[0], atol=1e-4)
    assert not np.isclose(scores[5, 2], scores[5, 3])


def test_start_index_continues_positions():
    x = np.random.default_rng(3).standard_normal((1, 10, 2, 8)).astype("float32")
    rope = RotaryEmbedding()
    full = np.asarray(rope(x))
    tail = np.asarray(rope(x[:, 6:], start_index=6))
    np.testing.assert_allclose(tail, full[:, 6:], atol=1e-5)


def test_odd_head_dim_is_an_error():
    with pytest.raises(ValueError, match="even"):
        RotaryEmbedding()(np.zeros((1, 2, 1, 5), "float32"))


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_layouts_match_numpy(layout):
    x = np.random.default_rng(4).standard_normal((2, 6, 3, 8)).astype("float32")
    expected = rotary(x.astype(np.float64), np.arange(4, 10), theta=500.0, layout=layout)
    actual = RotaryEmbedding(500.0, layout=layout)(x, start_index=4)
    np.testing.assert_allclose(np.asarray(actual), expected, atol=1e-5)


def test_interleaved_is_half_with_its_pairs_stored_side_by_side():
    x = np.random.default_rng(5).standard_normal((1, 5, 2, 8)).astype("float32")
    order = np.arange(8).reshape(2, 4).T.reshape(-1)  # channels 0, 4, 1, 5, ...: pairs adjacent
    half = np.asarray(RotaryEmbedding(layout="half")(x))
    interleaved = np.asarray(RotaryEmbedding(layout="interleaved")(x[..., order]))
    np.testing.assert_allclose(interleaved, half[..., order], atol=1e-6)


def test_unknown_layout_is_an_error():
    with pytest.raises(ValueError, match="layout='split'"):
        RotaryEmbedding(layout="split")
