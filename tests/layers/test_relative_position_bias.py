import numpy as np
import pytest

from keras_test_case import run_layer_test
from numpy_reference import t5_relative_bucket
from tflm.layers import RelativePositionBias
from tflm.layers.relative_position_bias import relative_position_bucket, relative_positions


def test_layer_contract():
    distances = np.asarray(relative_positions(5, 7))[None].repeat(2, axis=0)
    run_layer_test(RelativePositionBias, {"num_heads": 3, "num_buckets": 8, "max_distance": 16},
                   distances, (2, 3, 5, 7), expected_num_trainable_weights=1,
                   input_dtype="int32")


@pytest.mark.parametrize("bidirectional", [True, False])
def test_buckets_match_t5(bidirectional):
    distances = np.arange(-300, 301)
    expected = t5_relative_bucket(distances, bidirectional)
    buckets = np.asarray(relative_position_bucket(distances, bidirectional, 32, 128))
    np.testing.assert_array_equal(buckets, expected)
    # Exact up to 8 (bidirectional: 16 buckets a side) or 16 back, then log-spaced; 128 and
    # more back share the last.
    exact = 8 if bidirectional else 16
    assert len(set(expected[300 - exact + 1:301])) == exact
    assert set(expected[:300 - 127]) == {15 if bidirectional else 31}


def test_bias_reads_the_table_per_head():
    layer = RelativePositionBias(num_heads=2, num_buckets=8, max_distance=16, bidirectional=False)
    distances = np.asarray(relative_positions(3, 6, start_index=2))  # queries at 2, 3, 4
    np.testing.assert_array_equal(distances[0], np.arange(6) - 2)
    bias = np.asarray(layer(distances[None]))[0]
    table = np.asarray(layer.embeddings)
    buckets = t5_relative_bucket(distances, False, 8, 16)
    for h in range(2):
        np.testing.assert_allclose(bias[h], table[buckets, h])
