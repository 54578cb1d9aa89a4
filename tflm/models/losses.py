"""Token-level losses and metrics as sums, so replicas can add them exactly."""

import keras
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


def distillation_sums(teacher_logits, logits, weights, temperature=1.0):
    """`(sum of w * T^2 * KL(p_T || q_T), sum of w)` over all positions, in float32.

    `p_T` and `q_T` are the softmax over the last axis of the teacher's and the student's
    logits divided by `T`. The `T^2` keeps the soft loss's gradients on the scale of the
    hard loss's as `T` grows (Hinton et al., 2015). As sums, the trainer divides them by
    the weight of the whole global batch, as it does `weighted_cross_entropy`'s.
    """
    teacher_log_p = tf.nn.log_softmax(tf.cast(teacher_logits, tf.float32) / temperature)
    log_q = tf.nn.log_softmax(tf.cast(logits, tf.float32) / temperature)
    kl = tf.reduce_sum(tf.exp(teacher_log_p) * (teacher_log_p - log_q), axis=-1)
    weights = tf.cast(weights, tf.float32)
    return temperature ** 2 * tf.reduce_sum(kl * weights), tf.reduce_sum(weights)


def weighted_correct(labels, logits, weights):
    """Sum of the weights of positions whose argmax is the label."""
    predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
    correct = tf.cast(tf.equal(predicted, tf.cast(labels, tf.int32)), tf.float32)
    return tf.reduce_sum(correct * tf.cast(weights, tf.float32))


class WeightedSumLoss(keras.losses.Loss):
    """Base of tflm's Keras losses: a `sums(labels, outputs, weights) -> (sum of w * loss,
    sum of w)` function (the one the trainer uses) as a Keras loss for `model.fit`: the sum
    over the batch divided by the sum of the weights.

    A subclass defines `sums(self, labels, outputs, weights)` and is registered
    serializable. `per_example`: one weight per example (labels of one row per example with
    a vector of outputs, as multi-label classification), else one per label element.
    """

    per_example = False

    def sums(self, y_true, y_pred, sample_weight):
        """`(sum of w * loss, sum of w)` over the batch."""
        raise TypeError(f"{type(self).__name__} defines no `sums`.")

    def __call__(self, y_true, y_pred, sample_weight=None):
        if sample_weight is None:
            sample_weight = tf.ones(tf.shape(y_true)[:1] if self.per_example else tf.shape(y_true),
                                    tf.float32)
        loss_sum, weight_sum = self.sums(y_true, y_pred, sample_weight)
        return tf.math.divide_no_nan(loss_sum, weight_sum)

    def call(self, y_true, y_pred):
        return self(y_true, y_pred)

    def get_config(self):
        return {"name": self.name}


@keras.saving.register_keras_serializable(package="tflm")
class WeightedCrossEntropy(WeightedSumLoss):
    """`weighted_cross_entropy` as a Keras loss, for `model.fit`: the sum of `w * CE` over the
    batch divided by the sum of `w` (the mean over the positions that carry weight).

    The trainer takes the same sums from `weighted_cross_entropy` and divides by the weight
    of the whole global batch; one definition serves both.
    """

    def __init__(self, label_smoothing=0.0, name="weighted_cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)

    def sums(self, y_true, y_pred, sample_weight):
        return weighted_cross_entropy(y_true, y_pred, sample_weight, self.label_smoothing)

    def get_config(self):
        return {"label_smoothing": self.label_smoothing, "name": self.name}
