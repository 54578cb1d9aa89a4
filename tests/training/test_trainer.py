"""The trainer in one process: accumulation, loss scaling, NaN guard, resume."""

import numpy as np
import pytest
import tensorflow as tf

from tflm.config import ConfigError
from tflm.experiment import load_experiment
from tflm.tasks import make_dataset
from tflm.training.checkpoints import CheckpointError
from tflm.training.trainer import Trainer, TrainingError
from tflm.tasks import get_task

BASE = ("data.sequence_length=32,data.shuffle_buffer_size=50,trainer.log_every=4,"
        "trainer.steps_per_loop=4,trainer.warmup_steps=1")


def _config(extra=""):
    return load_experiment("configs/tiny_gpt.yaml", ",".join(filter(None, [BASE, extra])))


def _weights(trainer):
    return np.concatenate([np.ravel(v.numpy()) for v in trainer.model.trainable_variables])


def _quiet(line):
    del line


@pytest.mark.parametrize("extra", ["trainer.jit_compile=true",
                                   "trainer.jit_compile=false,trainer.gradient_accumulation_steps=2"])
def test_the_step_and_evaluation_are_traced_without_autograph(tmp_path, extra,
                                                              autograph_conversions):
    """Training and evaluation convert nothing with autograph (their functions are graph code;
    converting them took about 0.65 s of every training run's start)."""
    config = _config(f"trainer.train_steps=4,data.global_batch_size=4,trainer.eval_steps=2,{extra}")
    trainer = Trainer(get_task(config), str(tmp_path / "run"), print_fn=_quiet)
    assert trainer.train() == "completed"
    trainer.evaluate()
    assert autograph_conversions == []


def test_gradient_accumulation_equals_one_larger_batch(tmp_path):
    """4 steps of 2 micro-batches of 4 rows == 4 steps of 8 rows (the same rows)."""
    results = []
    for accumulate, batch in ((1, 8), (2, 4)):
        config = _config(f"trainer.train_steps=4,data.global_batch_size={batch},"
                         f"trainer.gradient_accumulation_steps={accumulate}")
        trainer = Trainer(get_task(config), str(tmp_path / f"acc{accumulate}"), print_fn=_quiet)
        assert trainer.train() == "completed"
        results.append((_weights(trainer), trainer.history[-1]["loss"]))
    np.testing.assert_allclose(results[0][0], results[1][0], atol=2e-6)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-5)


# The three step paths. One device: the fused step, one function; with jit_compile one XLA
# computation whose guard against a non-finite step is a select, without it a tf.cond. A
# mirrored strategy (here of one device): the update in cross-replica context behind a tf.cond.
STEP_PATHS = {
    "fused_xla": "trainer.jit_compile=true",
    "fused": "trainer.jit_compile=false",
    "distributed": "trainer.jit_compile=false,runtime.distribution_strategy=mirrored",
}


@pytest.mark.parametrize("path", sorted(STEP_PATHS))
def test_float16_loss_scale_recovers_from_overflow(tmp_path, path):
    config = _config(f"trainer.train_steps=16,data.global_batch_size=4,{STEP_PATHS[path]},"
                     "runtime.mixed_precision=mixed_float16,runtime.initial_loss_scale=1.0e9")
    trainer = Trainer(get_task(config), str(tmp_path / "fp16"), print_fn=_quiet)
    before = _weights(trainer)
    assert trainer.train() == "completed"
    scale = float(trainer.loss_scale.scale.numpy())
    skipped = int(round(np.log2(1e9 / scale)))
    assert skipped >= 1, "a scale of 1e9 overflows float16 gradients"
    # Every overflowing step was skipped (halving the scale); the rest updated the weights.
    assert int(trainer.optimizer.iterations.numpy()) == 16 - skipped > 0
    after = _weights(trainer)
    assert np.all(np.isfinite(after)) and not np.array_equal(before, after)
    assert trainer.history[-1]["loss_scale"] == scale


