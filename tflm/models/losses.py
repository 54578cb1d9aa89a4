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


def even_chunk_size(rows, chunk_size):
    """The size of the fewest equal chunks of at most `chunk_size` that cover `rows` rows."""
    num_chunks = max(-(-rows // chunk_size), 1)
    return max(-(-rows // num_chunks), 1)


def chunked_cross_entropy(hidden, kernel, labels, weights, chunk_size, bias=None,
                          label_smoothing=0.0, return_predictions=False, transpose_kernel=False):
    """`weighted_cross_entropy` of `logits = hidden @ kernel (+ bias)`, `chunk_size` rows
    at a time: the float32 logits of all rows, `(rows, vocabulary)`, never exist.

    At GPT-2's 50,257 ids the logits of a 4 x 256 batch are 206 MB of float32, and their
    gradient as much again; here at most `chunk_size` rows of each exist at a time.
    The gradients wrt `hidden`, `kernel` and `bias` are computed in the same pass as the
    loss (the loss is a scalar whose only use is to be differentiated, so the backward
    pass just scales them by the upstream gradient): three matmuls, as without chunks,
    and no recomputation of the logits.

    Args:
        hidden: `(..., d)` in the compute dtype; the matmul runs in it, the softmax in float32.
        kernel: `(d, vocabulary)`, the output projection; with `transpose_kernel`
            `(vocabulary, d)` (a tied embedding table, used as it is stored).
        labels, weights: `hidden.shape[:-1]`; rows of weight 0 add nothing (any label).
        chunk_size: rows per chunk (> 0); the last chunk is padded with rows of weight 0.
        bias: optional `(vocabulary,)`, added to the logits in float32.
        label_smoothing: as `weighted_cross_entropy`.
        return_predictions: also return the argmax of each row's logits, `labels`' shape.

    Returns:
        `(sum of w * CE, sum of w)` in float32, and the predictions if asked. Only the
        first has a gradient.
    """
    chunk_size = int(chunk_size)
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}.")
    label_shape = tf.shape(labels)
    depth = tf.shape(hidden)[-1]
    hidden = tf.reshape(hidden, [-1, depth])
    if hidden.shape[0] is not None:
        # Rows known: equal chunks of at most `chunk_size`, so padding stays under one row a
        # chunk (a masked LM's 80 predicted rows are one chunk of 80, not 512 rows of work).
        chunk_size = even_chunk_size(hidden.shape[0], chunk_size)
    labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
    weights = tf.reshape(tf.cast(weights, tf.float32), [-1])
    rows = tf.shape(hidden)[0]
    num_chunks = (rows + chunk_size - 1) // chunk_size
    pad = num_chunks * chunk_size - rows
    # Padded rows: weight 0, label 0; their gradient is 0 and their loss is not counted.
    chunks = (tf.reshape(tf.pad(hidden, [[0, pad], [0, 0]]), [num_chunks, chunk_size, depth]),
              tf.reshape(tf.pad(labels, [[0, pad]]), [num_chunks, chunk_size]),
              tf.reshape(tf.pad(weights, [[0, pad]]), [num_chunks, chunk_size]))
    vocabulary = tf.shape(kernel)[0 if transpose_kernel else -1]
    smoothing = float(label_smoothing)
    has_bias = bias is not None

    def chunk_logits(hidden_chunk, kernel, bias):
        logits = tf.cast(tf.matmul(hidden_chunk, kernel, transpose_b=transpose_kernel),
                         tf.float32)
        return logits + tf.cast(bias, tf.float32) if has_bias else logits

    def forward(hidden_chunks, kernel, *maybe_bias):
        bias = maybe_bias[0] if has_bias else None
        labels_chunks, weight_chunks = chunks[1], chunks[2]

        def body(i, loss_sum, kernel_grad, bias_grad, hidden_grads, predictions):
            hidden_chunk, label_chunk, weight_chunk = (
                hidden_chunks[i], labels_chunks[i], weight_chunks[i])
            logits = chunk_logits(hidden_chunk, kernel, bias)
            # The fused op gives the loss and d(loss)/d(logits) = softmax - onehot together.
            nll, logits_grad = tf.raw_ops.SparseSoftmaxCrossEntropyWithLogits(
                features=logits, labels=label_chunk)
            if smoothing:
                # d/dz = (1 - e)(softmax - onehot) + e (softmax - 1/V)
                #      = logits_grad + e (onehot - 1/V).
                uniform = tf.reduce_logsumexp(logits, axis=-1) - tf.reduce_mean(logits, axis=-1)
                nll = (1.0 - smoothing) * nll + smoothing * uniform
                logits_grad = logits_grad + smoothing * (
                    tf.one_hot(label_chunk, vocabulary) - 1.0 / tf.cast(vocabulary, tf.float32))
            logits_grad = logits_grad * weight_chunk[:, None]
            loss_sum += tf.reduce_sum(nll * weight_chunk)
            grad = tf.cast(logits_grad, hidden_chunk.dtype)
            hidden_grads = hidden_grads.write(i, tf.cast(
                tf.matmul(grad, kernel, transpose_b=not transpose_kernel), tf.float32))
            if transpose_kernel:
                kernel_grad += tf.cast(tf.matmul(grad, hidden_chunk, transpose_a=True),
                                       tf.float32)
            else:
                kernel_grad += tf.cast(tf.matmul(hidden_chunk, grad, transpose_a=True),
                                       tf.float32)
            if has_bias:
                bias_grad += tf.reduce_sum(logits_grad, axis=0)
            if return_predictions:
                predictions = predictions.write(
                    i, tf.argmax(logits, axis=-1, output_type=tf.int32))
            return i + 1, loss_sum, kernel_grad, bias_grad, hidden_grads, predictions

        state = (tf.constant(0), tf.constant(0.0), tf.zeros(tf.shape(kernel), tf.float32),
                 tf.zeros([vocabulary] if has_bias else [0], tf.float32),
                 tf.TensorArray(tf.float32, size=num_chunks,
                                element_shape=[chunk_size, hidden_chunks.shape[-1]]),
                 tf.TensorArray(tf.int32, size=num_chunks if return_predictions else 0,
                                element_shape=[chunk_size]))
        _, loss_sum, kernel_grad, bias_grad, hidden_grads, predictions = tf.while_loop(
            lambda i, *_: i < num_chunks, body, state, maximum_iterations=num_chunks)
        grads = (tf.reshape(hidden_grads.stack(), tf.shape(hidden_chunks)), kernel_grad)
        if has_bias:
            grads += (bias_grad,)
        predictions = predictions.stack() if return_predictions else tf.zeros([0], tf.int32)
        return loss_sum, grads, predictions

    @tf.custom_gradient
    def loss_with_gradient(hidden_chunks, kernel, *maybe_bias):
        loss_sum, grads, predictions = forward(hidden_chunks, kernel, *maybe_bias)

        def grad_fn(upstream, *unused_predictions_grad):
            # Scaled in float32 (with the loss scale under float16), then cast to the
            # inputs' dtypes, as the gradient through the whole logits is.
            return tuple(tf.cast(g * upstream, x.dtype)
                         for g, x in zip(grads, (hidden_chunks, kernel) + maybe_bias))

        return (loss_sum, tf.stop_gradient(predictions)), grad_fn

    # Tensors, not variables: the custom gradient is wrt these inputs (a variable read
    # inside it would get no gradient).
    inputs = tuple(tf.convert_to_tensor(t) for t in (chunks[0], kernel) + (
        (bias,) if has_bias else ()))
    loss_sum, predictions = loss_with_gradient(*inputs)
    weight_sum = tf.reduce_sum(weights)
    if not return_predictions:
        return loss_sum, weight_sum
    predictions = tf.reshape(tf.reshape(predictions, [-1])[:rows], label_shape)
    return loss_sum, weight_sum, predictions


@keras.saving.register_keras_serializable(package="tflm")
class TokenAccuracy(keras.metrics.SparseCategoricalAccuracy):
    """`SparseCategoricalAccuracy` that also takes the predicted ids in place of the logits
    (`y_pred` of the labels' shape, integer): what a step with `chunked_cross_entropy`,
    which has no whole logits, gives `fit`'s metrics."""

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_pred = tf.convert_to_tensor(y_pred)
        if not y_pred.dtype.is_integer:
            return super().update_state(y_true, y_pred, sample_weight)
        matches = tf.cast(tf.equal(tf.cast(y_true, tf.int32), tf.cast(y_pred, tf.int32)),
                          self.dtype)
        return keras.metrics.Mean.update_state(self, matches, sample_weight=sample_weight)
