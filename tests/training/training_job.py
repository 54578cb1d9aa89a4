"""A training job for the multi-process tests: one worker of a run, or a whole run.

    python tests/training/training_job.py MODEL_DIR TRAIN_STEPS [DELAY_SECONDS]

With TFLM_TEST_LOGICAL_CPUS=2 the CPU is split into two logical devices and
the run uses MirroredStrategy over both (two replicas in one process).

Every worker builds the same global batches (one pipeline, no sharding) and
keeps its slice, so a run on W workers sees exactly the data of a one-worker
run with the same global batch. Under TF_CONFIG it trains with
MultiWorkerMirroredStrategy. At the end each worker saves its weights as
MODEL_DIR/weights-worker-<i>.npy. DELAY_SECONDS slows each batch down, so a
test can kill the run in the middle.
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tflm.experiment import load_experiment  # noqa: E402
from tflm.tasks import make_dataset  # noqa: E402
from tflm.training.trainer import Trainer  # noqa: E402
from tflm.tasks import get_task

OVERRIDES = ("data.sequence_length=32,data.global_batch_size=8,data.shuffle_buffer_size=50,"
             "trainer.log_every=10,trainer.checkpoint_every=10,trainer.steps_per_loop=5,"
             "trainer.warmup_steps=2")


def main():
    model_dir, train_steps = sys.argv[1], int(sys.argv[2])
    delay = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    strategy = "multi_worker" if os.environ.get("TF_CONFIG") else "one_device"
    logical_cpus = int(os.environ.get("TFLM_TEST_LOGICAL_CPUS", "1"))
    if logical_cpus > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * logical_cpus)
        strategy = "mirrored"
    config = load_experiment(
        "configs/tiny_gpt.yaml",
        f"{OVERRIDES},trainer.train_steps={train_steps},runtime.distribution_strategy={strategy}",
    )

    def dataset_fn(context):
        workers, index = context.num_input_pipelines, context.input_pipeline_id
        share = config.data.global_batch_size // workers

        def my_slice(features, labels, weights):
            part = slice(index * share, (index + 1) * share)
            return {k: v[part] for k, v in features.items()}, labels[part], weights[part]

        def slow(*batch):
            tf.py_function(lambda: time.sleep(delay), [], [])
            return batch

        dataset = make_dataset(config).map(my_slice)
        if not delay:
            return dataset
        # The sleep is stateless in effect: let the data position checkpoint skip it.
        options = tf.data.Options()
        options.experimental_external_state_policy = (
            tf.data.experimental.ExternalStatePolicy.IGNORE)
        return dataset.map(slow).with_options(options)

    trainer = Trainer(get_task(config), model_dir, dataset_fn=dataset_fn,
                      print_fn=lambda line: print(line, flush=True))
    status = trainer.train()
    weights = np.concatenate([np.ravel(v.numpy()) for v in trainer.model.trainable_variables])
    np.save(os.path.join(model_dir, f"weights-worker-{trainer.worker.worker_index}.npy"), weights)
    print(f"job: {status} at step {int(trainer.step.numpy())}", flush=True)


if __name__ == "__main__":
    main()
