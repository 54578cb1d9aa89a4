"""Trainer: the distributed training loop behind `tflm-train`.

Keras 3 `model.fit` does not run under MultiWorkerMirroredStrategy, so the
trainer drives the same model objects with its own loop, readable top to
bottom:

    for each call of `train_loop` (steps_per_loop steps, one tf.function):
        for each step:
            micro-batches <- this worker's tf.data iterator
            per replica (strategy.run):
                denominator <- all-reduce of the batch weights (the global token count)
                for each micro-batch: gradients += d(loss_sum / denominator)   [XLA]
                gradients <- all-reduce(gradients)       # the global batch's gradient
                unscale (float16), check finite, clip by global norm
            if finite: optimizer.apply(gradients)       # once, in cross-replica context
        host: log, checkpoint, evaluate, NaN guard, preemption

On one device (OneDeviceStrategy) the per-replica part and the update are
one function per step: with XLA (`trainer.jit_compile`, on by default except
for mixed_bfloat16 on CPUs) one XLA computation, the update selected by
`finite`, so no per-variable ops run outside XLA (on a small model a quarter
of the step); without XLA the update sits behind a conditional.

Everything that depends on the task (`tflm.tasks`) comes from the task
object: its model (from `model.init_checkpoint` on a fresh run, with the
parts `model.finetune` names frozen), its input pipeline, its loss and its
evaluation report. The trainer knows no task by name.

The loss is divided by the weight of the whole global batch (all replicas,
all micro-batches), so N accumulated micro-batches give the same update as
one batch N times larger, and R replicas the same as one.

Why not orbit: its Controller saves only on its own schedule and has no
preemption hook or per-worker data position; the loop here is short and keeps
those in plain view.
"""

import json
import signal
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from tflm.data.stats import InputStats
from tflm.errors import TflmError
from tflm.run_dir import RunDir
from tflm.training.checkpoints import CheckpointError, TrainingCheckpoints
from tflm.training.flops import peak_flops_per_device, training_flops_per_token
from tflm.training.optimizer import make_trainer_optimizer
from tflm.training.precision import DynamicLossScale
from tflm.training.strategy import make_strategy, step_jit_compile, worker_info

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: the orchestrator sees a kill and restarts the job


class TrainingError(TflmError, RuntimeError):
    """Training cannot go on (non-finite loss); the message says where and what to do."""


