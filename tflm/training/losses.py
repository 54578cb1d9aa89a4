"""Token-level losses and metrics as sums, so replicas can add them exactly."""

import tensorflow as tf


def weighted_cross_entropy(labels, logits, weights, label_smoothing=0.0):
    """`(sum of w * CE, sum of w)` over all positions, in float32.

    With label smoothing `e`, the target puts `1 - e` on the label and `e`
    spread uniformly over the vocabulary:
    `CE = (1 - e) * nll + e * (logsumexp(z) - mean(z))`.
    Returning sums (not means) lets the trainer divide by the weight of the
    whole global batch, across replicas and micro-batches.
    """
    logits = tf.cast(logits, tf.float32)
    weights = tf.cast(weights, tf.float32)
    nll = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(labels, tf.int32),
                                                         logits=logits)
    if label_smoothing:
        uniform = tf.reduce_logsumexp(logits, axis=-1) - tf.reduce_mean(logits, axis=-1)
        nll = (1.0 - label_smoothing) * nll + label_smoothing * uniform
    return tf.reduce_sum(nll * weights), tf.reduce_sum(weights)


def weighted_correct(labels, logits, weights):
    """Sum of the weights of positions whose argmax is the label."""
    predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
    correct = tf.cast(tf.equal(predicted, tf.cast(labels, tf.int32)), tf.float32)
    return tf.reduce_sum(correct * tf.cast(weights, tf.float32))
