"""Keras callbacks for `model.fit`: a progress line with loss, tokens/s and model TFLOP/s,
and a BackupAndRestore that works across workers."""

import json
import os
import time

import keras
import tensorflow as tf
from absl import logging


class ThroughputLogger(keras.callbacks.Callback):
    """Logs `step, loss, tokens/s, TFLOP/s (and MFU)` every `log_every` steps.

    Times are measured between logged steps, so the first interval includes
    compilation and is reported separately from the steady state.

    Args:
        tokens_per_step: tokens in one global batch.
        log_every: steps between lines.
        flops_per_token: model training FLOPs per token (see `tflm.training.flops`).
        peak_flops: the hardware's peak FLOP/s; if given, MFU is logged too.
        print_fn: where lines go (default: absl logging.info).
    """

    def __init__(self, tokens_per_step, log_every=10, flops_per_token=None, peak_flops=None,
                 print_fn=None):
        super().__init__()
        self.tokens_per_step = tokens_per_step
        self.log_every = max(1, int(log_every))
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        self.print_fn = print_fn or logging.info
        self.history = []

    def on_train_begin(self, logs=None):
        self._step = 0
        self._last_time = time.perf_counter()
        self._last_step = 0
        self._last_running_loss = 0.0

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        if self._step % self.log_every:
            return
        now = time.perf_counter()
        steps = self._step - self._last_step
        tokens_per_second = steps * self.tokens_per_step / (now - self._last_time)
        record = {"step": self._step, "tokens_per_second": tokens_per_second}
        for key, value in (logs or {}).items():
            record[key] = float(value)
        if "loss" in record:
            # Keras logs the running mean over the epoch; report the mean of this
            # interval: (mean_k * k - mean_j * j) / (k - j), all batches the same size.
            running = record["loss"]
            record["loss"] = (running * self._step - self._last_running_loss * self._last_step) / steps
            self._last_running_loss = running
        line = f"step {self._step}"
        if "loss" in record:
            line += f"  loss {record['loss']:.4f}"
        line += f"  tokens/s {tokens_per_second:,.0f}"
        if self.flops_per_token:
            achieved = tokens_per_second * self.flops_per_token
            record["tflops"] = achieved / 1e12
            line += f"  TFLOP/s {achieved / 1e12:.3f}"
            if self.peak_flops:
                record["mfu"] = achieved / self.peak_flops
                line += f"  MFU {100 * record['mfu']:.1f}%"
        if self._last_step == 0:
            line += "  (includes compilation)"
        self.history.append(record)
        self.print_fn(line)
        self._last_time, self._last_step = now, self._step


class BackupAndRestore(keras.callbacks.BackupAndRestore):
    """`keras.callbacks.BackupAndRestore` that works across workers and survives any kill.

    Keras 3's callback writes the same file from every worker under
    MultiWorkerMirroredStrategy (an HDF5 lock error, or a torn file), and its weights and
    its epoch are two writes that a kill can separate. Here only the chief writes
    (`strategy.extended.should_checkpoint`); each save goes to a new weights file, and
    `training_metadata.json`, renamed into place last, names it: the commit. Every worker
    restores from the file it names. Like Keras's, it resumes at the epoch (or batch), not at
    the input position: the dataset starts again (`tflm-train` resumes exactly).

    Example:
    >>> model.fit(dataset, epochs=4, steps_per_epoch=100,
    ...           callbacks=[BackupAndRestore("runs/fit/backup")])
    """

    def __init__(self, backup_dir, save_freq="epoch", delete_checkpoint=True):
        super().__init__(backup_dir, save_freq=save_freq, double_checkpoint=False,
                         delete_checkpoint=delete_checkpoint)

    def _writes(self):
        return self.model.distribute_strategy.extended.should_checkpoint

    def on_train_begin(self, logs=None):
        if tf.io.gfile.exists(self._training_metadata_path):
            with tf.io.gfile.GFile(self._training_metadata_path) as f:
                weights = json.loads(f.read()).get("weights")
            if weights:
                self._weights_path = os.path.join(self.backup_dir, weights)
        self._load_model()

    def _save_model(self):
        if not self._writes():
            return
        tf.io.gfile.makedirs(self.backup_dir)
        previous = self._weights_path
        name = f"weights-{self._current_epoch}-{self._last_batch_seen}.weights.h5"
        self._weights_path = os.path.join(self.backup_dir, name)
        self.model.save_weights(self._weights_path, overwrite=True)
        record = {"epoch": self._current_epoch, "batch": self._last_batch_seen, "weights": name}
        with tf.io.gfile.GFile(self._training_metadata_path + ".tmp", "w") as f:
            f.write(json.dumps(record))
        tf.io.gfile.rename(self._training_metadata_path + ".tmp",
                           self._training_metadata_path, overwrite=True)
        if previous != self._weights_path and tf.io.gfile.exists(previous):
            tf.io.gfile.remove(previous)

    def on_train_end(self, logs=None):
        if self._writes():
            super().on_train_end(logs)
