"""Checkpoints that resume exactly: model, optimizer, step, and each worker's data position.

Two kinds of files under `model_dir`:

- `checkpoints/ckpt-<step>`: model, optimizer, step counter, loss scale,
  written by `tf.train.CheckpointManager`. Under multi-worker every worker
  saves (variables may need all workers), but only the chief into
  `model_dir`; the others write to a temporary folder that is deleted
  right after, as MultiWorkerMirroredStrategy requires.
- `data/worker-<i>/ckpt-<step>`: worker `i`'s input iterator (its shard,
  shuffle buffer and position), so the restarted run reads the exact next
  batch. Written before the model checkpoint of the same step, so the
  latest model checkpoint always has its data position.

A checkpoint that cannot be read, or does not fit the model, is a
`CheckpointError` naming the path; nothing is silently skipped.
"""

import os
import shutil

import tensorflow as tf

from tflm.errors import TflmError


class CheckpointError(TflmError, RuntimeError):
    """A checkpoint is corrupt or does not match the model; the message names it."""


class TrainingCheckpoints:
    """Saves and restores the training state of one worker.

    Args:
        run_dir: the run's folder (a `tflm.run_dir.RunDir`).
        worker: a `WorkerInfo`.
        state: trackables to checkpoint (model, optimizer, step, ...).
        iterator: this worker's tf.data iterator, or None.
        step: the step counter variable (names the checkpoints).
        keep: how many checkpoints to keep.
    """

    def __init__(self, run_dir, worker, state, iterator, step, keep=3):
        self.run_dir = run_dir
        self.worker = worker
        self.step = step
        self.directory = run_dir.checkpoint_dir
        write_dir = self.directory
        if not worker.is_chief:
            write_dir = run_dir.worker_tmp_dir(worker.worker_index)
        self._write_dir = write_dir
        self.checkpoint = tf.train.Checkpoint(**state)
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, write_dir, max_to_keep=keep, checkpoint_name="ckpt"
        )
        self.data_checkpoint = None
        if iterator is not None:
            self.data_directory = run_dir.worker_data_dir(worker.worker_index)
            self.data_checkpoint = tf.train.Checkpoint(iterator=iterator)
            self.data_manager = tf.train.CheckpointManager(
                self.data_checkpoint, self.data_directory, max_to_keep=keep + 1,
                checkpoint_name="ckpt",
            )

    def save(self):
        """Saves data position, then model state, at the current step; returns the path."""
        number = int(self.step.numpy())
        if self.data_checkpoint is not None:
            try:
                self.data_manager.save(checkpoint_number=number)
            except tf.errors.FailedPreconditionError as e:
                raise CheckpointError(
                    f"{self.data_directory}: cannot save the input position: the dataset has a "
                    f"stateful op ({_first_line(e)}). Make the pipeline stateless, or set "
                    "tf.data.Options().experimental_external_state_policy to IGNORE if its "
                    "state does not matter."
                ) from None
        path = self.manager.save(checkpoint_number=number)
        if not self.worker.is_chief:
            shutil.rmtree(self._write_dir, ignore_errors=True)
            try:
                os.rmdir(os.path.dirname(self._write_dir))  # the shared tmp/, once empty
            except OSError:
                pass
            path = os.path.join(self.directory, os.path.basename(path))
        return path

    def latest(self):
        """Path of the chief's latest checkpoint, or None."""
        return self.run_dir.latest_checkpoint()

    def restore(self, path=None):
        """Restores model state (and data position) from `path` or the latest; returns the path.

        Raises:
            CheckpointError: the checkpoint is unreadable or does not fit the model.
        """
        path = path or self.latest()
        if path is None:
            return None
        try:
            status = self.checkpoint.restore(path)
            status.assert_existing_objects_matched()
        except Exception as e:  # any failure means this checkpoint cannot be used
            raise CheckpointError(
                f"{path}: cannot restore this checkpoint into the configured model and optimizer "
                f"(corrupt, or written by another architecture or config): {_first_line(e)}"
            ) from None
        if self.data_checkpoint is not None:
            number = int(path.rsplit("-", 1)[1])
            data_path = os.path.join(self.data_directory, f"ckpt-{number}")
            if tf.io.gfile.exists(data_path + ".index"):
                try:
                    self.data_checkpoint.restore(data_path).assert_consumed()
                except (AssertionError, ValueError, tf.errors.OpError) as e:
                    raise CheckpointError(
                        f"{data_path}: cannot restore the input position (the data config "
                        f"changed?): {_first_line(e)}"
                    ) from None
            else:
                raise CheckpointError(
                    f"{data_path}: no input position for worker {self.worker.worker_index} at "
                    f"step {number} (was the number of workers changed?). Remove {self.directory} "
                    "to start over, or restore the data folder."
                )
        return path


def _first_line(error):
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
