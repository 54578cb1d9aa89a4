import numpy as np
import pytest

from keras_test_case import run_layer_test
from tflm.layers import PositionEmbedding


def test_layer_contract():
    x = np.random.default_rng(0).standard_normal((2, 12, 16)).astype("float32")
    run_layer_test(
        PositionEmbedding, {"sequence_length": 20}, x, (2, 12, 16), expected_num_trainable_weights=1
    )


def test_returns_table_rows_from_start_index():
    layer = PositionEmbedding(sequence_length=10)
    x = np.zeros((2, 4, 8), "float32")
    layer(x)
    table = np.asarray(layer.position_embeddings)
    np.testing.assert_array_equal(np.asarray(layer(x))[1], table[:4])
    np.testing.assert_array_equal(np.asarray(layer(x, start_index=5))[0], table[5:9])


def test_rejects_bad_length():
    with pytest.raises(ValueError, match="sequence_length"):
        PositionEmbedding(sequence_length=0)
