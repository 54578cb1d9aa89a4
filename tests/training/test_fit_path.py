"""The same models train with `model.fit` (notebooks): default and Mirrored strategies."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tflm.experiment import load_experiment
from tflm.tasks import make_dataset
from tflm.tasks import build_task
from tflm.training.optimizer import make_optimizer

SMALL = "data.sequence_length=32,data.global_batch_size=4,trainer.train_steps=6"


@pytest.mark.parametrize("config_file", ["configs/tiny_gpt.yaml", "configs/tiny_bert.yaml"])
@pytest.mark.parametrize("strategy", ["default", "mirrored"])
def test_fit_trains_under_a_strategy(config_file, strategy):
    config = load_experiment(config_file, SMALL)
    scope = (tf.distribute.MirroredStrategy(["/cpu:0"]) if strategy == "mirrored"
             else tf.distribute.get_strategy())
    with scope.scope():
        model = build_task(config.model)
        model.compile(optimizer=make_optimizer(config.trainer, model))
    dataset = make_dataset(config)
    history = model.fit(dataset, steps_per_epoch=3, epochs=2, verbose=0)
    losses = history.history["loss"]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert losses[1] < losses[0]


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise RuntimeError("interrupted")


def test_backup_and_restore_resumes_fit(tmp_path):
    config = load_experiment("configs/tiny_gpt.yaml", SMALL)
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    model = build_task(config.model)
    with pytest.raises(RuntimeError, match="interrupted"):
        model.fit(make_dataset(config), steps_per_epoch=2, epochs=4, verbose=0,
                  callbacks=[backup, _Interrupt()])
    resumed = build_task(config.model)
    history = resumed.fit(make_dataset(config), steps_per_epoch=2, epochs=4, verbose=0,
                          callbacks=[backup])
    # Epochs 0 and 1 were done before the interruption: only 2 and 3 run again.
    assert history.epoch == [2, 3]
    assert int(resumed.optimizer.iterations.numpy()) == 8
