import numpy as np

from keras_test_case import run_layer_test
from numpy_reference import sinusoidal_encoding
from tflm.layers import SinusoidalPositionEncoding


def test_layer_contract():
    x = np.random.default_rng(0).standard_normal((2, 12, 16)).astype("float32")
    run_layer_test(SinusoidalPositionEncoding, {}, x, (2, 12, 16), expected_num_trainable_weights=0)


def test_matches_closed_form():
    x = np.zeros((3, 50, 64), "float32")
    encoding = np.asarray(SinusoidalPositionEncoding()(x))
    expected = sinusoidal_encoding(50, 64)
    np.testing.assert_allclose(encoding[0], expected, atol=1e-5)
    np.testing.assert_array_equal(encoding[0], encoding[2])  # same for every batch row


def test_odd_width_and_start_index():
    x = np.zeros((1, 10, 7), "float32")
    np.testing.assert_allclose(
        np.asarray(SinusoidalPositionEncoding(max_wavelength=100)(x))[0],
        sinusoidal_encoding(10, 7, max_wavelength=100.0),
        atol=1e-5,
    )
    shifted = SinusoidalPositionEncoding()(np.zeros((1, 4, 8), "float32"), start_index=6)
    np.testing.assert_allclose(np.asarray(shifted)[0], sinusoidal_encoding(10, 8)[6:], atol=1e-5)