def _poisoned_dataset_fn(config, bad_index):
    """The usual batches, with batch `bad_index` made to give a NaN loss (or dropped: None)."""

    def dataset_fn(context):
        dataset = make_dataset(config, input_context=context).enumerate()
        if bad_index is None:
            return dataset.map(lambda i, batch: batch)

        def poison(i, batch):
            features, labels, weights = batch
            nan = tf.where(tf.equal(i, bad_index), np.nan, 1.0)
            return features, labels, weights * nan

        return dataset.map(poison)

    return dataset_fn


def test_nan_loss_stops_with_a_clear_message(tmp_path):
    config = _config("trainer.train_steps=12,data.global_batch_size=4,trainer.jit_compile=false")
    trainer = Trainer(get_task(config), str(tmp_path / "nan"), dataset_fn=_poisoned_dataset_fn(config, 6),
                      print_fn=_quiet)
    with pytest.raises(TrainingError, match=r"loss is nan at step 7.*recover_on_nan"):
        trainer.train()


@pytest.mark.parametrize("path", sorted(STEP_PATHS))
def test_recover_on_nan_skips_the_bad_batch(tmp_path, path):
    """Recovering equals training on the data without that batch."""
    extra = (f"trainer.train_steps=12,data.global_batch_size=4,{STEP_PATHS[path]},"
             "trainer.checkpoint_every=5,trainer.steps_per_loop=1,trainer.recover_on_nan=true")
    config = _config(extra)
    lines = []
    recovered = Trainer(get_task(config), str(tmp_path / "recover"),
                        dataset_fn=_poisoned_dataset_fn(config, 7), print_fn=lines.append)
    assert recovered.train() == "completed"
    assert any("restored" in line and "step 8" in line for line in lines)
    assert int(recovered.optimizer.iterations.numpy()) == 11  # one batch skipped

    def without_batch_7(context):
        dataset = make_dataset(config, input_context=context).enumerate()
        return dataset.filter(lambda i, batch: tf.not_equal(i, 7)).map(lambda i, batch: batch)

    reference = Trainer(get_task(config), str(tmp_path / "reference"), dataset_fn=without_batch_7,
                        print_fn=_quiet)
    reference.train(until_step=11)
    np.testing.assert_allclose(_weights(recovered), _weights(reference), atol=1e-6)


def test_incompatible_checkpoint_is_a_clear_error(tmp_path):
    model_dir = tmp_path / "run"
    config = _config("trainer.train_steps=2,data.global_batch_size=2,trainer.jit_compile=false")
    Trainer(get_task(config), str(model_dir), print_fn=_quiet).train()

    wider = _config("trainer.train_steps=4,data.global_batch_size=2,trainer.jit_compile=false,"
                    "model.hidden_dim=64,model.num_heads=4")
    with pytest.raises(CheckpointError, match=r"ckpt-2: cannot restore"):
        Trainer(get_task(wider), str(model_dir), print_fn=_quiet).train()


def test_exact_resume_in_one_process(tmp_path):
    config = _config("trainer.train_steps=10,data.global_batch_size=4,trainer.checkpoint_every=3,"
                     "trainer.jit_compile=false")
    straight = Trainer(get_task(config), str(tmp_path / "straight"), print_fn=_quiet)
    straight.train()
    first = Trainer(get_task(config), str(tmp_path / "pieces"), print_fn=_quiet)
    assert first.train(until_step=5) == "stopped"
    second = Trainer(get_task(config), str(tmp_path / "pieces"), print_fn=_quiet)
    assert second.train() == "completed"
    assert int(second.step.numpy()) == 10
    np.testing.assert_allclose(_weights(second), _weights(straight), atol=1e-6)


