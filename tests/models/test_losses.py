import numpy as np
import pytest
import tensorflow as tf

from tflm.models.losses import (chunked_cross_entropy, even_chunk_size, weighted_correct,
                                 weighted_cross_entropy)


def _numpy_cross_entropy(labels, logits, weights, smoothing):
    logits = logits.astype(np.float64)
    log_probs = logits - logits.max(-1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
    vocab = logits.shape[-1]
    target = np.full(logits.shape, smoothing / vocab)
    np.put_along_axis(target, labels[..., None], 1 - smoothing + smoothing / vocab, axis=-1)
    per_position = -(target * log_probs).sum(-1)
    return (per_position * weights).sum(), weights.sum()


def test_weighted_sums_with_and_without_label_smoothing():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((3, 5, 11)).astype("float32") * 3
    labels = rng.integers(0, 11, (3, 5))
    weights = (rng.random((3, 5)) > 0.3).astype("float32")
    for smoothing in (0.0, 0.1, 0.5):
        loss_sum, weight_sum = weighted_cross_entropy(labels, logits, weights, smoothing)
        expected = _numpy_cross_entropy(labels, logits, weights, smoothing)
        np.testing.assert_allclose([float(loss_sum), float(weight_sum)], expected, rtol=1e-5)


def test_weighted_correct():
    logits = np.array([[[0.0, 2.0], [3.0, 1.0], [0.0, 1.0]]], "float32")
    labels = np.array([[1, 1, 1]])
    weights = np.array([[1.0, 1.0, 0.0]], "float32")
    assert float(weighted_correct(labels, logits, weights)) == 1.0


def _loss_and_gradients(loss_fn, hidden, kernel, bias):
    with tf.GradientTape() as tape:
        tape.watch([hidden, kernel, bias])
        loss_sum, weight_sum, predictions = loss_fn(hidden, kernel, bias)
        # A non-unit upstream gradient: the custom gradient must scale by it.
        scaled = 3.0 * loss_sum
    return [loss_sum, weight_sum, predictions] + tape.gradient(scaled, [hidden, kernel, bias])


@pytest.mark.parametrize("rows,chunk_size,expected", [
    (80, 512, 80),      # a masked LM's predicted rows: one chunk, no padding
    (1024, 512, 512),
    (1000, 512, 500),   # two equal chunks, not 512 + 488 padded to 512
    (10, 3, 3),
    (10, 4, 4),         # three chunks: the fewest of at most 4 rows
    (0, 512, 1),
])
def test_even_chunk_size(rows, chunk_size, expected):
    assert even_chunk_size(rows, chunk_size) == expected
    chunks = -(-rows // expected) if rows else 1
    assert expected <= chunk_size and chunks == max(-(-rows // chunk_size), 1)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_chunked_cross_entropy_equals_the_whole_logits(jit_compile):
    """Loss, weight, argmax and the gradients wrt hidden, kernel and bias, for chunks that
    divide the 10 rows and that do not (the padded last chunk), with label smoothing, the
    kernel transposed, and rows of weight 0."""
    rng = np.random.default_rng(0)
    hidden = tf.constant(rng.standard_normal((2, 5, 8)), tf.float32)
    kernel = tf.constant(rng.standard_normal((8, 13)), tf.float32)
    bias = tf.constant(rng.standard_normal((13,)), tf.float32)
    weights = np.ones((2, 5), "float32")
    weights[1, 3:] = 0.0
    labels = np.where(weights > 0, rng.integers(0, 13, (2, 5)), 0).astype("int32")

    def whole(hidden, kernel, bias):
        logits = tf.matmul(hidden, kernel) + bias
        loss_sum, weight_sum = weighted_cross_entropy(labels, logits, weights, smoothing)
        return loss_sum, weight_sum, tf.argmax(logits, -1, output_type=tf.int32)

    def chunked(hidden, kernel, bias):
        if transpose:  # the kernel as a tied embedding table stores it
            kernel = tf.transpose(kernel)
        return chunked_cross_entropy(hidden, kernel, labels, weights, chunk_size, bias=bias,
                                     label_smoothing=smoothing, return_predictions=True,
                                     transpose_kernel=transpose)

    for smoothing, transpose in ((0.0, False), (0.1, True)):
        expected = _loss_and_gradients(whole, hidden, kernel, bias)
        for chunk_size in (3, 5, 16):
            # A new function each time: a trace would keep the first closure's values.
            run = tf.function(_loss_and_gradients, jit_compile=True) if jit_compile else (
                _loss_and_gradients)
            actual = run(chunked, hidden, kernel, bias)
            for name, a, e in zip(["loss", "weight", "argmax", "d_hidden", "d_kernel", "d_bias"],
                                  actual, expected):
                np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6,
                                           err_msg=f"{name}, chunk {chunk_size}")
