"""Gradient checkpointing (`trainer.gradient_checkpointing`): each block recomputed in the
backward pass gives the plain gradients, dropout included, with and without XLA, and the
trainer's accumulated steps the plain weights. Two replicas under MirroredStrategy:
tests/training/test_multi_process.py."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tflm.config import ModelConfig
from tflm.experiment import load_experiment
from tflm.models.backbone import set_gradient_checkpointing
from tflm.tasks import build_task, get_task
from tflm.training.trainer import Trainer

# A decoder (causal LM) and an encoder-decoder with T5's relative position bias: between
# them every gradient path of a block (input, variables, bias, encoder output), causal
# and bidirectional blocks, cross-attention. Dropout on, so the recomputed masks matter.
MODELS = {
    "causal_lm": dict(task="causal_lm"),
    "seq2seq_relative": dict(task="seq2seq", position_encoding="relative",
                             normalization="rms_norm", use_bias=False),
}


def _model_and_inputs(name, dtype=None):
    keras.utils.set_random_seed(0)
    config = ModelConfig(vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=16,
                         intermediate_dim=32, max_sequence_length=16, norm_first=True,
                         dropout=0.3, attention_dropout=0.3, **MODELS[name])
    model = build_task(config, dtype=dtype)
    rng = np.random.default_rng(0)
    ids, mask = rng.integers(0, 50, (2, 8)).astype("int32"), np.ones((2, 8), "int32")
    mask[1, 6:] = 0
    if name == "causal_lm":
        return model, {"token_ids": ids, "padding_mask": mask}
    return model, {"encoder_token_ids": ids, "encoder_padding_mask": mask,
                   "decoder_token_ids": ids[:, :6], "decoder_padding_mask": mask[:, :6]}


def _gradients(model, inputs, checkpointing, jit_compile):
    """The loss and the gradients of one training-mode step from the same seed states."""
    seeds = [v for v in model.non_trainable_variables if "seed_generator" in v.path]
    start = [v.numpy() for v in seeds]
    set_gradient_checkpointing(model, checkpointing)

    @tf.function(jit_compile=jit_compile)
    def step():
        with tf.GradientTape() as tape:
            logits = tf.cast(model(inputs, training=True), tf.float32)
            loss = tf.reduce_sum(tf.math.log_softmax(logits)[..., 3])
        return loss, tape.gradient(loss, model.trainable_variables)

    loss, grads = step()
    after = [v.numpy() for v in seeds]
    for variable, value in zip(seeds, start):
        variable.assign(value)
    return float(loss), [tf.convert_to_tensor(g).numpy() for g in grads], after


@pytest.mark.parametrize("name, jit_compile", [("causal_lm", True), ("seq2seq_relative", False)],
                         ids=["causal_lm-xla", "seq2seq_relative-graph"])
def test_gradients_equal_the_plain_step(name, jit_compile):
    model, inputs = _model_and_inputs(name)
    assert set_gradient_checkpointing(model) == (2 if name.startswith("seq2seq") else 1)
    plain_loss, plain, plain_seeds = _gradients(model, inputs, False, jit_compile)
    loss, grads, seeds = _gradients(model, inputs, True, jit_compile)
    np.testing.assert_allclose(loss, plain_loss, rtol=1e-6)
    # Every variable has a gradient (the block variables come back through the recompute),
    # and it is the plain one: the same dropout masks were drawn.
    for variable, expected, actual in zip(model.trainable_variables, plain, grads):
        assert np.any(expected != 0), variable.path
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max(),
                                   err_msg=variable.path)
    # The seed generators end where the plain step leaves them: later steps draw alike.
    for expected, actual in zip(plain_seeds, seeds):
        np.testing.assert_array_equal(actual, expected)


def test_mixed_precision_and_inference_are_unchanged():
    model, inputs = _model_and_inputs("causal_lm", dtype="mixed_bfloat16")
    _, plain, _ = _gradients(model, inputs, False, jit_compile=False)
    _, grads, _ = _gradients(model, inputs, True, jit_compile=False)
    for variable, expected, actual in zip(model.trainable_variables, plain, grads):
        assert actual.dtype == np.float32
        np.testing.assert_allclose(actual, expected, rtol=2e-2, atol=2e-2 * np.abs(expected).max(),
                                   err_msg=variable.path)
    # Outside training the blocks run as they always do.
    set_gradient_checkpointing(model, True)
    with_it = model(inputs, training=False)
    set_gradient_checkpointing(model, False)
    np.testing.assert_array_equal(with_it, model(inputs, training=False))


def test_training_with_it_ends_at_the_plain_weights(tmp_path):
    """4 steps of 2 accumulated micro-batches with dropout, the fused step: with
    checkpointing the run ends where the plain one does (the strategies' step with two
    replicas: test_multi_process)."""
    base = ("model.dropout=0.1,model.attention_dropout=0.1,data.sequence_length=16,"
            "data.global_batch_size=4,data.shuffle_buffer_size=50,trainer.train_steps=4,"
            "trainer.steps_per_loop=4,trainer.log_every=4,trainer.gradient_accumulation_steps=2,"
            "trainer.jit_compile=false")
    weights = []
    for checkpointing in (False, True):
        config = load_experiment("configs/tiny_gpt.yaml",
                                 f"{base},trainer.gradient_checkpointing={checkpointing}")
        trainer = Trainer(get_task(config), str(tmp_path / str(checkpointing)),
                          print_fn=lambda line: None)
        assert trainer.model.backbone.gradient_checkpointing == checkpointing
        assert trainer.train() == "completed"
        weights.append(np.concatenate([np.ravel(v.numpy())
                                       for v in trainer.model.trainable_variables]))
    np.testing.assert_allclose(weights[1], weights[0], atol=2e-6)