def test_fused_one_device_step_equals_the_distributed_one(tmp_path):
    """The fused step, in XLA or not, == forward/backward then the cross-replica update."""
    weights = {}
    for path, extra in STEP_PATHS.items():
        config = _config(f"trainer.train_steps=6,data.global_batch_size=4,{extra}")
        trainer = Trainer(get_task(config), str(tmp_path / path), print_fn=_quiet)
        assert trainer.train_step.fused == path.startswith("fused")
        trainer.train()
        weights[path] = _weights(trainer)
    np.testing.assert_allclose(weights["fused"], weights["distributed"], atol=2e-6)
    np.testing.assert_allclose(weights["fused_xla"], weights["distributed"], atol=2e-5)


def test_document_mask_trains_and_evaluates(tmp_path):
    """`data.document_mask=true`: the batches carry the documents, the trainer trains
    and evaluates on them; other tasks have no such key."""
    config = _config("trainer.train_steps=4,data.global_batch_size=4,trainer.jit_compile=false,"
                     "data.document_mask=true")
    task = get_task(config)
    features, _, _ = make_dataset(config).element_spec
    assert features["document_ids"].shape == features["positions"].shape == (4, 32)
    trainer = Trainer(task, str(tmp_path / "documents"), print_fn=_quiet)
    assert trainer.train() == "completed"
    assert np.isfinite(trainer.history[-1]["loss"])
    assert np.isfinite(trainer.evaluate(num_steps=2)["perplexity"])
    with pytest.raises(ConfigError, match="document_mask"):
        load_experiment("configs/tiny_bert.yaml", "data.document_mask=true")


@pytest.mark.parametrize("path", ["fused_xla", "distributed"])
def test_chunked_vocabulary_loss_equals_the_whole_logits(tmp_path, path):
    """`model.loss_chunk_size` (48 does not divide the 4 x 32 positions), label smoothing:
    the same losses and weights after 2 steps as from the whole logits."""
    results = []
    for chunk in (0, 48):
        config = _config(f"trainer.train_steps=2,data.global_batch_size=4,{STEP_PATHS[path]},"
                         f"model.loss_chunk_size={chunk},trainer.label_smoothing=0.1")
        trainer = Trainer(get_task(config), str(tmp_path / f"chunk{chunk}"), print_fn=_quiet)
        assert trainer.train_step.chunked_loss == bool(chunk)
        assert trainer.train() == "completed"
        results.append((_weights(trainer), [h["loss"] for h in trainer.history]))
    assert results[0][1]
    np.testing.assert_allclose(results[1][0], results[0][0], atol=1e-6)
    np.testing.assert_allclose(results[1][1], results[0][1], rtol=1e-5)


def test_loss_chunk_size_needs_a_vocabulary_head():
    config = load_experiment("configs/finetune_reviews.yaml", "model.loss_chunk_size=64")
    with pytest.raises(ConfigError, match="model.loss_chunk_size=64"):
        get_task(config).build_model()


def test_evaluation_traces_its_step_once_whatever_the_batch_size(tmp_path):
    """The held-out split's last batch is usually shorter: the same traced step serves it (a
    retrace cost a binary a second of its start), and the sums are the eager model's."""
    config = _config("data.global_batch_size=4")
    task = get_task(config)
    first, second = list(task.dataset(task.make_tokenizer(), training=False, split="eval").take(2))
    short = tf.nest.map_structure(lambda t: t[:2], second)

    def batches(context):
        del context
        return tf.data.Dataset.from_tensors(first).concatenate(tf.data.Dataset.from_tensors(short))

    trainer = Trainer(task, str(tmp_path / "eval"), eval_dataset_fn=batches, print_fn=_quiet,
                      for_training=False)
    results = trainer.evaluate(num_steps=2)
    assert trainer._eval_step.experimental_get_tracing_count() == 1
    model = trainer.model
    totals = sum(np.asarray(task.eval_sums(model, labels, model(features, training=False),
                                           weights), np.float64)
                 for features, labels, weights in (first, short))
    np.testing.assert_allclose(results["loss"], task.eval_report(model, totals)["loss"],
                               rtol=1e-6)
