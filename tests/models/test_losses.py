import numpy as np

from tflm.models.losses import weighted_correct, weighted_cross_entropy


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
