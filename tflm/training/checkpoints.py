"""Checkpoints that resume exactly, whatever is killed: model, optimizer, step, and each
worker's data position, committed together.

The files of step N (`tflm.run_dir`):

- `data/worker-<i>/ckpt-N`: worker i's input iterator (its shard, shuffle buffer and
  position), so the restarted run reads the exact next batch;
- `checkpoints/ckpt-N`: model, optimizer, step counter, loss scale. Under
  multi-worker every worker writes it (variables may need all workers), but only the
  chief into `model_dir`; the others into a temporary folder deleted right after;
- `checkpoints/ckpt-N.commit.json`: the commit, which the chief writes last, after a
  barrier that every worker reaches only once its own files are written. It records the
  number of workers and the data sharding, for a resume on another number of workers.

A kill anywhere in that window leaves step N uncommitted, and a restart resumes from the
newest committed step. Restore (`select_checkpoint`) also reads back every tensor of the
candidate (TensorFlow checks each one's CRC32C), so a missing `.index`, a truncated or a
corrupted file makes it fall back to the next older committed step, with a line naming
the file; every worker reaches the same choice (`WorkerAgreement`). A model_dir whose
checkpoints are all unusable stops with a `CheckpointError` naming them, never a silent
start from step 0 (`trainer.start_over_if_unrestorable=true` moves them aside instead);
only a run killed before its first commit starts again from step 0, saying so.
"""

import dataclasses
import os
import re
import shutil
import time

import tensorflow as tf

from tflm.errors import TflmError


class CheckpointError(TflmError, RuntimeError):
    """A checkpoint is corrupt or does not match the model; the message names it."""


@dataclasses.dataclass
class Resume:
    """The committed checkpoint a run resumes from, and where each worker's input position
    comes from (None: the input starts from its beginning)."""

    step: int
    path: str
    input_position: str = None


def select_checkpoint(run_dir, worker, agreement, data_sharding="files",
                      on_input_position_mismatch="error", start_over=False, print_fn=print,
                      input_positions=True):
    """The newest committed checkpoint that every worker can read whole, or None (a new run).

    `input_positions=False` (parameter servers, whose workers' iterators cannot be saved):
    the model state only. Newer checkpoints are skipped with a line saying why (not committed, a file missing,
    truncated or corrupt), and their commits are removed so that nothing blocks the next
    restart; the older ones are kept.

    Raises:
        CheckpointError: `model_dir` holds committed checkpoints and none can be read (unless
            `start_over`), or the input positions cannot be continued on this number of
            workers (`on_input_position_mismatch="error"`).
    """
    # Every worker of the run has started (none is saving): the chief clears what a save
    # killed midway left behind, which nothing would ever read or remove otherwise.
    agreement.min(1.0)
    if worker.is_chief:
        for path in run_dir.remove_partial_writes():
            print_fn(f"tflm-train: removed {path}, left by a save that did not finish")
    steps = run_dir.checkpoint_steps()
    skipped, committed = [], False
    for step in steps:
        prefix = run_dir.checkpoint_prefix(step)
        record = run_dir.read_commit(step)
        committed = committed or record is not None
        resume, problem = None, None
        if record is None:
            problem = ("not committed (a worker was stopped before every file of this step "
                       "was written)")
        else:
            resume = Resume(step, prefix, None)
            if input_positions:
                resume = _input_position(run_dir, worker, step, record, data_sharding,
                                         on_input_position_mismatch)
            if worker.is_chief:
                problem = _unreadable(prefix)
            if problem is None and resume.input_position:
                problem = _unreadable(resume.input_position)
        # Every worker goes through the same steps; a step counts if it is whole for all.
        if agreement.min(0.0 if problem else 1.0) == 1.0:
            for newer in skipped:
                if worker.is_chief:
                    run_dir.uncommit(newer)
            if skipped:
                print_fn(f"tflm-train: resuming from {prefix}, the newest whole checkpoint")
            if not input_positions:
                print_fn("tflm-train: parameter servers: the input starts again from its "
                         "beginning (the workers' input positions are not saved)")
            elif resume.input_position is None:
                print_fn(f"tflm-train: {prefix} was written by {record['num_workers']} "
                         f"workers, this run has {worker.num_workers}: the input starts again "
                         "from its beginning (trainer.on_input_position_mismatch=restart)")
            return resume
        problem = problem or "another worker cannot read its input position"
        print_fn(f"tflm-train: warning: skipping checkpoint {prefix}: {problem}")
        skipped.append(step)
    if not steps:
        return None
    names = ", ".join(os.path.basename(run_dir.checkpoint_prefix(s)) for s in steps)
    if not committed:
        # The first save never completed: nothing was trained that a restart could keep.
        print_fn(f"tflm-train: no committed checkpoint in {run_dir.checkpoint_dir} ({names} "
                 "never completed): starting from step 0")
        return None
    if start_over:
        agreement.min(1.0)  # every worker has read the files before the chief moves them
        if worker.is_chief:
            moved = run_dir.move_checkpoints_aside(f"unrestorable-{int(time.time())}")
            print_fn(f"tflm-train: no checkpoint of {run_dir.checkpoint_dir} ({names}) can be "
                     f"restored; moved to {', '.join(moved)}; starting over from step 0 "
                     "(trainer.start_over_if_unrestorable)")
        agreement.min(1.0)
        return None
    raise CheckpointError(
        f"{run_dir.checkpoint_dir}: none of the checkpoints {names} can be restored (see the "
        "warnings above). Restore the files, or set trainer.start_over_if_unrestorable=true "
        "to move them aside and train from step 0."
    )


