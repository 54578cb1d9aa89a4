"""`model.fit` of a tflm task on one worker, or as one worker of a local cluster.

    python tests/training/fit_job.py OUTPUT_PREFIX CONFIG_FILE [BACKUP_DIR [interrupt]]

Under TF_CONFIG it fits under MultiWorkerMirroredStrategy; the global batch is the same
either way (Keras splits it across the workers). The rows of each batch weigh unequally
(the first half 1, the second 0.25), so the replicas' token weights differ and only the
mean over the whole global batch matches one worker. Saves the trained weights as
OUTPUT_PREFIX-<worker>.npy and prints the logged losses. With BACKUP_DIR it fits 4 epochs
of 2 steps with `tflm.training.callbacks.BackupAndRestore`, and with `interrupt` every
worker dies (status 3) at the end of epoch 1, as a killed job would.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tflm.experiment import load_experiment  # noqa: E402
from tflm.tasks import build_task, make_dataset  # noqa: E402
from tflm.training.callbacks import BackupAndRestore  # noqa: E402
from tflm.training.strategy import WorkerAgreement  # noqa: E402
from tflm.training.optimizer import make_optimizer  # noqa: E402

OVERRIDES = ("data.sequence_length=32,data.global_batch_size=8,trainer.train_steps=6,"
             "model.num_layers=1,model.dropout=0.0,model.attention_dropout=0.0")


class _DieAfterEpoch1(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            # After the chief's backup of the epoch (the callback before this one).
            WorkerAgreement(self.model.distribute_strategy).min(1.0)
            os._exit(3)


def main():
    prefix, config_file = sys.argv[1], sys.argv[2]
    backup_dir = sys.argv[3] if len(sys.argv) > 3 else None
    interrupt = sys.argv[4:] == ["interrupt"]
    multi_worker = bool(os.environ.get("TF_CONFIG"))
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"] if multi_worker else 0
    config = load_experiment(config_file, OVERRIDES)
    strategy = (tf.distribute.MultiWorkerMirroredStrategy() if multi_worker
                else tf.distribute.get_strategy())
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = build_task(config.model)
        model.compile(optimizer=make_optimizer(config.trainer, model))
    row_weight = tf.constant([1.0] * 4 + [0.25] * 4)

    def unequal(features, labels, weights):
        shape = [-1] + [1] * (len(weights.shape) - 1)
        return features, labels, weights * tf.reshape(row_weight, shape)

    options = tf.data.Options()
    # Keras splits each global batch into the workers' rows (not whole batches per worker).
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dataset = make_dataset(config).map(unequal).with_options(options)
    if backup_dir:
        callbacks = [BackupAndRestore(backup_dir)] + ([_DieAfterEpoch1()] if interrupt else [])
        history = model.fit(dataset, steps_per_epoch=2, epochs=4, verbose=0,
                            callbacks=callbacks)
        print("EPOCHS", json.dumps(history.epoch), int(model.optimizer.iterations.numpy()),
              flush=True)
    else:
        history = model.fit(dataset, steps_per_epoch=3, epochs=2, verbose=0)
    print("LOSSES", json.dumps(history.history["loss"]), flush=True)
    weights = np.concatenate([np.ravel(v.numpy()) for v in model.trainable_variables])
    np.save(f"{prefix}-{index}.npy", weights)
    os._exit(0)  # no interpreter shutdown under the collectives' threads


if __name__ == "__main__":
    main()
