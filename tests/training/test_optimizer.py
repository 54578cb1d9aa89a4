import numpy as np

from tflm.models import CausalLM, TransformerBackbone
from tflm.training.optimizer import make_adamw, no_decay_variables

TINY = dict(vocabulary_size=40, num_layers=1, num_heads=2, hidden_dim=8, intermediate_dim=16,
            max_sequence_length=8, causal=True, norm_first=True)


def test_no_decay_is_biases_and_norms():
    model = CausalLM(TransformerBackbone(**TINY))
    names = sorted(v.path for v in no_decay_variables(model))
    assert names and all(n.split("/")[-1] in ("bias", "gamma", "beta") for n in names)
    excluded = {id(v) for v in no_decay_variables(model)}
    decayed = [v for v in model.trainable_variables if id(v) not in excluded]
    assert all(len(v.shape) == 2 for v in decayed)


def test_weight_decay_skips_excluded_variables():
    """With zero gradients, AdamW changes only the decayed weights: w <- w (1 - lr * wd)."""
    model = CausalLM(TransformerBackbone(**TINY))
    for v in model.trainable_variables:
        v.assign(np.ones(v.shape, "float32"))
    optimizer = make_adamw(model, learning_rate=0.1, weight_decay=0.5)
    variables = model.trainable_variables
    optimizer.apply_gradients([(np.zeros(v.shape, "float32"), v) for v in variables])
    excluded = {id(v) for v in no_decay_variables(model)}
    for v in variables:
        expected = 1.0 if id(v) in excluded else 1.0 - 0.1 * 0.5
        np.testing.assert_allclose(np.asarray(v), expected, rtol=1e-6, err_msg=v.path)