def _input_position(run_dir, worker, step, record, data_sharding, on_mismatch):
    """Where this worker's input position at `step` comes from, given who wrote it."""
    prefix = run_dir.checkpoint_prefix(step)
    written_by = int(record.get("num_workers", 1))
    if written_by == worker.num_workers:
        return Resume(step, prefix, run_dir.worker_data_prefix(worker.worker_index, step))
    if data_sharding == "global_batch" and record.get("data_sharding") == "global_batch":
        # Every worker read the same global batches: any worker's position is everyone's.
        return Resume(step, prefix, run_dir.worker_data_prefix(0, step))
    if on_mismatch == "restart":
        return Resume(step, prefix, None)
    raise CheckpointError(
        f"{prefix} was written by {written_by} workers with data.sharding="
        f"{record.get('data_sharding', 'files')}; {worker.num_workers} workers cannot continue "
        "their input positions (each read its own share of the files). Resume on "
        f"{written_by} workers, set trainer.on_input_position_mismatch=restart to keep the "
        "model state and start the input again from its beginning, or train with "
        "data.sharding=global_batch, whose runs resume on any number of workers."
    )


def _unreadable(prefix):
    """Why the checkpoint at `prefix` cannot be read whole, or None. Reads every tensor
    back, so TensorFlow checks each one's length and CRC32C."""
    if not tf.io.gfile.exists(prefix + ".index"):
        return f"{prefix}.index is missing"
    try:
        dtypes = tf.train.load_checkpoint(prefix).get_variable_to_dtype_map()
        for name, dtype in dtypes.items():  # one at a time: at most one tensor in memory
            tf.raw_ops.RestoreV2(prefix=prefix, tensor_names=[name], shape_and_slices=[""],
                                 dtypes=[dtype])
    except Exception as e:  # any failure to read means the files are not whole
        return f"{prefix}: cannot be read back ({_first_line(e)})"
    return None


