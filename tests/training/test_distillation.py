"""Knowledge distillation (`trainer.distill_from`): the step's loss is the NumPy mix of the
task's cross-entropy and the tempered KL to the teacher; the teacher never changes; a
run on two workers ends with the weights of one worker (stopped half-way and resumed);
a teacher of another tokenizer, or a task without a distribution, is a clear error.

Run as a script, this file is one worker of the two-worker test:
    python tests/training/test_distillation.py MODEL_DIR TEACHER_DIR
"""

import pathlib
import shutil
import sys

import numpy as np
import pytest
import tensorflow as tf

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO_ROOT / "tools"), str(REPO_ROOT / "tests")]
from worker_runs import train_and_save_weights, two_workers_weights  # noqa: E402

from tflm.config import ConfigError  # noqa: E402
from tflm.data.byte_tokenizer import ByteTokenizer  # noqa: E402
from tflm.data.wordpiece import WordPieceTokenizer  # noqa: E402
from tflm.experiment import load_experiment, run_experiment  # noqa: E402
from tflm.tasks import get_task  # noqa: E402
from tflm.tasks.multi_label_classification import sigmoid_distillation_sums  # noqa: E402
from tflm.training.trainer import Trainer  # noqa: E402

QUIET = dict(print_fn=lambda line: None)
TINY_GPT = str(REPO_ROOT / "configs" / "tiny_gpt.yaml")
# Small shapes; the student has one block, the teacher two; a checkpoint only at the end.
SMALL = ("model.num_layers=1,model.num_heads=2,model.hidden_dim=32,model.intermediate_dim=64,"
         "data.sequence_length=16,data.global_batch_size=4,data.shuffle_buffer_size=20,"
         "data.sharding=global_batch,trainer.train_steps=4,trainer.log_every=2,"
         "trainer.steps_per_loop=2,trainer.warmup_steps=0,trainer.checkpoint_every=100,"
         "trainer.jit_compile=false")
STEPS = 4


def _config(extra=""):
    return load_experiment(TINY_GPT, ",".join(filter(None, [SMALL, extra])))


def _student(teacher, extra=""):
    return _config(",".join(filter(None, [
        f"trainer.distill_from={teacher},trainer.distill_weight=0.5,"
        "trainer.distill_temperature=2.0", extra])))


def _weights(trainer):
    return np.concatenate([np.ravel(v.numpy()) for v in trainer.model.trainable_variables])


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("teacher"))
    run_experiment(_config("model.num_layers=2,trainer.train_steps=2"), model_dir, **QUIET)
    return model_dir


def _log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


@pytest.mark.parametrize("weight,temperature", [(1.0, 1.0), (0.25, 3.0)])
def test_loss_is_the_numpy_mix_and_the_teacher_never_changes(tmp_path, teacher, weight,
                                                             temperature):
    config = _student(teacher, f"trainer.distill_weight={weight},"
                               f"trainer.distill_temperature={temperature}")
    batch = next(iter(get_task(config).dataset(split="train")))
    trainer = Trainer(get_task(config), str(tmp_path / "student"), **QUIET,
                      dataset_fn=lambda context: tf.data.Dataset.from_tensors(batch).repeat())
    features, labels, weights = (tf.nest.map_structure(np.asarray, part) for part in batch)
    assert not trainer.teacher.trainable_variables
    teacher_before = [v.numpy().copy() for v in trainer.teacher.weights]
    student_before = _weights(trainer)
    # dropout is 0: the training forward of the step is this inference one.
    logits = trainer.model(features, training=False).numpy().astype(np.float64)
    teacher_logits = trainer.teacher(features, training=False).numpy().astype(np.float64)

    losses, _ = trainer.train_step.train_loop(tf.constant(2, tf.int32))

    log_q = _log_softmax(logits)
    cross_entropy = -np.take_along_axis(log_q, labels[..., None].astype(int), -1)[..., 0]
    log_p, log_q = _log_softmax(teacher_logits / temperature), _log_softmax(logits / temperature)
    kl = (np.exp(log_p) * (log_p - log_q)).sum(-1)
    total = weights.sum()
    expected = ((1 - weight) * (cross_entropy * weights).sum() / total
                + weight * temperature ** 2 * (kl * weights).sum() / total)
    np.testing.assert_allclose(losses.numpy()[0], expected, rtol=1e-5)
    for before, after in zip(teacher_before, trainer.teacher.weights):
        np.testing.assert_array_equal(after.numpy(), before)
    assert not np.allclose(_weights(trainer), student_before)


