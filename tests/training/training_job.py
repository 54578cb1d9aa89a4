"""A training job for the multi-process tests: one worker of a run, or a whole run.

    python tests/training/training_job.py MODEL_DIR TRAIN_STEPS [DELAY_SECONDS [UNTIL_STEP]]

With TFLM_TEST_LOGICAL_CPUS=2 the CPU is split into two logical devices and
the run uses MirroredStrategy over both (two replicas in one process).
TFLM_TEST_OVERRIDES adds `--params_override`-style settings (e.g. trainer.gradient_checkpointing=true).

The input is sharded by global batch (`data.sharding=global_batch`): every
worker reads the same global batches and keeps its rows, so a run on W workers
sees exactly the data of a one-worker run with the same global batch, and can
resume on another number of workers. Under TF_CONFIG it trains with
MultiWorkerMirroredStrategy. At the end each worker saves its weights as
MODEL_DIR/weights-worker-<i>.npy and exits 0, or 143 if it was preempted.
DELAY_SECONDS slows each batch down, so a test can signal the run in the
middle; UNTIL_STEP stops it there (checkpointed).

TFLM_TEST_DIE="<worker>,<when>,<step>" kills worker <worker> with SIGKILL inside
the checkpoint window of step <step>, <when> being `before_position` (once the
chief's model files of the step are written, before its own input position),
`during_model` (the chief, half-way through its model files) or
`during_position` (half-way through its own input position).
"""

import os
import signal
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tflm.experiment import load_experiment  # noqa: E402
from tflm.tasks import get_task  # noqa: E402
from tflm.training.trainer import PREEMPTED_EXIT_CODE, Trainer  # noqa: E402

# The smallest model: what the tests compare is where runs stop, resume and end, not what
# the model learns (about a quarter less work per process, and they start dozens).
OVERRIDES = ("data.sequence_length=32,data.global_batch_size=8,data.shuffle_buffer_size=50,"
             "data.sharding=global_batch,trainer.log_every=10,trainer.checkpoint_every=10,"
             "trainer.steps_per_loop=5,trainer.warmup_steps=2,model.num_layers=1,"
             "model.num_heads=2,model.hidden_dim=32,model.intermediate_dim=64")


def _die_half_written(prefix):
    """Leaves `prefix` as a kill during its write would: a truncated data file, no index."""
    for path in tf.io.gfile.glob(prefix + ".data-*"):
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    os.remove(prefix + ".index")
    os.kill(os.getpid(), signal.SIGKILL)


def _install_fault(model_dir, worker_index):
    """Wraps `tf.train.Checkpoint.write` to die as TFLM_TEST_DIE says."""
    spec = os.environ.get("TFLM_TEST_DIE")
    if not spec:
        return
    worker, when, step = spec.split(",")
    if int(worker) != worker_index:
        return
    model_prefix = os.path.join(model_dir, "checkpoints", f"ckpt-{step}")
    position_prefix = os.path.join(model_dir, "data", f"worker-{worker}", f"ckpt-{step}")
    write = tf.train.Checkpoint.write

    def faulty_write(self, file_prefix, options=None):
        if when == "before_position" and file_prefix == position_prefix:
            deadline = time.monotonic() + 60
            while not os.path.exists(model_prefix + ".index") and time.monotonic() < deadline:
                time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGKILL)
        result = write(self, file_prefix, options)
        if (when, file_prefix) in (("during_model", model_prefix),
                                   ("during_position", position_prefix)):
            _die_half_written(file_prefix)
        return result

    tf.train.Checkpoint.write = faulty_write


def main():
    model_dir, train_steps = sys.argv[1], int(sys.argv[2])
    delay = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    until_step = int(sys.argv[4]) if len(sys.argv) > 4 else None
    strategy = "multi_worker" if os.environ.get("TF_CONFIG") else "one_device"
    logical_cpus = int(os.environ.get("TFLM_TEST_LOGICAL_CPUS", "1"))
    if logical_cpus > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * logical_cpus)
        strategy = "mirrored"
    extra = os.environ.get("TFLM_TEST_OVERRIDES")
    config = load_experiment(
        "configs/tiny_gpt.yaml",
        f"{OVERRIDES},trainer.train_steps={train_steps},runtime.distribution_strategy={strategy}"
        + (f",{extra}" if extra else ""),
    )
    task = get_task(config)

    def dataset_fn(context):
        def slow(*batch):
            tf.py_function(lambda: time.sleep(delay), [], [])
            return batch

        dataset = task.dataset(input_context=context)
        if not delay:
            return dataset
        # The sleep is stateless in effect: let the data position checkpoint skip it.
        options = tf.data.Options()
        options.experimental_external_state_policy = (
            tf.data.experimental.ExternalStatePolicy.IGNORE)
        return dataset.map(slow).with_options(options)

    trainer = Trainer(task, model_dir, dataset_fn=dataset_fn,
                      print_fn=lambda line: print(line, flush=True))
    _install_fault(model_dir, trainer.worker.worker_index)
    print(f"job: gradient_checkpointing={trainer.model.backbone.gradient_checkpointing}",
          flush=True)
    status = trainer.train(until_step=until_step)
    weights = np.concatenate([np.ravel(v.numpy()) for v in trainer.model.trainable_variables])
    np.save(os.path.join(model_dir, f"weights-worker-{trainer.worker.worker_index}.npy"), weights)
    print(f"job: {status} at step {int(trainer.step.numpy())}", flush=True)
    # No interpreter shutdown: the delay's py_function, still prefetching in tf.data's
    # threads, can deadlock it.
    os._exit(PREEMPTED_EXIT_CODE if status == "preempted" else 0)


if __name__ == "__main__":
    main()