class Trainer:
    """Trains a task's experiment in `model_dir`, resuming from its latest checkpoint.

    Args:
        task: a `tflm.tasks.Task` (`get_task(config)`); `task.config` is the experiment.
        model_dir: checkpoints, data positions, TensorBoard logs and results go here
            (`tflm.run_dir`).
        strategy: a `tf.distribute.Strategy`; default from `runtime.distribution_strategy`.
        dataset_fn: `input_context -> tf.data.Dataset` of this worker's share of
            each global batch; default the task's `dataset(...)`.
        eval_dataset_fn: the same for evaluation batches.
        print_fn: where progress lines go.
        for_training: False to only evaluate (no training input pipeline is built).

    Example:
    >>> config = tflm.experiment.load_experiment("configs/tiny_gpt.yaml")
    >>> trainer = Trainer(tflm.tasks.get_task(config), "runs/tiny_gpt")
    >>> trainer.train()
    >>> trainer.evaluate()   # {"loss": ..., "perplexity": ..., "accuracy": ...}
    """

    def __init__(self, task, model_dir, strategy=None, dataset_fn=None, eval_dataset_fn=None,
                 print_fn=print, for_training=True):
        config = task.config
        self.task = task
        self.config = config
        self.model_dir = model_dir
        self.run_dir = RunDir(model_dir)
        self.print_fn = print_fn
        self.strategy = strategy or make_strategy(config.runtime)
        self.worker = worker_info(self.strategy)
        trainer = config.trainer
        keras.utils.set_random_seed(config.runtime.seed)
        self.tokenizer = task.make_tokenizer()
        # A fresh run starts from model.init_checkpoint; a resumed one from its own checkpoint.
        source = None
        if for_training and self.run_dir.latest_checkpoint() is None:
            source = task.load_init_checkpoint()

        with self.strategy.scope():
            self.model = task.build_model(dtype=config.runtime.mixed_precision, source=source,
                                          print_fn=print_fn)
            self.optimizer = make_trainer_optimizer(trainer, self.model)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step",
                                    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            self.loss_scale = DynamicLossScale(
                config.runtime.initial_loss_scale, config.runtime.loss_scale_growth_interval,
                enabled=config.runtime.mixed_precision == "mixed_float16",
            )

        self.stats = InputStats()
        if dataset_fn is None:
            def dataset_fn(context):
                return task.dataset(self.tokenizer, input_context=context, stats=self.stats,
                                    split="train")
        self._eval_dataset_fn = eval_dataset_fn
        # Evaluation alone needs no training data (nor its position in checkpoints).
        self.dataset = dataset_fn(self.worker.input_context()) if for_training else None
        self.iterator = iter(self.dataset) if for_training else None
        self.checkpoints = TrainingCheckpoints(
            self.run_dir, self.worker,
            dict(model=self.model, optimizer=self.optimizer, step=self.step,
                 loss_scale=self.loss_scale),
            self.iterator, self.step, keep=trainer.keep_checkpoints,
        )

        self._variables = self.model.trainable_variables
        self.jit_compile = step_jit_compile(trainer.jit_compile, config.runtime.mixed_precision,
                                            self.strategy)
        self._forward_backward = tf.function(self._forward_backward_fn,
                                             jit_compile=self.jit_compile)
        # On one device the whole step (forward, backward, clipping, update) is one function
        # (one XLA computation with jit_compile): no cross-replica update.
        self._fused = isinstance(self.strategy, tf.distribute.OneDeviceStrategy)
        self._fused_step = tf.function(self._fused_step_fn, jit_compile=self.jit_compile)
        self._train_loop = tf.function(self._train_loop_fn)
        self._eval_step = tf.function(self._eval_step_fn)
        self.tokens_per_step = (config.data.global_batch_size * config.data.sequence_length
                                * trainer.gradient_accumulation_steps)
        self.flops_per_token = training_flops_per_token(self.model.backbone,
                                                        config.data.sequence_length)
        self.peak_flops = peak_flops_per_device(config.runtime.peak_tflops)
        if self.peak_flops:
            self.peak_flops *= self.strategy.num_replicas_in_sync
        self._stop_requested = False
        self._writer = None
        self.history = []

    # -- The compiled step. ---------------------------------------------------------------
    def _forward_backward_fn(self, features, labels, weights, denominator):
        """One micro-batch on one replica: loss sums and gradients of its share of the mean.

        A loss of several terms (masked LM + next sentence) gives one sum per term, each
        divided by its own weight over the global batch (`denominator`, a vector).
        """
        with tf.GradientTape() as tape:
            logits = self.model(features, training=True)
            loss_sum, _ = self.task.loss_sums(self.model, labels, logits, weights)
            loss_sum = tf.reshape(loss_sum, [-1])
            scaled = tf.reduce_sum(loss_sum / denominator) * self.loss_scale()
        grads = tape.gradient(scaled, self._variables)
        # Dense zeros for variables the loss does not reach (e.g. a pooler in MLM).
        grads = [tf.zeros_like(v) if g is None else tf.convert_to_tensor(g)
                 for g, v in zip(grads, self._variables)]
        return grads, loss_sum

    def _replica_step(self, micro_batches):
        context = tf.distribute.get_replica_context()
        local_weight = tf.add_n([_weight_sums(w) for _, _, w in micro_batches])
        denominator = tf.maximum(context.all_reduce(tf.distribute.ReduceOp.SUM, local_weight), 1.0)
        grads, loss_sum = None, 0.0
        for features, labels, weights in micro_batches:
            micro_grads, micro_loss = self._forward_backward(features, labels, weights, denominator)
            grads = micro_grads if grads is None else [a + b for a, b in zip(grads, micro_grads)]
            loss_sum += micro_loss
        # The global gradient, identical on every replica: clipping sees the true norm.
        grads = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        loss = tf.reduce_sum(context.all_reduce(tf.distribute.ReduceOp.SUM, loss_sum) / denominator)
        if self.loss_scale.enabled:
            grads = [g / self.loss_scale() for g in grads]
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads])
        norm = tf.linalg.global_norm(grads)
        clipnorm = self.config.trainer.clipnorm
        if clipnorm:
            grads, _ = tf.clip_by_global_norm(grads, clipnorm, use_norm=norm)
        return grads, loss, norm, finite

    def _fused_step_fn(self, micro_batches):
        grads, loss, norm, finite = self._replica_step(micro_batches)
        # A non-finite step (float16 overflow, or a NaN loss) never touches the weights. In XLA
        # a select costs nothing; outside it a conditional skips three passes over the weights.
        ok = finite & tf.math.is_finite(loss)
        if self.jit_compile:
            self.optimizer.apply_where(grads, ok)
        else:
            self.optimizer.apply_if(grads, ok)
        self.loss_scale.update(finite)
        self.step.assign_add(1)
        return loss, norm

    def _next_batch(self):
        """This worker's next batch, split between its local replicas."""
        return self._split_for_replicas(next(self.iterator))

    def _split_for_replicas(self, batch):
        """A worker's batch as one equal slice per local replica (unchanged for one replica)."""
        replicas = self.worker.num_local_replicas
        if replicas == 1:
            return batch

        def replica_value(context):
            index = context.replica_id_in_sync_group % replicas
            return tf.nest.map_structure(lambda t: tf.split(t, replicas)[index], batch)

        return self.strategy.experimental_distribute_values_from_function(replica_value)

    def _local(self, value):
        return self.strategy.experimental_local_results(value)[0]

    def _train_step(self):
        """One optimizer step (all micro-batches); returns the loss and the gradient norm."""
        micro = [self._next_batch() for _ in range(self.config.trainer.gradient_accumulation_steps)]
        if self._fused:
            return self.strategy.run(self._fused_step, args=(micro,))
        grads, loss, norm, finite = self.strategy.run(self._replica_step, args=(micro,))
        finite, loss = self._local(finite), self._local(loss)
        # Cross-replica context: one update with the summed, clipped gradients. A non-finite
        # step (float16 overflow, or a NaN loss) never touches the weights.
        self.optimizer.apply_if(grads, finite & tf.math.is_finite(loss), self.strategy)
        self.loss_scale.update(finite)
        self.step.assign_add(1)
        return loss, self._local(norm)

    def _train_loop_fn(self, num_steps):
        losses = tf.TensorArray(tf.float32, size=num_steps)
        norms = tf.TensorArray(tf.float32, size=num_steps)
        for i in tf.range(num_steps):
            loss, norm = self._train_step()
            losses = losses.write(i, loss)
            norms = norms.write(i, norm)
        return losses.stack(), norms.stack()

    # -- The host loop. -------------------------------------------------------------------
    def train(self, until_step=None):
        """Trains up to `trainer.train_steps`; returns "completed", "stopped" or "preempted".

        `until_step` stops earlier (saving a checkpoint) so a run can be trained
        in pieces; the learning-rate schedule still spans `trainer.train_steps`.
        """
        trainer = self.config.trainer
        last_step = min(trainer.train_steps, until_step or trainer.train_steps)
        restored = self.checkpoints.restore()
        start = int(self.step.numpy())
        if restored:
            self.print_fn(f"tflm-train: resumed from {restored} at step {start}")
        elif trainer.recover_on_nan:
            self.checkpoints.save()  # a good state to fall back to from the first step
        previous_handler = self._install_sigterm_handler()
        recoveries, status = 0, "completed"
        last_log_time, last_log_step = time.perf_counter(), start
        try:
            while int(self.step.numpy()) < last_step:
                step = int(self.step.numpy())
                count = min(self._steps_until_boundary(step), last_step - step)
                losses, norms = self._train_loop(tf.constant(count, tf.int32))
                losses = losses.numpy()
                bad = np.flatnonzero(~np.isfinite(losses))
                if bad.size:
                    bad_step = step + int(bad[0]) + 1
                    recoveries += 1
                    self._recover_from_nan(bad_step, losses[bad[0]], recoveries)
                    continue
                step += count
                if step % trainer.log_every == 0 or step == trainer.train_steps:
                    now = time.perf_counter()
                    self._log(step, losses[-1], norms.numpy()[-1],
                              (step - last_log_step) * self.tokens_per_step / (now - last_log_time),
                              first=last_log_step == start)
                    last_log_time, last_log_step = now, step
                if step % trainer.checkpoint_every == 0 or step == last_step:
                    self.checkpoints.save()
                if trainer.eval_every and step % trainer.eval_every == 0 and self._eval_dataset_ready():
                    self.evaluate()
                if self._stop_requested:
                    path = self.checkpoints.save()
                    self.print_fn(f"tflm-train: SIGTERM: saved {path} at step {step}; exiting")
                    status = "preempted"
                    break
        finally:
            if previous_handler is not None:
                signal.signal(signal.SIGTERM, previous_handler)
        if status == "completed" and int(self.step.numpy()) < trainer.train_steps:
            status = "stopped"
        if status == "completed" and self.worker.is_chief:
            self.run_dir.save_model(self.model)
        return status

    def _steps_until_boundary(self, step):
        """Steps in the next call: up to steps_per_loop, stopping at log/checkpoint/eval/end."""
        trainer = self.config.trainer
        count = min(trainer.steps_per_loop, trainer.train_steps - step)
        for every in (trainer.log_every, trainer.checkpoint_every, trainer.eval_every):
            if every:
                count = min(count, every - step % every)
        return max(count, 1)

    def _recover_from_nan(self, bad_step, value, recoveries):
        trainer = self.config.trainer
        latest = self.checkpoints.latest()
        if not trainer.recover_on_nan or latest is None or recoveries > trainer.max_nan_recoveries:
            reason = ("trainer.recover_on_nan is off" if not trainer.recover_on_nan else
                      "no checkpoint to go back to" if latest is None else
                      f"{recoveries - 1} recoveries already (trainer.max_nan_recoveries)")
            raise TrainingError(
                f"loss is {value} at step {bad_step}; stopping ({reason}). The weights were not "
                f"updated with it; the last checkpoint is {latest}. Lower trainer.learning_rate, "
                "check the data, or set trainer.recover_on_nan=true to skip the bad batch."
            )
        self.checkpoints.restore(latest)
        good = int(self.step.numpy())
        self.print_fn(f"tflm-train: loss is {value} at step {bad_step}: restored {latest} "
                      f"(step {good}), replaying to step {bad_step - 1} and skipping its batch")
        if bad_step - 1 > good:
            self._train_loop(tf.constant(bad_step - 1 - good, tf.int32))
        for _ in range(trainer.gradient_accumulation_steps):
            next(self.iterator)
        self.step.assign_add(1)

    def _install_sigterm_handler(self):
        def request_stop(signum, frame):
            del signum, frame
            self._stop_requested = True

        try:
            return signal.signal(signal.SIGTERM, request_stop)
        except ValueError:  # not the main thread: no handler
            return None

    def _log(self, step, loss, grad_norm, tokens_per_second, first):
        lr = float(self.optimizer.learning_rate.numpy())
        record = {"step": step, "loss": float(loss), "learning_rate": lr,
                  "grad_norm": float(grad_norm), "tokens_per_second": tokens_per_second}
        line = (f"step {step}/{self.config.trainer.train_steps}  loss {loss:.4f}  lr {lr:.3g}  "
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
            done = step / self.config.trainer.train_steps
            line = f"[{'=' * int(20 * done):<20}] " + line
        self.history.append(record)
        self.print_fn(line)
        self._write_scalars("train", step, record)

    def _write_scalars(self, name, step, record):
        if not self.worker.is_chief:
            return
        if self._writer is None:
            self._writer = {}
        if name not in self._writer:
            self._writer[name] = tf.summary.create_file_writer(self.run_dir.summary_dir(name))
        with self._writer[name].as_default(step=step):
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    tf.summary.scalar(key, value)
        self._writer[name].flush()

    # -- Evaluation. ----------------------------------------------------------------------
    def _eval_dataset_ready(self):
        data = self.config.data
        return bool(self._eval_dataset_fn or data.eval_input_path or data.eval_every_nth_document)

    def _eval_step_fn(self, batch):
        def replica(features, labels, weights):
            outputs = self.model(features, training=False)
            sums = self.task.eval_sums(self.model, labels, outputs, weights)
            context = tf.distribute.get_replica_context()
            return context.all_reduce(tf.distribute.ReduceOp.SUM, sums)

        return self._local(self.strategy.run(replica, args=batch))

    def evaluate(self, num_steps=None):
        """Metrics of the task on the held-out split (`Task.eval_report`: perplexity for
        the language models, accuracy and F1 for classifiers, ...). Results go to the log,
        to TensorBoard under `model_dir/eval` (the scalars), and to
        `model_dir/eval_results.json`.
        """
        num_steps = num_steps or self.config.trainer.eval_steps
        if self.worker.num_workers > 1 and not num_steps:
            raise TrainingError("Under multi-worker every worker must run the same number of "
                                "evaluation batches: set trainer.eval_steps.")
        if self._eval_dataset_fn is not None:
            dataset = self._eval_dataset_fn(self.worker.input_context())
        else:
            dataset = self.task.dataset(self.tokenizer, input_context=self.worker.input_context(),
                                        training=self.worker.num_workers > 1, split="eval")
        if num_steps:
            dataset = dataset.take(num_steps)
        totals = None
        for batch in dataset:
            sums = self._eval_step(self._split_for_replicas(batch)).numpy().astype(np.float64)
            totals = sums if totals is None else totals + sums
        if totals is None or totals[1] == 0:
            raise TrainingError("The evaluation split is empty.")
        results = {"step": int(self.step.numpy()), **self.task.eval_report(self.model, totals)}
        line = {k: v for k, v in results.items() if k not in ("per_class", "confusion_matrix")}
        self.print_fn("tflm-eval: " + json.dumps(line))
        self._write_scalars("eval", results["step"], results)
        if self.worker.is_chief:
            self.run_dir.write_eval_results(results)
            self.task.after_evaluation(self.model, results, self.run_dir)
        return results


def _weight_sums(weights):
    """The sum of each sample-weight tensor of a batch (one per loss term), as a vector."""
    return tf.stack([tf.reduce_sum(tf.cast(w, tf.float32)) for w in tf.nest.flatten(weights)])


__all__ = ["CheckpointError", "PREEMPTED_EXIT_CODE", "Trainer", "TrainingError"]