def test_multi_label_distillation_is_the_numpy_bernoulli_kl():
    rng = np.random.default_rng(0)
    teacher_logits, logits = rng.normal(size=(2, 3, 4)) * 3
    weights = np.array([1.0, 0.0, 2.0])
    soft_sum, weight_sum = sigmoid_distillation_sums(teacher_logits, logits, weights, 2.0)
    p, q = (1 / (1 + np.exp(-x / 2.0)) for x in (teacher_logits, logits))
    kl = p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))
    np.testing.assert_allclose(soft_sum, 4.0 * (kl.mean(-1) * weights).sum(), rtol=1e-5)
    assert weight_sum == 3.0


def _wordpiece(*words):
    return WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])


def test_a_teacher_of_another_tokenizer_or_task_is_a_clear_error(tmp_path, teacher):
    task = get_task(_student(teacher))
    with pytest.raises(ConfigError, match="must share the tokenizer.*wordpiece"):
        task.load_teacher(_wordpiece("a", "b"))
    # The same kind with another vocabulary: a teacher folder holding a WordPiece tokenizer.
    other = tmp_path / "teacher"
    shutil.copytree(teacher, other)
    shutil.rmtree(other / "tokenizer")
    _wordpiece("a", "b").save(str(other / "tokenizer"))
    task = get_task(_student(other))
    with pytest.raises(ConfigError, match=r"trainer\.distill_from=.*must share the tokenizer"):
        task.load_teacher(_wordpiece("a", "c"))
    assert not task.load_teacher(_wordpiece("a", "b")).trainable
    assert not get_task(_student(teacher)).load_teacher(ByteTokenizer()).trainable
    regression = get_task(_student(teacher, "model.task=regression,data.input_format=jsonl,data.input_path=unread.jsonl"))
    with pytest.raises(ConfigError, match=r"trainer\.distill_from=.*regression"):
        regression.load_teacher(ByteTokenizer())
    classifier = get_task(_student(teacher, "model.task=classification,data.input_format=jsonl,data.input_path=unread.jsonl"))
    with pytest.raises(ConfigError, match=r"trainer\.distill_from=.*CausalLM.*SequenceClassifier"):
        classifier.load_teacher(ByteTokenizer())


def _worker(model_dir, teacher_dir):
    config = _student(teacher_dir, "runtime.distribution_strategy=multi_worker")
    trainer = Trainer(get_task(config), model_dir, print_fn=lambda line: print(line, flush=True))
    train_and_save_weights(trainer, model_dir, _weights)


def test_two_workers_end_with_the_weights_of_one_stopped_and_resumed(tmp_path, teacher):
    """One worker trains 2 + 2 steps (the second Trainer restores a checkpoint made with a
    teacher); two workers train 4 straight on the same global batches."""
    one = str(tmp_path / "one")
    Trainer(get_task(_student(teacher)), one, **QUIET).train(until_step=STEPS // 2)
    resumed = Trainer(get_task(_student(teacher)), one, **QUIET)
    assert resumed.train() == "completed" and int(resumed.step.numpy()) == STEPS
    first = two_workers_weights(__file__, [teacher], tmp_path, STEPS)
    np.testing.assert_allclose(first, _weights(resumed), atol=1e-5)


if __name__ == "__main__":
    _worker(*sys.argv[1:3])