class TrainingCheckpoints:
    """Saves and restores the training state of one worker.

    Args:
        run_dir: the run's folder (a `tflm.run_dir.RunDir`).
        worker: a `WorkerInfo`.
        agreement: a `WorkerAgreement` (the barrier before each commit).
        state: trackables to checkpoint (model, optimizer, step, ...).
        iterator: this worker's tf.data iterator, or None.
        step: the step counter variable (names the checkpoints).
        keep: how many committed checkpoints to keep.
        data_sharding: `data.sharding`, recorded in each commit.
        resume: the `Resume` chosen by `select_checkpoint`, or None.
    """

    def __init__(self, run_dir, worker, agreement, state, iterator, step, keep=3,
                 data_sharding="files", resume=None):
        self.run_dir = run_dir
        self.worker = worker
        self.agreement = agreement
        self.step = step
        self.keep = keep
        self.data_sharding = data_sharding
        self.directory = run_dir.checkpoint_dir
        self.checkpoint = tf.train.Checkpoint(**state)
        self.data_checkpoint = None
        if iterator is not None:
            self.data_checkpoint = tf.train.Checkpoint(iterator=iterator)
        self._resume = resume
        self._committed_step = None

    def save(self):
        """Writes this worker's input position and the model state at the current step,
        waits for every worker, then (chief) commits the step; returns its path."""
        number = int(self.step.numpy())
        prefix = self.run_dir.checkpoint_prefix(number)
        if number == self._committed_step:
            return prefix  # already saved at this step (a periodic save, then SIGTERM)
        if self.worker.is_chief:
            self.run_dir.uncommit(number)  # an older commit of this step must not cover it
        if self.data_checkpoint is not None:
            data_prefix = self.run_dir.worker_data_prefix(self.worker.worker_index, number)
            try:
                self.data_checkpoint.write(data_prefix)
            except tf.errors.FailedPreconditionError as e:
                raise CheckpointError(
                    f"{data_prefix}: cannot save the input position: the dataset has a "
                    f"stateful op ({_first_line(e)}). Make the pipeline stateless, or set "
                    "tf.data.Options().experimental_external_state_policy to IGNORE if its "
                    "state does not matter."
                ) from None
        if self.worker.is_chief:
            self.checkpoint.write(prefix)
        else:
            scratch = self.run_dir.worker_tmp_dir(self.worker.worker_index)
            self.checkpoint.write(os.path.join(scratch, os.path.basename(prefix)))
            shutil.rmtree(scratch, ignore_errors=True)
            try:
                os.rmdir(os.path.dirname(scratch))  # the shared tmp/, once empty
            except OSError:
                pass
        self.agreement.min(1.0)  # every worker's files of this step are written
        if self.worker.is_chief:
            self.run_dir.write_commit(number, {
                "step": number, "num_workers": self.worker.num_workers,
                "data_sharding": self.data_sharding, "time": time.time(),
            })
            self._prune(number)
        self._committed_step = number
        return prefix

    def _prune(self, newest):
        """Keeps the newest `keep` committed steps; removes the files of older steps."""
        steps = self.run_dir.checkpoint_steps(include_input_positions=True)
        kept = [s for s in steps if s <= newest and self.run_dir.read_commit(s) is not None]
        kept = set(kept[:self.keep])
        for step in steps:
            if step < newest and step not in kept:
                self.run_dir.delete_checkpoint(step)

    def latest(self):
        """Path of the newest committed checkpoint, or None."""
        return self.run_dir.latest_checkpoint()

    def restore(self, path=None):
        """Restores model state (and data position) from `path`, else from the checkpoint
        `select_checkpoint` chose (the first time), else the newest committed one; returns
        the path, or None if there is none.

        Raises:
            CheckpointError: the checkpoint is unreadable or does not fit the model.
        """
        resume, self._resume = self._resume, None
        if path is None and resume is None:
            path = self.latest()
            if path is None:
                return None
        if path is not None:
            step = int(path.rsplit("-", 1)[1])
            resume = Resume(step, path, self.run_dir.worker_data_prefix(
                self.worker.worker_index, step))
        try:
            status = self.checkpoint.read(resume.path)
            status.assert_existing_objects_matched()
        except Exception as e:  # any failure means this checkpoint cannot be used
            raise CheckpointError(
                f"{resume.path}: cannot restore this checkpoint into the configured model and "
                f"optimizer (corrupt, or written by another architecture or config): "
                f"{_first_line(e)}"
            ) from None
        if self.data_checkpoint is not None and resume.input_position is not None:
            data_path = resume.input_position
            if not tf.io.gfile.exists(data_path + ".index"):
                raise CheckpointError(
                    f"{data_path}: no input position for worker {self.worker.worker_index} at "
                    f"step {resume.step}.")
            try:
                self.data_checkpoint.read(data_path).assert_consumed()
            except (AssertionError, ValueError, tf.errors.OpError) as e:
                raise CheckpointError(
                    f"{data_path}: cannot restore the input position (the data config "
                    f"changed?): {_first_line(e)}"
                ) from None
        self._committed_step = resume.step
        return resume.path


def _first_line(error):
    """The message of an error, without TensorFlow's op annotations."""
    text = re.sub(r"\{\{[^}]*\}\}\s*|\s*\[Op:\w+\]", "", str(error)).strip()
    return text.splitlines()[0] if text else type(error).__name__
