import keras
import numpy as np
import pytest
import tensorflow as tf

from tflm.models import CausalLM, TransformerBackbone
from tflm.training.adamw import AdamW
from tflm.training.optimizer import make_adamw, no_decay_variables
from tflm.training.schedules import WarmupDecay

TINY = dict(vocabulary_size=40, num_layers=1, num_heads=2, hidden_dim=8, intermediate_dim=16,
            max_sequence_length=8, causal=True, norm_first=True)


def test_same_updates_as_keras_adamw():
    """Five steps of random gradients: tflm's AdamW and Keras' AdamW agree."""
    a, b = CausalLM(TransformerBackbone(**TINY)), CausalLM(TransformerBackbone(**TINY))
    for va, vb in zip(a.trainable_variables, b.trainable_variables):
        vb.assign(va)
    schedule = WarmupDecay(1e-2, 10, warmup_steps=3)
    ours = AdamW(a.trainable_variables, schedule, weight_decay=0.1,
                 exclude_from_decay=no_decay_variables(a))
    theirs = make_adamw(b, learning_rate=WarmupDecay(1e-2, 10, warmup_steps=3), weight_decay=0.1)
    rng = np.random.default_rng(0)
    for _ in range(5):
        grads = [rng.standard_normal(v.shape).astype("float32") for v in a.trainable_variables]
        ours.apply([tf.constant(g) for g in grads])
        theirs.apply(grads, b.trainable_variables)
    assert int(ours.iterations.numpy()) == 5
    for va, vb in zip(a.trainable_variables, b.trainable_variables):
        np.testing.assert_allclose(np.asarray(va), np.asarray(vb), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("multipliers", [None, (0.25, 2.0)])
def test_matches_the_formula_in_numpy(multipliers):
    """With learning-rate multipliers (discriminative rates), each variable's step and decay
    scale by its own factor."""
    w0 = np.array([1.0, -2.0, 3.0], "float32")
    bias0 = np.array([0.5], "float32")
    w, bias = tf.Variable(w0), tf.Variable(bias0)
    base, wd, b1, b2, eps = 0.1, 0.5, 0.9, 0.999, 1e-6
    optimizer = AdamW([w, bias], base, weight_decay=wd, beta_1=b1, beta_2=b2, epsilon=eps,
                      exclude_from_decay=[bias], lr_multipliers=multipliers)
    grads = [np.array([0.1, 0.2, -0.3], "float32"), np.array([1.0], "float32")]
    expected = []
    for value, grad, decayed, factor in ((w0, grads[0], True, (multipliers or (1, 1))[0]),
                                         (bias0, grads[1], False, (multipliers or (1, 1))[1])):
        value = value.astype(np.float64)
        lr = base * factor
        m = v = 0.0
        for t in (1, 2):
            if decayed:
                value = value - lr * wd * value
            m = m + (grad - m) * (1 - b1)
            v = v + (grad**2 - v) * (1 - b2)
            value = value - lr * np.sqrt(1 - b2**t) / (1 - b1**t) * m / (np.sqrt(v) + eps)
        expected.append(value)
    for _ in range(2):
        optimizer.apply([tf.constant(g) for g in grads])
    # atol: float32 rounds 1 - beta_2 (1e-3) by ~5e-5 relative; a value near 0.1 after
    # two steps of 0.2 keeps that error in absolute terms.
    np.testing.assert_allclose(w.numpy(), expected[0], rtol=1e-5, atol=5e-6)
    np.testing.assert_allclose(bias.numpy(), expected[1], rtol=1e-5, atol=5e-6)


def test_keras_variables_and_checkpoint(tmp_path):
    model = CausalLM(TransformerBackbone(**TINY))
    optimizer = AdamW(model.trainable_variables, 1e-3)
    optimizer.apply([tf.ones_like(v) for v in model.trainable_variables])
    path = tf.train.Checkpoint(optimizer=optimizer).save(str(tmp_path / "opt"))
    fresh = AdamW(model.trainable_variables, 1e-3)
    tf.train.Checkpoint(optimizer=fresh).restore(path).assert_consumed()
    assert int(fresh.iterations.numpy()) == 1
    for a, b in zip(optimizer.momentums, fresh.momentums):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert isinstance(model.trainable_variables[0], keras.Variable)


def test_multipliers_must_match_the_variables():
    with pytest.raises(ValueError, match="1 learning-rate multipliers for 2 variables"):
        AdamW([tf.Variable(1.0), tf.Variable(2.0)], 0.1, lr_multipliers=[1.0])
