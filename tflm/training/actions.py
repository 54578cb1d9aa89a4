"""What the training loop does between compiled calls: log, checkpoint, evaluate, guard
against a non-finite loss, and save on preemption.

Each periodic action is an orbit action (`orbit.Action`: a callable taking the output of a
loop call, here `{"step", "loss", "grad_norm"}`), made periodic by
`orbit.actions.ConditionalAction`, so the trainer's driver reads as orbit's Controller does:
run `train_loop(n)`, then each action in turn. The NaN guard and the preemption handler are
not periodic: the first inspects every step's loss of a call before the actions run (it may
rewind the run), the second turns SIGTERM into a request the driver honours after them.
"""

import signal
import sys
import time

import numpy as np
import tensorflow as tf


def every(interval, last_step=None):
    """The condition "the step is a multiple of `interval` (or is `last_step`)"."""
    def condition(output):
        step = output["step"]
        return bool(interval) and step % interval == 0 or step == last_step

    return condition


def periodic(interval, action, last_step=None):
    """`action` every `interval` steps (and at `last_step`), as an orbit action."""
    # Here, not at the top: orbit pulls in tf_keras (0.4 s), which only training needs, not
    # tflm-eval or tflm-generate (whose modules import the trainer's).
    from orbit.actions import ConditionalAction

    return ConditionalAction(every(interval, last_step), action)


class SummaryWriter:
    """TensorBoard scalars of the chief under `model_dir/<name>` (train, eval)."""

    def __init__(self, run_dir, is_chief):
        self.run_dir = run_dir
        self.is_chief = is_chief
        self._writers = {}

    def write(self, name, step, record):
        if not self.is_chief:
            return
        if name not in self._writers:
            self._writers[name] = tf.summary.create_file_writer(self.run_dir.summary_dir(name))
        with self._writers[name].as_default(step=step):
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    tf.summary.scalar(key, value)
        self._writers[name].flush()


class ProgressLogger:
    """The progress line (loss, learning rate, gradient norm, tokens/s, MFU or TFLOP/s),
    its record in `history`, and its TensorBoard scalars."""

    def __init__(self, optimizer, loss_scale, train_steps, tokens_per_step, flops_per_token,
                 peak_flops, writer, print_fn, start_step):
        self.optimizer = optimizer
        self.loss_scale = loss_scale
        self.train_steps = train_steps
        self.tokens_per_step = tokens_per_step
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        self.writer = writer
        self.print_fn = print_fn
        self.history = []
        self.restart(start_step)

    def restart(self, step):
        """Measures tokens/s from `step` on (a run starting, or resuming)."""
        self._start = self._last_step = step
        self._last_time = time.perf_counter()

    def __call__(self, output):
        step, loss, grad_norm = output["step"], output["loss"], output["grad_norm"]
        now = time.perf_counter()
        tokens_per_second = (step - self._last_step) * self.tokens_per_step / (now - self._last_time)
        first = self._last_step == self._start
        self._last_step, self._last_time = step, now
        lr = float(self.optimizer.learning_rate.numpy())
        record = {"step": step, "loss": float(loss), "learning_rate": lr,
                  "grad_norm": float(grad_norm), "tokens_per_second": tokens_per_second}
        line = (f"step {step}/{self.train_steps}  loss {loss:.4f}  lr {lr:.3g}  "
                f"grad_norm {grad_norm:.3f}  tokens/s {tokens_per_second:,.0f}")
        achieved = tokens_per_second * self.flops_per_token
        record["tflops"] = achieved / 1e12
        if self.peak_flops:
            record["mfu"] = achieved / self.peak_flops
            line += f"  MFU {100 * record['mfu']:.1f}%"
        else:
            line += f"  TFLOP/s {achieved / 1e12:.3f}"
        if self.loss_scale.enabled:
            record["loss_scale"] = float(self.loss_scale.scale.numpy())
        if first:
            line += "  (includes compilation)"
        if sys.stdout.isatty():
            line = f"[{'=' * int(20 * step / self.train_steps):<20}] " + line
        self.history.append(record)
        self.print_fn(line)
        self.writer.write("train", step, record)


class NaNGuard:
    """A non-finite loss stops the run with a message naming the step, or, with
    `trainer.recover_on_nan`, restores the last checkpoint, replays up to the bad step and
    skips its batch (at most `trainer.max_nan_recoveries` times).

    The weights are never updated with a non-finite step (the step itself checks), so the
    state before the bad step is the checkpoint's plus the replayed steps.
    """

    def __init__(self, trainer_config, checkpoints, train_step, print_fn, error_class):
        self.config = trainer_config
        self.checkpoints = checkpoints
        self.train_step = train_step
        self.print_fn = print_fn
        self.error_class = error_class
        self.recoveries = 0

    def __call__(self, first_step, losses):
        """Checks the losses of steps `first_step + 1, ...`; returns True if it rewound."""
        bad = np.flatnonzero(~np.isfinite(losses))
        if not bad.size:
            return False
        bad_step, value = first_step + int(bad[0]) + 1, losses[bad[0]]
        self.recoveries += 1
        config = self.config
        latest = self.checkpoints.latest()
        if not config.recover_on_nan or latest is None or \
                self.recoveries > config.max_nan_recoveries:
            reason = ("trainer.recover_on_nan is off" if not config.recover_on_nan else
                      "no checkpoint to go back to" if latest is None else
                      f"{self.recoveries - 1} recoveries already (trainer.max_nan_recoveries)")
            raise self.error_class(
                f"loss is {value} at step {bad_step}; stopping ({reason}). The weights were not "
                f"updated with it; the last checkpoint is {latest}. Lower trainer.learning_rate, "
                "check the data, or set trainer.recover_on_nan=true to skip the bad batch."
            )
        self.checkpoints.restore(latest)
        step = self.train_step.step
        good = int(step.numpy())
        self.print_fn(f"tflm-train: loss is {value} at step {bad_step}: restored {latest} "
                      f"(step {good}), replaying to step {bad_step - 1} and skipping its batch")
        if bad_step - 1 > good:
            self.train_step.train_loop(tf.constant(bad_step - 1 - good, tf.int32))
        self.train_step.skip_batch()
        step.assign_add(1)
        return True


class PreemptionHandler:
    """Turns SIGTERM (Kubernetes, Slurm) or SIGINT into a stop request; the driver then
    agrees with the other workers to stop, saves a checkpoint and exits with
    `PREEMPTED_EXIT_CODE`. A context manager that installs the handlers (in the main
    thread) and restores the previous ones on exit."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = False
        self.signal_name = "SIGTERM"
        self._previous = {}

    def _request_stop(self, signum, frame):
        del frame
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def __enter__(self):
        for signum in self.SIGNALS:
            try:
                self._previous[signum] = signal.signal(signum, self._request_stop)
            except ValueError:  # not the main thread: no handler
                pass
        return self

    def __exit__(self, *exc):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}
        return False
